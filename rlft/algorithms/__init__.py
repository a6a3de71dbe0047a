"""Algorithm registry: one file per algorithm, each exporting SPEC."""

from __future__ import annotations

from rlft.algorithms import gppo, sft
from rlft.algorithms.base import AlgorithmSpec

ALGORITHMS: dict[str, AlgorithmSpec] = {spec.name: spec for spec in (sft.SPEC, gppo.SPEC)}
