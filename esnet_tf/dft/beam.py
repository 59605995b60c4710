"""The per-structure DFT function inside an Apache Beam pipeline (extra `beam`).

DirectRunner locally; Flink, Spark or Dataflow with the usual pipeline options, unchanged:
each element is one task dict; each worker runs `runner.run_task` (one single-threaded GPAW
process) against a cache directory that all workers can reach (a shared filesystem).
"""
from __future__ import annotations

import json
from pathlib import Path

from esnet_tf.dft.runner import Outcome
from esnet_tf.dft.tasks import Task


def _run(task_dict: dict, cache_dir: str, retry_failed: bool) -> dict:
    from esnet_tf.dft.runner import run_task

    out = run_task(Task.from_dict(task_dict), Path(cache_dir), retry_failed=retry_failed)
    return {"task_id": out.task_id, "key": out.key, "status": out.status, "workdir": str(out.workdir),
            "reason": out.reason}


def run_tasks_beam(tasks: list[Task], cache_dir: Path, pipeline_options: str = "runner=DirectRunner",
                   retry_failed: bool = False) -> list[Outcome]:
    """Run tasks as a Beam pipeline; `pipeline_options` like 'runner=DirectRunner,direct_num_workers=2'."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    cache_dir = Path(cache_dir).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    flags = [f"--{kv.strip()}" for kv in pipeline_options.split(",") if kv.strip()]
    summary = cache_dir / "_beam_outcomes"
    with beam.Pipeline(options=PipelineOptions(flags)) as p:
        (p | beam.Create([t.to_dict() for t in tasks])
           | beam.Reshuffle()
           | beam.Map(_run, str(cache_dir), retry_failed)
           | beam.Map(json.dumps)
           | beam.io.WriteToText(str(summary), file_name_suffix=".jsonl"))
    rows = {}
    for f in sorted(cache_dir.glob("_beam_outcomes*.jsonl")):
        for line in f.read_text().splitlines():
            d = json.loads(line)
            rows[d["task_id"]] = d
        f.unlink()
    outcomes = []
    for t in tasks:
        d = rows[t.id]
        wd = Path(d["workdir"])
        result = json.loads((wd / "result.json").read_text()) if (wd / "result.json").exists() else None
        outcomes.append(Outcome(t.id, d["key"], d["status"], wd, result, d["reason"]))
    return outcomes
