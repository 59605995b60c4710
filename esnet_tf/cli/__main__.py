"""`python -m esnet_tf.cli` runs the `esnet` command."""
import sys

from esnet_tf.cli import main

sys.exit(main())
