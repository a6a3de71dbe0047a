"""The control layer: the controller (the only code that knows the order of calls) and its parts.

    controller.py   Controller (set-up, the loop, evaluation, outputs) and train()
    startup.py      starting the roles
    validation.py   check_run: the config and the tokenised data, before any role starts
    recovery.py     replacing dead actors inside the loop
    checkpoints.py  checkpoint folders: atomic writes, discovery, retention
    resume.py       exact resume and stopping on SIGTERM
    run_dirs.py     run folders
    evaluate.py     `rlft eval`: scoring a checkpoint in-process

Nothing below this package imports it; the command line (rlft.cli) and scripts do.
"""

from rlft.control.controller import Controller, train

__all__ = ["Controller", "train"]
