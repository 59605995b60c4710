#!/usr/bin/env bash
# CI: build the wheel, install it (not editable) into a fresh virtualenv outside the checkout,
# and from an empty directory run what a new user runs: `esnet demo` on a tiny budget,
# `tfds build is_dos --imports esnet_tf.datasets`, and `esnet export` of the demo model.
# Usage: bash scripts/check_wheel.sh [WORKDIR]   (default: a new temporary directory)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="${1:-$(mktemp -d -t esnet-wheel-XXXXXX)}"
mkdir -p "$WORK"
echo "check_wheel: building the wheel"
rm -rf "$WORK/dist"
.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . >/dev/null 2>&1 \
  || .venv/bin/python -m pip wheel -q --no-deps -w "$WORK/dist" .
WHEEL="$(ls "$WORK"/dist/esnet_tf-*.whl)"
echo "check_wheel: $WHEEL ($(du -h "$WHEEL" | cut -f1))"
rm -rf "$WORK/venv" "$WORK/empty"
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q "${WHEEL}[serving,beam]"  # the tfds CLI imports Apache Beam at start
mkdir -p "$WORK/empty"
cd "$WORK/empty"
PY="$WORK/venv/bin/python"
export TF_CPP_MIN_LOG_LEVEL=2
# installed under the package's own namespace only; no generic top-level names
"$PY" - <<'PYEOF'
import importlib.util, pathlib
import esnet_tf, esnet_tf.datasets, esnet_tf.tuning, esnet_tf.saved_models
from esnet_tf import resources
assert "site-packages" in esnet_tf.__file__, esnet_tf.__file__
for name in ("datasets", "tuning", "saved_models", "is_dos"):
    assert importlib.util.find_spec(name) is None, f"{name} installed as a top-level package"
assert (resources.demo_labels()).is_file() and any(resources.demo_dir().glob("calcs/*/is.gpawdos.npz"))
assert resources.search_space_path().is_file() and (resources.saved_models_dir() / "README.md").is_file()
print("check_wheel: package data and namespaces ok")
PYEOF
"$WORK/venv/bin/esnet" --help >/dev/null
"$WORK/venv/bin/esnet" demo --out demo_out --epochs 1 --early-stopping-patience 1
test -f demo_out/run/best.keras && test -f demo_out/saved_models/esnet_demo/1/saved_model.pb
"$WORK/venv/bin/tfds" build is_dos --imports esnet_tf.datasets --config demo --data_dir tfds_data
test -f tfds_data/is_dos/demo/1.1.0/dataset_info.json
"$PY" -c "
import esnet_tf.datasets, tensorflow_datasets as tfds
n = sum(1 for _ in tfds.load('is_dos/demo', split='train', data_dir='tfds_load'))
assert n > 100, n
print(f'check_wheel: tfds.load(is_dos/demo) built on first use: {n} train examples')"
"$WORK/venv/bin/esnet" export --model demo_out/run/best.keras --out served --name esnet_demo --version 1
test -f served/esnet_demo/1/assets.extra/tf_serving_warmup_requests
test -z "$(find "$WORK/venv" -path '*site-packages/esnet_tf/datasets/is_dos/demo/calcs' -newer "$WHEEL" -name '*.tmp')"
cd "$ROOT"
if [ -z "${1:-}" ]; then rm -rf "$WORK"; fi
echo "check_wheel: ok"
