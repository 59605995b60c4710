"""Shared by the benchmark scripts: how a finished result leaves the process."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def emit(result: dict, json_path: str | None, *, printed: dict | None = None) -> int:
    """Add the machine's record (`esnet_tf.machine.machine_record`: CPU model and flags, cores, load) to
    `result`, print `printed` (default: the whole `result`) as JSON and, with `json_path`, write `result`
    there atomically (temporary name, then rename). Returns the exit status: 3 when `result` says it
    must not be ranked (`not_ranked_because`: another busy process during the measurement), after one
    line on stderr saying why; else 0."""
    from esnet_tf.machine import machine_record

    result.setdefault("machine", machine_record())
    text = json.dumps(result, indent=2, default=str)
    if json_path:
        from esnet_tf.atomic import write_text

        write_text(json_path, text)
    print(text if printed is None else json.dumps(printed, indent=1, default=str))
    reason = result.get("not_ranked_because")
    if reason:
        print(f"{Path(sys.argv[0]).name}: not ranked: {reason}; the numbers are recorded with ranked=false"
              f"{' in ' + json_path if json_path else ''}: rerun on a quiet machine (pause other jobs, or "
              "--pause-pgid for one you own)", file=sys.stderr)
        return 3
    return 0
