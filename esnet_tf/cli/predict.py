"""`esnet predict` (transition: argparse still in esnet_tf.predict)."""
from esnet_tf.predict import configure_parser, run  # noqa: F401
