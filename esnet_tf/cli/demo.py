"""`esnet demo` (transition: argparse still in esnet_tf.demo)."""
from esnet_tf.demo import configure_parser, run  # noqa: F401
