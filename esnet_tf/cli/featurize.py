"""`esnet featurize` (transition: argparse still in esnet_tf.featurize)."""
from esnet_tf.featurize import configure_parser, run  # noqa: F401
