"""The weight-sync protocol (docs/design.md#weight-sync): publish a version, verify it, probe it.

    learner rank 0 --export_weights(v)--> payload (kind, version, fingerprint)
        --handed over by reference (Ray object store; inline: the object itself)--> every generator
        --load_weights(payload)--> fingerprint of what each generator deserialised
    mismatch -> SyncError.  Every `parity_every` versions: a fixed probe (the model family's) is scored
    by learner rank 0 and every generator; a statistic of |log-prob difference| over the probe tokens
    (max in float32, mean in 16 bits) > tolerance -> SyncError.

The controller calls `publish()` after each update and nothing else. `sync.transport: collective`
changes only how the weights travel (rlft.sync.transport): the export returns their bucket layout,
learner rank 0 broadcasts them over a process group of its own with every engine worker, and
`last_export` has the fingerprint once they are sent; the checks are the same. The group is formed
before the first publish, and again by `resync` (a replaced generator is a new member).
"""

from __future__ import annotations

import time

import torch



class SyncError(RuntimeError):
    """Generators do not run the weights the learner sent."""


# The parity check by weights dtype. Two float32 engines (different kernels, different reduction
# orders) agree to ~1e-6 on every token, so the max is compared. In 16 bits single log-probs differ
# by rounding that grows with depth (SmolLM2-135M in bfloat16: up to 0.40 between vLLM and the
# learner, 0.29 between HF float32 and HF bfloat16, mean 0.03), so the mean over the probe is
# compared instead: weights that were not applied move every token, rounding averages out.
PARITY_STATISTIC = {torch.float32: "max", torch.bfloat16: "mean", torch.float16: "mean"}
PARITY_TOLERANCE = {("max", 32): 1e-3, ("mean", 32): 1e-4, ("max", 16): 0.5, ("mean", 16): 0.1}


def parity_check(dtype: torch.dtype, statistic: str = "auto", tolerance: float | None = None) -> tuple[str, float]:
    """(statistic, tolerance) of the parity probe: by the weights dtype unless configured."""
    statistic = PARITY_STATISTIC[dtype] if statistic == "auto" else statistic
    bits = 32 if dtype == torch.float32 else 16
    return statistic, tolerance if tolerance is not None else PARITY_TOLERANCE[(statistic, bits)]


class WeightSync:
    def __init__(self, learners, generators, sync_cfg, probe: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                 beside_sampling: bool = False):
        self.learners = learners
        self.generators = generators
        # rollout.in_flight_updates: loads and probes reach the generators while they sample (RoleGroup.call_beside)
        self._to_generators = generators.call_beside if beside_sampling else generators.call
        self.cfg = sync_cfg
        self.probe = probe
        self.statistic, self.tolerance = parity_check(dtype, sync_cfg.parity_statistic, sync_cfg.parity_tolerance)
        self.version = 0
        self.group: dict | None = None  # where the weight group met (sync.transport: collective), once formed

    def publish(self) -> dict[str, float]:
        """Export the next version, ship it to every generator, verify; probe parity when due."""
        version = self.version + 1
        return self._ship(version, everything=False,
                          probe=bool(self.cfg.parity_every) and version % self.cfg.parity_every == 0)

    def resync(self) -> dict[str, float]:
        """Ship the current version again, with every change since the base model, for generators
        that start from the base (a resumed run's, a restarted one); verified and probed."""
        self.group = None  # a generator that starts from the base may be a new process: the group forms again
        if self.version == 0:
            return {}
        return self._ship(self.version, everything=True, probe=bool(self.cfg.parity_every))

    def _ship(self, version: int, everything: bool, probe: bool) -> dict[str, float]:
        t0 = time.time()
        if self.cfg.transport == "collective" and self.group is None:
            from rlft.sync.transport import connect

            self.group = connect(self.learners, self.generators, self.cfg.group_timeout_s)
            t0 = time.time()  # forming the group is set-up, not the sync
        # the generators start loading as soon as the export is done, the payload never passing the driver first
        exported = self.learners.submit_lead("export_weights", version, everything)
        loaded = self._to_generators("load_weights", exported)
        del exported  # nobody holds the payload any more: Ray frees it
        payload = self.learners.call_lead("last_export")  # its record, not its bytes
        for index, seen in enumerate(loaded):
            if seen != payload["fingerprint"]:
                raise SyncError(
                    f"generator {index} loaded {payload['kind']} weights version {payload['version']} with fingerprint "
                    f"{seen}, but the learner published {payload['fingerprint']}: the weights were corrupted in transit"
                )
        self.version = payload["version"]
        metrics = {"sync/version": float(self.version), "sync/bytes": float(payload["num_bytes"]),
                   "sync/seconds": time.time() - t0}
        if probe:
            t1 = time.time()
            metrics.update(self.check_parity())
            metrics["sync/parity_seconds"] = time.time() - t1
        return metrics

    def check_parity(self) -> dict[str, float]:
        """Max and mean |learner - generator| log-prob over the probe's scored positions (the worst
        generator); the configured statistic above tolerance is an error. What the probe is and
        scores belongs to the model family (rlft.families): both sides return one flat vector."""
        learner = self.learners.call_lead("probe_logprobs", self.probe)
        found = {"max": 0.0, "mean": 0.0}
        for generator in self._to_generators("probe_logprobs", self.probe):
            diff = (torch.as_tensor(generator, dtype=torch.float32) - learner.float()).abs()
            if diff.numel():
                found = {"max": max(found["max"], float(diff.max())), "mean": max(found["mean"], float(diff.mean()))}
        if found[self.statistic] > self.tolerance:
            raise SyncError(
                f"logprob parity probe: generators differ from the learner by {found[self.statistic]:.3g} "
                f"({self.statistic} over the probe tokens) at version {self.version} (tolerance {self.tolerance:g}; "
                "set sync.parity_statistic / sync.parity_tolerance to change it)"
            )
        return {"sync/parity_max_abs_diff": found["max"], "sync/parity_mean_abs_diff": found["mean"]}
