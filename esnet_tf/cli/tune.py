"""`esnet tune` (transition: argparse still in esnet_tf.tuning.search)."""
from esnet_tf.tuning.search import configure_parser, run  # noqa: F401
