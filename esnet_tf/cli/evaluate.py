"""`esnet evaluate` (transition: argparse still in esnet_tf.evaluate)."""
from esnet_tf.evaluate import configure_parser, run  # noqa: F401
