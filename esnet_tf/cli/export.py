"""`esnet export` (transition: argparse still in esnet_tf.export)."""
from esnet_tf.export import configure_parser, run  # noqa: F401
