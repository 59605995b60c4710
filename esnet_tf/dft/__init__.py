"""Open-source DFT engine (GPAW) that computes IS-DOS, energies and relaxations.

Needs the `dft` extra (GPAW with PAW setups). See `esnet dft --help`.
"""
from esnet_tf.dft.settings import DFTSettings
from esnet_tf.dft.tasks import Task, task_hash

__all__ = ["DFTSettings", "Task", "task_hash"]
