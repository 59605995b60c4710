"""`esnet predict ... --beam-pipeline-options 'runner=DirectRunner'`: the same prediction as an Apache
Beam pipeline (extra `beam`), for pools beyond one machine; the same CSV as the local path.

The plan and chunks are `esnet_tf.stream`'s. The pipeline:
1. the chunks (segment, item range) are read and featurized on the workers (`stream.read_chunk`),
   one element per row; failures go to a side output;
2. the rows' ids and sources (a few strings per row) are combined into the row order of the local
   path: the duplicate-id rule (`stream.IdGuard`) in item order, then each kept row's rank;
3. rows are grouped into the local path's batches (rank // batch size) and predicted with Beam's
   RunInference and `ESNetModelHandler` (the model loads once per worker process);
4. the batches' rows (text) are written as shards; the driver orders them by rank into
   `<out>.partial/rows.csv` and `stream.finalize` writes `--out` atomically.
The same batches give the same numbers as the local run. Nothing resumes here (the runner retries
failed work); the workers must reach the input files and the model (a shared filesystem).
"""
from __future__ import annotations

import csv
import json
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from esnet_tf.errors import UserError
from esnet_tf.stream import (_BOOK, ROW_KEYS, IdGuard, Partial, Plan, csv_columns, predict_rows, read_chunk,
                             segment_truths)

try:  # the extra `beam`; the module imports without it (the CLI says what to install)
    from apache_beam.ml.inference.base import ModelHandler as _ModelHandler
except ImportError:  # pragma: no cover
    _ModelHandler = object

_FAIL = "failures"


class ESNetModelHandler(_ModelHandler):
    """RunInference's handler: an `ESNetModel` loaded once per worker; each element is one batch
    (batch index, stacked arrays); the inference is its rows.csv rows, or an error line."""

    def __init__(self, model: str, *, trust_model_code: bool, precision: str, batch_size: int, strict: bool,
                 references: str | None, uip: str | None = None) -> None:
        self._model, self._trust, self._precision = model, trust_model_code, precision
        self._batch, self._strict, self._references = batch_size, strict, references
        self._uip = uip  # the --uip CSV, read on each worker with the model's CHGNet references

    def load_model(self):
        from esnet_tf.pretrained import load_model

        model = load_model(self._model, trust_model_code=self._trust)
        model.predictor.precision = self._precision
        model.uip = model.uip_inputs(self._uip)
        return model

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": 1, "max_batch_size": 1}  # an element is already one model batch

    def run_inference(self, batch: Sequence[tuple[int, dict]], model, inference_args=None) -> Iterable[Any]:
        from apache_beam.ml.inference.base import PredictionResult

        for index, arrays in batch:
            try:
                rows = predict_rows(model, arrays, batch_size=self._batch, strict=self._strict,
                                    references=self._references, uip=model.uip)
                yield PredictionResult((index, arrays["item"].tolist()), {"rows": rows})
            except UserError as exc:  # --strict, a missing energy input: one line, raised by the driver
                yield PredictionResult((index, arrays["item"].tolist()), {"error": str(exc)})


def _rows_of_chunk(chunk: tuple[int, int, int], plan: Plan):
    """One chunk -> its rows ((item, sub), arrays of one row) and tagged failures."""
    import apache_beam as beam

    k, a, b = chunk
    try:
        arrays, fails = read_chunk(plan, k, a, b, segment_truths(plan, plan.segments[k]))
    except UserError as exc:  # a labels row that cannot be featurized, a bad features file: the driver raises
        yield beam.pvalue.TaggedOutput(_FAIL, json.dumps([-1, str(exc)]))
        return
    for item, line in fails:
        yield beam.pvalue.TaggedOutput(_FAIL, json.dumps([item, line]))
    seen: dict[int, int] = {}
    for i in range(len(arrays["id"])):
        item = int(arrays["item"][i])
        sub = seen[item] = seen.get(item, -1) + 1
        yield (item, sub), {key: arrays[key][i] for key in ROW_KEYS}


def _ranks(meta: list[tuple]) -> dict:
    """{(item, sub): rank or a failure line} in the local path's row order (IdGuard over DFT rows)."""
    guard = IdGuard()
    out, rank = {}, 0
    for item, sub, rid, source in sorted(meta):
        line = guard.admit(rid, source) if source else None
        if line is None:
            out[(item, sub)] = rank
            rank += 1
        else:
            out[(item, sub)] = line
    return out


def _batch_key(element, ranks: dict, batch_size: int):
    key, arrays = element
    r = ranks[key]
    if isinstance(r, int):
        yield r // batch_size, (r, arrays)


def _stack(element) -> tuple[int, dict]:
    index, ranked = element
    ranked = sorted(ranked, key=lambda x: x[0])
    return index, {k: np.stack([a[k] for _, a in ranked]) for k in ROW_KEYS}


def _to_line(result) -> str:
    (index, _items), inference = result.example, result.inference
    return json.dumps({"batch": index, **inference})


def predict_beam(config, plan: Plan, pipeline_options: str, *, has_std: bool, has_interval: bool,
                 has_domain: bool, model_ref: str) -> tuple[list[str], int]:
    """Run the prediction of `plan` as a Beam pipeline (`pipeline_options` like 'runner=DirectRunner,
    direct_num_workers=2') into `<config.out>.partial/rows.csv`; returns (the failures in item order,
    the rows). `stream.finalize` then writes `config.out`."""
    try:
        import apache_beam as beam
        from apache_beam.ml.inference.base import RunInference
        from apache_beam.options.pipeline_options import PipelineOptions
    except ImportError:
        raise UserError("--beam-pipeline-options needs Apache Beam: pip install 'esnet-tf[beam]'") from None

    flags = [f"--{kv.strip()}" for kv in pipeline_options.split(",") if kv.strip()]
    partial = Partial(config.out)
    work = Path(tempfile.mkdtemp(prefix=f".{Path(config.out).name}.beam-", dir=Path(config.out).parent))
    handler = ESNetModelHandler(model_ref, trust_model_code=config.trust_model_code, precision=config.precision,
                                batch_size=config.batch_size, strict=config.strict, references=config.references,
                                uip=getattr(config, "uip", None))
    try:
        with beam.Pipeline(options=PipelineOptions(flags)) as p:
            read = (p | "chunks" >> beam.Create(list(plan.chunks(config.chunk_size)))
                    | "spread" >> beam.Reshuffle()
                    | "read" >> beam.FlatMap(_rows_of_chunk, plan).with_outputs(_FAIL, main="rows"))
            rows = read.rows
            ranks = (rows | "meta" >> beam.Map(lambda e: (*e[0], str(e[1]["id"]), str(e[1]["source"])))
                     | "all" >> beam.combiners.ToList() | "order" >> beam.Map(_ranks))
            (rows | "key" >> beam.FlatMap(_batch_key, beam.pvalue.AsSingleton(ranks), config.batch_size)
             | "batches" >> beam.GroupByKey() | "stack" >> beam.Map(_stack)
             | "predict" >> RunInference(handler) | "lines" >> beam.Map(_to_line)
             | "write" >> beam.io.WriteToText(str(work / "rows"), file_name_suffix=".jsonl"))
            dups = ranks | "dups" >> beam.FlatMap(
                lambda r: [json.dumps([k[0], v]) for k, v in r.items() if isinstance(v, str)])
            ((read[_FAIL], dups) | "fails" >> beam.Flatten()
             | "write fails" >> beam.io.WriteToText(str(work / "failures"), file_name_suffix=".jsonl"))
        failures = sorted(json.loads(line) for f in sorted(work.glob("failures*.jsonl"))
                          for line in f.read_text().splitlines() if line)
        hard = [line for item, line in failures if item < 0]
        if hard:
            raise UserError(hard[0])
        batches = sorted((json.loads(line) for f in sorted(work.glob("rows*.jsonl"))
                          for line in f.read_text().splitlines() if line), key=lambda d: d["batch"])
        errors = [d["error"] for d in batches if "error" in d]
        if errors:
            raise UserError(errors[0])
        header = list(_BOOK) + csv_columns(has_std, has_interval, has_domain)
        partial.start(header)
        n = 0
        with partial.rows_path.open("a", newline="") as fh:
            w = csv.writer(fh)
            for d in batches:
                w.writerows(d["rows"])
                n += len(d["rows"])
        return [line for _, line in failures], n
    finally:
        shutil.rmtree(work, ignore_errors=True)
