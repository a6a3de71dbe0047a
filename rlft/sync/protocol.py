"""The weight-sync protocol (DESIGN section 3): publish a version, verify it, probe it.

    learner rank 0 --export_weights(v)--> payload (kind, version, fingerprint)
        --share once (Ray object store; inline: the object itself)--> every generator
        --load_weights(payload)--> fingerprint of what each generator deserialised
    mismatch -> SyncError.  Every `parity_every` versions: a fixed probe sequence is scored by
    learner rank 0 and every generator; max |log-prob difference| > tolerance -> SyncError.

The controller calls `publish()` after each update and nothing else; transports other than the
object store (NCCL, vLLM's weight-transfer API) go behind `RoleGroup.share`.
"""

from __future__ import annotations

import time

import torch

from rlft.ops.logprobs import IGNORE_INDEX


class SyncError(RuntimeError):
    """Generators do not run the weights the learner sent."""


# Default parity tolerance by weights dtype: two engines (different kernels, different reduction
# orders) agree to ~1e-6 in float32 and to a few bf16 ulps of a log-prob (|log p| up to ~20) in 16 bits.
PARITY_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 5e-2, torch.float16: 5e-2}


class WeightSync:
    def __init__(self, learners, generators, sync_cfg, probe: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32):
        self.learners = learners
        self.generators = generators
        self.cfg = sync_cfg
        self.probe = probe
        self.tolerance = sync_cfg.parity_tolerance or PARITY_TOLERANCE[dtype]
        self.version = 0

    def publish(self) -> dict[str, float]:
        """Export the next version, ship it to every generator, verify; probe parity when due."""
        t0 = time.time()
        payload = self.learners.call_one(0, "export_weights", self.version + 1)
        loaded = self.generators.call("load_weights", self.generators.share(payload))
        for index, seen in enumerate(loaded):
            if seen != payload.fingerprint:
                raise SyncError(
                    f"generator {index} loaded {payload.kind} weights version {payload.version} with fingerprint "
                    f"{seen}, but the learner published {payload.fingerprint}: the weights were corrupted in transit"
                )
        self.version = payload.version
        metrics = {"sync/version": float(self.version), "sync/bytes": float(payload.num_bytes),
                   "sync/seconds": time.time() - t0}
        if self.cfg.parity_every and self.version % self.cfg.parity_every == 0:
            t1 = time.time()
            metrics["sync/parity_max_abs_diff"] = self.check_parity()
            metrics["sync/parity_seconds"] = time.time() - t1
        return metrics

    def check_parity(self) -> float:
        """Max |learner - generator| log-prob over the probe; above tolerance is an error."""
        learner = self.learners.call_one(0, "token_logprobs", self.probe)[0]
        mask = self.probe["labels"][0, 1:] != IGNORE_INDEX
        worst = 0.0
        for generator in self.generators.call("prompt_logprobs", [self.probe["input_ids"][0].tolist()]):
            diff = (torch.tensor(generator[0]) - learner)[mask]
            worst = max(worst, float(diff.abs().max()) if diff.numel() else 0.0)
        if worst > self.tolerance:
            raise SyncError(
                f"logprob parity probe: generators differ from the learner by {worst:.3g} at version "
                f"{self.version} (tolerance {self.tolerance:g}; set sync.parity_tolerance to change it)"
            )
        return worst
