"""`esnet dft` (transition: argparse still in esnet_tf.dft.cli)."""
from esnet_tf.dft.cli import configure_parser, run  # noqa: F401
