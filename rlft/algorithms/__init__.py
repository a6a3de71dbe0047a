"""Algorithm registry: one file per algorithm, each exporting `SPEC` (rlft.algorithms.base).

Entries are imported on first use, so reading a config imports only the algorithm it names.
A new algorithm registers itself with `ALGORITHMS.register(spec.name, spec)`.
"""

from __future__ import annotations

from rlft.registry import Registry

ALGORITHMS: Registry = Registry("algorithm", {
    "sft": "rlft.algorithms.sft:SPEC",
    "gppo": "rlft.algorithms.gppo:SPEC",
    "ppo": "rlft.algorithms.ppo:SPEC",
    "gppo_episodes": "rlft.algorithms.gppo_episodes:EPISODES_SPEC",
    "ift": "rlft.algorithms.ift:SPEC",
    "dpo": "rlft.algorithms.dpo:SPEC",
    "dpo_offline": "rlft.algorithms.dpo:OFFLINE_SPEC",
    "reward_model": "rlft.algorithms.reward_model:SPEC",
    "distill": "rlft.algorithms.distill:SPEC",
    "tpo": "rlft.algorithms.tpo:SPEC",
    "tpo_offline": "rlft.algorithms.tpo:OFFLINE_SPEC",
    "mdlm": "rlft.algorithms.mdlm:SPEC",
    "drakes": "rlft.algorithms.drakes:SPEC",
})
