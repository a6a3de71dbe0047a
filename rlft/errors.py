"""Errors that stop a run, raised in more than one layer and caught by the command line (rlft.cli).

They live here, beneath everything, so that a role or a helper can raise them without importing
the control layer (rlft.control) that runs it.
"""

from __future__ import annotations


class RunError(ValueError):
    """A run cannot start as configured; the message names the key or example and a fix."""


class ResumeError(RuntimeError):
    """A run cannot continue from a checkpoint (incomplete, another recipe or learner layout)."""
