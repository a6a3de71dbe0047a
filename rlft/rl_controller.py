"""The RL loop (DESIGN section 1): generate -> score -> advantages -> train -> publish -> load.

Every rollout carries the policy version that produced it; after each optimizer step the
learner's adapter is published once (Ray object store) and every generator loads it as a new
vLLM LoRA. The fingerprint each generator reports must match the learner's, and every
`sync.parity_every` syncs a fixed probe is scored by the learner and the generators: a
difference above `sync.parity_tolerance` stops the run.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import torch

from rlft import runtime
from rlft.controller import Controller
from rlft.data.collate import encode_prompt, encode_sft, pad_rows
from rlft.data.models import resolve_dtype
from rlft.data.sampler import EpochSampler
from rlft.progress import progress_bar
from rlft.roles.generator import GeneratorActor
from rlft.roles.learner import detect_device
from rlft.roles.reward import RewardActor
from rlft.rollouts import Rollout, filler_row, pad_rollout_rows, rollout_row

log = logging.getLogger(__name__)


class SyncError(RuntimeError):
    """Generators do not run the weights the learner sent."""


def split_evenly(items: list, parts: int) -> list[list]:
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


class RLController(Controller):
    version = 0

    def steps_per_iteration(self) -> int:
        return self.cfg.rollout.mini_batches * self.cfg.rollout.epochs

    def required_cpus(self) -> float:
        cfg = self.cfg
        return (super().required_cpus() + cfg.generator.count * cfg.generator.cpus_per_actor
                + cfg.reward.count * cfg.reward.cpus_per_actor)

    def setup(self) -> None:
        cfg = self.cfg
        if cfg.peft.method == "full":
            raise ValueError("RL weight sync ships adapters: set peft.method to lora or pissa")
        if cfg.train.batch_size % cfg.algorithm.group_size:
            raise ValueError(f"train.batch_size={cfg.train.batch_size} is not a multiple of "
                             f"algorithm.group_size={cfg.algorithm.group_size}")
        if cfg.train.steps % self.steps_per_iteration():
            raise ValueError(f"train.steps={cfg.train.steps} is not a multiple of rollout.mini_batches x "
                             f"rollout.epochs = {self.steps_per_iteration()}")
        algo = cfg.algorithm
        if getattr(algo, "kl_coef", 0.0) > 0 and getattr(algo, "kl_placement", "loss") == "reward":
            raise ValueError("algorithm.kl_placement=reward is not wired into the RL loop yet; use kl_placement=loss")
        if getattr(algo, "kl_coef", 0.0) > 0 and cfg.peft.method == "pissa":
            raise ValueError("a KL reference with PiSSA (initial adapter as reference) is not implemented yet; "
                             "use peft.method=lora or algorithm.kl_coef=0")
        super().setup()
        self.generators = self._start_generators()
        self.rewards = runtime.RoleGroup.create(
            RewardActor, cfg.runtime.mode, [(cfg.task, i, cfg.reward.kind) for i in range(cfg.reward.count)],
            num_cpus=cfg.reward.cpus_per_actor, name="reward",
        )
        self.rewards.call("setup")
        self.probe = self._make_probe()

    def _start_generators(self) -> runtime.RoleGroup:
        cfg, gen = self.cfg, self.cfg.generator
        device = detect_device(cfg.learner.device)
        dtype = str(resolve_dtype(cfg.model.dtype, device)).removeprefix("torch.")
        rank = 2 * cfg.peft.r if cfg.peft.method == "pissa" else cfg.peft.r
        lora_rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank)  # vLLM's allowed sizes
        cores = os.cpu_count() or 1
        args = [
            (gen, str(self.model_path), i, dtype, lora_rank, gen.max_model_len, cfg.run.seed + i,
             str(i % cores) if device == "cpu" and gen.bind_cpus else None)
            for i in range(gen.count)
        ]
        group = runtime.RoleGroup.create(GeneratorActor, cfg.runtime.mode, args, num_cpus=gen.cpus_per_actor,
                                         num_gpus=gen.gpus_per_actor, name="generator")
        group.call("setup")
        return group

    def _make_probe(self) -> dict[str, torch.Tensor]:
        """A fixed sequence (held-out prompt + reference response) scored at every position."""
        ex = (self.eval_examples or self.train_examples)[0]
        row = encode_sft(self.tokenizer, ex.prompt, ex.response or ex.answer or "", self.cfg.train.max_length, self.chat)
        row["labels"] = list(row["input_ids"])
        return pad_rows([row], self.pad_id())

    # ----------------------------------------------------------------- rollouts
    def generate(self, examples, n: int, temperature: float, seed: int,
                 max_new_tokens: int | None = None) -> list[Rollout]:
        """n samples per example, spread over the generator actors."""
        ro = self.cfg.rollout
        max_new_tokens = max_new_tokens or ro.max_new_tokens
        prompts = [encode_prompt(self.tokenizer, ex.prompt, self.chat) for ex in examples]
        chunks = split_evenly(list(range(len(examples))), len(self.generators))
        results = self.generators.call_each("generate", [
            ([prompts[i] for i in chunk], n, max_new_tokens, temperature, ro.top_p, seed * 100_000 + chunk[0] if chunk else 0)
            for chunk in chunks
        ])
        rollouts = []
        for chunk, per_prompt in zip(chunks, results):
            for i, samples in zip(chunk, per_prompt):
                for s in samples:
                    rollouts.append(Rollout(examples[i], i, prompts[i], s["completion_ids"], s["logprobs"],
                                            s["text"], s["version"], s["finish_reason"]))
        return rollouts

    def score(self, rollouts: list[Rollout]) -> None:
        chunks = split_evenly(rollouts, len(self.rewards))
        results = self.rewards.call_each("score", [([r.example for r in c], [r.text for r in c]) for c in chunks])
        for chunk, scored in zip(chunks, results):
            for rollout, s in zip(chunk, scored):
                rollout.reward, rollout.correct, rollout.step_accuracy = s["reward"], s["correct"], s["step_accuracy"]

    def training_rows(self, rollouts: list[Rollout]) -> tuple[list[dict], dict[str, float]]:
        rewards = torch.tensor([r.reward for r in rollouts], dtype=torch.float32)
        seq = self.spec.sequence_advantages(rewards, self.cfg.algorithm)
        rows = [rollout_row(r, float(a), float(p), self.cfg.train.max_length)
                for r, a, p, keep in zip(rollouts, seq["advantages"], seq["positive"], seq["keep"]) if keep]
        kept = len(rows)
        rows += [filler_row(rows[0] if rows else rollout_row(rollouts[0], 0.0, 0.0, self.cfg.train.max_length))
                 for _ in range(len(rollouts) - kept)]
        return rows, {"rollout/kept_fraction": kept / len(rollouts)}

    # ----------------------------------------------------------------- learner and sync
    def optimize(self, rows: list[dict]) -> dict[str, float]:
        """One optimizer step per mini-batch of rows and epoch; metrics summed, grad norm and lr averaged."""
        cfg = self.cfg
        passes = [mb for _ in range(cfg.rollout.epochs) for mb in split_evenly(rows, cfg.rollout.mini_batches)]
        totals: dict[str, float] = {}
        for mb_rows in passes:
            for key, value in self.learner_step(mb_rows, pad_rollout_rows).items():
                totals[key] = totals.get(key, 0.0) + value
        totals["grad_norm"] /= len(passes)
        totals["lr"] /= len(passes)
        return totals

    def publish(self) -> dict[str, float]:
        """Learner rank 0 exports the adapter; one object-store put; every generator loads it."""
        t0 = time.time()
        payload = self.learners.call_one(0, "export_adapter", self.version + 1)
        ref = runtime.put(payload, self.cfg.runtime.mode)
        loaded = self.generators.call("load_adapter", ref)
        for index, fp in enumerate(loaded):
            if fp != payload.fingerprint:
                raise SyncError(
                    f"generator {index} loaded adapter version {payload.version} with fingerprint {fp}, "
                    f"but the learner published {payload.fingerprint}: the weights were corrupted in transit"
                )
        self.version = payload.version
        return {"sync/version": float(self.version), "sync/bytes": float(payload.num_bytes),
                "sync/seconds": time.time() - t0}

    def parity_probe(self) -> float:
        """Max |learner - generator| log-prob over the probe; above tolerance is an error."""
        learner = self.learners.call_one(0, "token_logprobs", self.probe)[0]
        worst = 0.0
        for gen in self.generators.call("prompt_logprobs", [self.probe["input_ids"][0].tolist()]):
            worst = max(worst, float((torch.tensor(gen[0]) - learner).abs().max()))
        if worst > self.cfg.sync.parity_tolerance:
            raise SyncError(
                f"logprob parity probe: generators differ from the learner by {worst:.3g} at version "
                f"{self.version} (tolerance sync.parity_tolerance={self.cfg.sync.parity_tolerance})"
            )
        return worst

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy completions by the generators (current version) on held-out prompts."""
        if not self.eval_examples:
            return {}
        rollouts = self.generate(self.eval_examples, 1, 0.0, seed=0, max_new_tokens=self.cfg.eval.max_new_tokens)
        self.score(rollouts)
        return {"eval/accuracy": sum(r.correct for r in rollouts) / len(rollouts),
                "eval/reward": sum(r.reward for r in rollouts) / len(rollouts),
                "eval/examples": float(len(rollouts))}

    # ----------------------------------------------------------------- the loop
    def loops(self) -> dict:
        return {**super().loops(), "rollouts": self._run_rl}

    def rl_iteration(self, iteration: int, sampler: EpochSampler) -> dict[str, float]:
        cfg, ro = self.cfg, self.cfg.rollout
        group = cfg.algorithm.group_size
        prompts = cfg.train.batch_size * ro.mini_batches // group
        timings: dict[str, float] = {}
        t0 = time.time()
        rollouts = self.generate(sampler.next_batch(self.train_examples, prompts), group, ro.temperature,
                                 seed=cfg.run.seed * 100_003 + iteration)
        timings["perf/time_generate"] = time.time() - t0
        t1 = time.time()
        self.score(rollouts)
        timings["perf/time_reward"] = time.time() - t1
        rows, row_stats = self.training_rows(rollouts)
        t2 = time.time()
        out = self.optimize(rows)
        timings["perf/time_train"] = time.time() - t2
        sync = self.publish()
        timings["perf/time_sync"] = sync["sync/seconds"]
        if cfg.sync.parity_every and self.version % cfg.sync.parity_every == 0:
            sync["sync/parity_max_abs_diff"] = self.parity_probe()
        gen_tokens = sum(len(r.completion_ids) for r in rollouts)
        elapsed = time.time() - t0
        tokens = max(out["tokens"], 1.0)
        return {
            "reward/mean": sum(r.reward for r in rollouts) / len(rollouts),
            f"reward/accuracy_{self.task.name}": sum(r.correct for r in rollouts) / len(rollouts),
            "reward/step_accuracy": sum(r.step_accuracy for r in rollouts) / len(rollouts),
            "rollout/response_length": gen_tokens / len(rollouts),
            "rollout/staleness": float(self.version - 1 - min(r.version for r in rollouts)),
            **row_stats,
            "train/loss": out["loss"] / self.steps_per_iteration(), "train/grad_norm": out["grad_norm"], "train/lr": out["lr"],
            "train/clip_low_frac": out["clip_low_tokens"] / tokens, "train/clip_high_frac": out["clip_high_tokens"] / tokens,
            "train/dual_clip_frac": out["dual_clip_tokens"] / tokens, "train/entropy": out["entropy_sum"] / tokens,
            "train/kl": out["kl_sum"] / tokens,
            **timings, **sync,
            "perf/gen_tokens_per_s": gen_tokens / max(timings["perf/time_generate"], 1e-9),
            "perf/train_tokens_per_s": tokens / max(timings["perf/time_train"], 1e-9),
            "perf/step_seconds": elapsed, "perf/completions_per_s": len(rollouts) / elapsed,
        }

    def _run_rl(self) -> dict[str, Any]:
        cfg = self.cfg
        iterations = cfg.train.steps // self.steps_per_iteration()
        sampler = EpochSampler(len(self.train_examples), cfg.run.seed)
        start = time.time()
        initial = self.evaluate(0)
        self.tracker.log(initial, 0)
        if cfg.sync.parity_every:
            self.tracker.log({"sync/parity_max_abs_diff": self.parity_probe()}, 0)
        metrics: dict[str, float] = {}
        with progress_bar("rl", iterations, self.show_progress) as advance:
            for it in range(1, iterations + 1):
                metrics = self.rl_iteration(it, sampler)
                self.tracker.log(metrics, it)
                if cfg.train.eval_every and it % cfg.train.eval_every == 0 and it != iterations:
                    self.tracker.log(self.evaluate(it), it)
                if cfg.train.save_every and it % cfg.train.save_every == 0:
                    self.checkpoint(f"step_{it}")
                advance(1, reward=metrics["reward/mean"])
        final_eval = self.evaluate(iterations)
        self.tracker.log(final_eval, iterations)
        final = self.checkpoint("final")
        return {
            "run_dir": str(self.run_dir), "iterations": iterations, "policy_version": self.version,
            "eval/accuracy_start": initial.get("eval/accuracy"), "eval/accuracy": final_eval.get("eval/accuracy"),
            "reward/mean_last": metrics.get("reward/mean"), "checkpoint": str(final),
            "seconds": round(time.time() - start, 1),
            "completions_per_s": round(iterations * cfg.train.batch_size * cfg.rollout.mini_batches / (time.time() - start), 2),
        }

    def close(self) -> None:
        for name in ("generators", "rewards"):
            group = getattr(self, name, None)
            if group is not None:
                try:
                    group.call("close")
                finally:
                    group.shutdown()
                setattr(self, name, None)
        super().close()
