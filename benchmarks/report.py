"""Shared by the benchmark scripts: how a finished result leaves the process."""
from __future__ import annotations

import json


def emit(result: dict, json_path: str | None, *, printed: dict | None = None) -> None:
    """Print `printed` (default: the whole `result`) as JSON and, with `json_path`, write `result`
    there atomically (temporary name, then rename)."""
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        from esnet_tf.atomic import write_text

        write_text(json_path, text)
    print(text if printed is None else json.dumps(printed, indent=1, default=str))
