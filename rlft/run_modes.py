"""What each run mode (runtime.mode) means for the code that has to care, in one place.

inline: every role is a plain object in the driver's process (breakpoints work, one learner rank).
local: every role is a Ray actor on this machine (its cores and memory are shared out).
cluster: Ray actors across the nodes of a Ray cluster (each node has its own cores and memory).

Callers ask these questions instead of comparing mode names, so a mode's meaning is read here only;
`rlft.runtime` creates the roles for each mode.
"""

from __future__ import annotations

MODES = ("inline", "local", "cluster")


def check(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown runtime mode {mode!r}; expected one of {', '.join(MODES)}")
    return mode


def one_process(mode: str) -> bool:
    """Every role lives in the driver's process (no actors, one learner rank)."""
    return check(mode) == "inline"


def uses_ray(mode: str) -> bool:
    """Roles are Ray actors: resources are reserved, calls can time out, members can die alone."""
    return check(mode) != "inline"


def on_this_machine(mode: str) -> bool:
    """Every role runs on this machine, so they share its cores and memory (and its disk for the run folder)."""
    return check(mode) != "cluster"
