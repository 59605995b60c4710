"""Errors a user can fix. The `esnet` CLI prints each as one line and exits 2.

Every message names the input (file, flag or id) and, where there is one, the fix.
The library raises these; only the CLI layer (`esnet_tf.cli`) turns them into exit codes.
"""
from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; printed as one line, exit code 2."""


class DOSInputError(UserError, ValueError):
    """A DFT output cannot become IS-DOS. The message names the file and the fix."""

    def __init__(self, path: object, problem: str, fix: str = "") -> None:
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        msg = f"{self.path}: {problem}"
        if fix:
            msg += f" ({fix})"
        super().__init__(msg)


class DatasetError(UserError, ValueError):
    """A dataset problem (labels.csv, splits, TFDS builds); the message names the file and the fix."""
