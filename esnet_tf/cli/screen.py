"""`esnet screen` (transition: argparse still in esnet_tf.screen)."""
from esnet_tf.screen import configure_parser, run  # noqa: F401
