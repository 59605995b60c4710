"""`esnet dataset [NAME]`: build (or reuse) an is_dos TFDS dataset and report its cost."""
from __future__ import annotations

import argparse


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = ("Build the is_dos TFDS dataset (or reuse it when prepared and its labels.csv is unchanged) "
                     "and report examples/s and bytes/example on disk. The same as `tfds build is_dos "
                     "--imports esnet_tf.datasets`, plus the throughput report.")
    p.add_argument("name", nargs="?", default="is_dos/demo", help="is_dos/demo, is_dos/demo_rs, is_dos/demo_augmented, is_dos/pool or is_dos/manual")
    p.add_argument("--data-dir", help="TFDS data_dir (default: TFDS's, ~/tensorflow_datasets)")
    p.add_argument("--manual-dir", help="directory with labels.csv (is_dos/manual)")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when prepared and up to date")
    p.add_argument("--skip-bad-inputs", action="store_true", help="skip files that fail to featurize into rejected.csv")
    p.add_argument("--beam-pipeline-options", help="e.g. runner=DirectRunner (runs the build on Apache Beam)")
    p.add_argument("--warmup", action="store_true",
                   help="build once into a throw-away directory first, so the timing excludes TF/TFDS lazy imports")


def run(args: argparse.Namespace) -> int:
    import tempfile
    import time

    import tensorflow_datasets  # noqa: F401  (import cost kept out of the timing)

    from esnet_tf.dataset import build_dataset, dataset_bytes, register_builder

    register_builder()
    if args.warmup:
        with tempfile.TemporaryDirectory() as tmp:
            build_dataset(args.name, tmp, args.manual_dir, skip_bad_inputs=args.skip_bad_inputs or None,
                          beam_pipeline_options=args.beam_pipeline_options, verbose=False)
    t0 = time.perf_counter()
    builder = build_dataset(args.name, args.data_dir, args.manual_dir, rebuild=args.rebuild,
                            skip_bad_inputs=args.skip_bad_inputs or None,
                            beam_pipeline_options=args.beam_pipeline_options)
    dt = time.perf_counter() - t0
    n = builder.info.splits.total_num_examples
    size = dataset_bytes(builder)
    how = f"built in {dt:.2f} s = {n / dt:.1f} examples/s" if getattr(builder, "built_now", False) else "reused"
    print(f"{builder.data_dir}: {n} examples, {how}; {size} bytes on disk = {size / max(n, 1):.0f} bytes/example")
    return 0
