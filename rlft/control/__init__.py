"""The control layer: the controller (the only code that knows the order of calls) and its parts.

    controller.py   Controller (set-up, the loop, evaluation, outputs) and train()
    startup.py      RoleStarter and STARTERS: the role groups started, learners first
    validation.py   check_run: the config and the tokenised data, before any role starts
    recovery.py     Recovery: dead actors replaced inside the loop; explain_fault
    checkpoints.py  checkpoint folders: atomic writes, discovery, retention
    resume.py       which checkpoint a run continues from, writing and loading step checkpoints, SIGTERM
    run_dirs.py     run folders
    warm_start.py   warm starts and the base model a run starts from
    evaluate.py     `rlft eval`: a checkpoint scored in-process

The controller holds its parts and hands each what it needs as arguments (docs/design.md#the-loop).
Nothing beneath this package imports it; the command line (rlft.cli) and scripts do.
"""

from rlft.control.controller import Controller, train

__all__ = ["Controller", "train"]
