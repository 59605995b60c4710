"""docs/architecture.md's module map names every module of the package, and only modules that exist.

The modules are found on disk with pkgutil (nothing is imported but `esnet_tf` itself), under
`esnet_tf/` and the folders that install into its namespace (`esnet_tf.tuning` from `tuning/`,
`esnet_tf.datasets` from `datasets/`, `esnet_tf.saved_models`), so a new module fails this test
until its line is added to the map.
"""
from __future__ import annotations

import importlib.util
import pkgutil
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
#: packages installed into esnet_tf's namespace from top-level folders (pyproject's package-dir)
MAPPED = ("esnet_tf.tuning", "esnet_tf.datasets", "esnet_tf.saved_models")


def package_modules() -> set[str]:
    """Every module and package under esnet_tf (test modules `*_test` of the TFDS layout excepted)."""
    found = {"esnet_tf"}
    todo = ["esnet_tf", *MAPPED]
    while todo:
        name = todo.pop()
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.submodule_search_locations, f"{name} is not an installed package"
        found.add(name)
        for info in pkgutil.iter_modules(list(spec.submodule_search_locations), name + "."):
            if info.name.endswith("_test"):
                continue
            found.add(info.name)
            if info.ispkg:
                todo.append(info.name)
    return found


def mapped_modules() -> set[str]:
    """The modules of the doc's map: the first cell of each table row under '## Module map'."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split("\n## Module map\n", 1)[1].split("\n## ", 1)[0]
    names = re.findall(r"^\| `(esnet_tf(?:\.\w+)*)` \|", section, flags=re.M)
    assert len(names) == len(set(names)), "a module is listed twice in docs/architecture.md"
    return set(names)


def test_every_module_is_in_the_architecture_map():
    missing = sorted(package_modules() - mapped_modules())
    assert not missing, ("docs/architecture.md's module map lacks (add one line each, "
                         f"'| `module` | what it owns |'): {', '.join(missing)}")


def test_the_architecture_map_names_only_existing_modules():
    stale = sorted(mapped_modules() - package_modules())
    assert not stale, f"docs/architecture.md's module map names modules that do not exist: {', '.join(stale)}"


def test_the_walk_sees_nested_and_mapped_modules():
    """The discovery itself: subpackages and the namespace-mapped folders are walked."""
    found = package_modules()
    assert {"esnet_tf.readers.vasp", "esnet_tf.screening.hull", "esnet_tf.cli.train",
            "esnet_tf.tuning.search", "esnet_tf.datasets.is_dos.is_dos_dataset_builder"} <= found
    assert not any(name.endswith("_test") for name in found)
