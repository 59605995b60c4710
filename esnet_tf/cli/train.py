"""`esnet train` (transition: argparse still in esnet_tf.train)."""
from esnet_tf.train import configure_parser, run  # noqa: F401
