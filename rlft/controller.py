"""The controller: the only code that knows the order of calls (DESIGN section 1).

One loop runs every algorithm; the algorithm's spec (rlft.algorithms.base) says what it needs:

    iteration i:
      source.next_batch(i)        dataset rows, or prompts -> generators sample -> reward roles score
        -> spec.build_rows          training rows (advantages, labels, ...)
        -> learners.train_step      spec.passes: mini-batches x epochs optimizer steps
        -> sync.publish             when generators exist: versioned payload, fingerprints, parity probe
      log at optimizer step i * steps_per_iteration; evaluate / checkpoint when a cadence is due

With rollout.max_staleness = 1, source.next_batch(i + 1) runs in a background thread while the
learners train on batch i, under the policy version before batch i's update (one step
off-policy; each rollout keeps the version and sampling log-probs that produced it). Every other
use of the generators (publish, parity probe, evaluation) first waits for that batch, so a weight
load never interleaves with sampling.

Roles come from the registry that `runtime.roles` names (rlft.roles.ROLES), so a test can run
this loop with fake roles. The controller holds no model weights (only a tokenizer).
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from rlft import runtime
from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import RowContext, StepCounts
from rlft.config import RLFTConfig, dump_config
from rlft.data.collate import encode_sft, pad_rows, shard_micro_batches, uses_chat_template
from rlft.data.models import resolve_dtype
from rlft.data.tasks import build_task
from rlft.evaluate import eval_metrics, score_greedy
from rlft.modes import act_against, write_mode_report
from rlft.peft import PEFT_METHODS
from rlft.progress import print_summary, progress_bar
from rlft.roles import ROLES
from rlft.roles.generator import engine_cpu_bind
from rlft.roles.learner import detect_device
from rlft.runs import base_model_path, prepare_run_dir
from rlft.sources import SOURCES, SourceContext
from rlft.sources.rollouts import generate, reward_metrics, score, split_evenly
from rlft.sync.protocol import WeightSync
from rlft.tracking import Tracker, plot_run
from rlft.validation import check_run

log = logging.getLogger(__name__)


def due(every: int, step: int, steps_per_iteration: int) -> bool:
    """True when the iteration that ended at optimizer `step` crossed a multiple of `every`."""
    return bool(every) and step // every > (step - steps_per_iteration) // every


class Controller:
    def __init__(self, cfg: RLFTConfig, show_progress: bool = True):
        self.cfg = cfg
        self.show_progress = show_progress
        self.spec = ALGORITHMS[cfg.algorithm.name]
        self.peft = PEFT_METHODS[cfg.peft.method]
        self.roles: dict[str, runtime.RoleGroup] = {}
        self.sync: WeightSync | None = None
        self.tracker: Tracker | None = None
        self.run_dir: Path = cfg.run_dir
        self._log_handler = None
        self.optimizer_steps_taken = 0  # StepCounts.step of the next learner step
        self.samples_seen = 0  # training rows built so far
        self._prefetcher: ThreadPoolExecutor | None = None
        self._next_batch: Future | None = None  # the source batch being generated while the learners train
        self.start_eval: dict[str, float] | None = None  # the first eval: the base of per-mode comparisons

    @property
    def learners(self) -> runtime.RoleGroup | None:
        return self.roles.get("learner")

    @property
    def policy_version(self) -> int:
        return self.sync.version if self.sync is not None else 0

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Validate, resolve the base model and data, then start the roles (learners first)."""
        from transformers import AutoTokenizer

        cfg = self.cfg
        check_run(cfg, self.spec, self.peft)
        self.model_path = base_model_path(cfg, run_warm_start=True, show_progress=self.show_progress)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.chat = uses_chat_template(self.tokenizer, cfg.data.chat_template)
        self.task = build_task(cfg.task)
        self.train_examples = self.task.split("train")
        self.eval_examples = self.task.split("eval")[: cfg.eval.num_examples]
        check_run(cfg, self.spec, self.peft, data=(self.model_path, self.tokenizer, self.chat,
                                                   self.train_examples, self.eval_examples))
        # The source reads and checks its data now, before any role starts; it reaches the roles
        # through self.roles, filled below.
        self.source = SOURCES[self.spec.source](SourceContext(
            cfg, self.spec, self.task, self.tokenizer, self.chat, self.train_examples, self.roles))
        self.run_dir = prepare_run_dir(cfg.run_dir, cfg.run.if_exists, dump_config(cfg))
        self._start_log_file()
        self.tracker = Tracker(self.run_dir, cfg.run.name, cfg.model_dump(mode="json"), cfg.tracking.wandb,
                               cfg.tracking.project)
        num_cpus = cfg.runtime.num_cpus or max(os.cpu_count() or 1, math.ceil(self.required_cpus()))
        runtime.start(cfg.runtime.mode, address=cfg.runtime.ray_address, num_cpus=num_cpus)
        self.roles["learner"] = self._start_learners()
        for kind in self.spec.roles:
            self.roles[kind] = getattr(self, f"_start_{kind}s")()
        if "generator" in self.roles:
            self.sync = WeightSync(self.learners, self.roles["generator"], cfg.sync, self._probe(), self.dtype())
        self.row_ctx = RowContext(self.tokenizer, self.chat, cfg.train.max_length, cfg.algorithm)

    def _start_log_file(self) -> None:
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("rlft").addHandler(handler)
        logging.getLogger("rlft").setLevel(logging.INFO)
        self._log_handler = handler

    def required_cpus(self) -> float:
        cfg = self.cfg
        sizes = {"learner": cfg.learner.count * cfg.learner.cpus_per_rank,
                 "generator": cfg.generator.count * cfg.generator.cpus_per_actor,
                 "reward": cfg.reward.count * cfg.reward.cpus_per_actor}
        return sum(sizes[kind] for kind in ("learner", *self.spec.roles))

    def _create(self, kind: str, kwargs_per_member: list[dict], num_cpus: float, num_gpus: float = 0.0):
        role_cls = ROLES[kind][getattr(self.cfg.runtime.roles, kind)]
        group = runtime.RoleGroup.create(role_cls, self.cfg.runtime.mode, kwargs_per_member,
                                         num_cpus=num_cpus, num_gpus=num_gpus, name=kind)
        info = group.call("setup")
        log.info("%s group ready: %s", kind, info[0])
        return group, info

    def _start_learners(self) -> runtime.RoleGroup:
        cfg, mode = self.cfg, self.cfg.runtime.mode
        ranks = runtime.collective_group_size(mode, cfg.learner.count)
        addr, port = runtime.node_address(mode), runtime.free_port()
        threads = None if mode == "inline" else (cfg.learner.threads_per_rank or max(1, int(cfg.learner.cpus_per_rank)))
        kwargs = [dict(cfg=cfg, spec=self.spec, rank=rank, world_size=ranks, model_path=str(self.model_path),
                       master_addr=addr, master_port=port, grad_accum=cfg.train.batch_size // (ranks * cfg.train.micro_batch_size),
                       num_threads=threads) for rank in range(ranks)]
        group, info = self._create("learner", kwargs, cfg.learner.cpus_per_rank, cfg.learner.gpus_per_rank)
        self.learner_info = info[0]
        return group

    def dtype(self):
        """The weights dtype of learners and generators (model.dtype resolved on the learner device)."""
        return resolve_dtype(self.cfg.model.dtype, detect_device(self.cfg.learner.device))

    def _start_generators(self) -> runtime.RoleGroup:
        cfg, gen = self.cfg, self.cfg.generator
        device = detect_device(cfg.learner.device)
        dtype = str(self.dtype()).removeprefix("torch.")
        cores = os.cpu_count() or 1
        kwargs = [dict(cfg=cfg, index=i, model_path=str(self.model_path), dtype=dtype, seed=cfg.run.seed + i,
                       lora_rank=self.peft(cfg.peft).generator_lora_rank() if cfg.sync.weights == "adapter" else None,
                       cpu_bind=engine_cpu_bind(i, gen.count, cores) if device == "cpu" and gen.bind_cpus else None)
                  for i in range(gen.count)]
        return self._create("generator", kwargs, gen.cpus_per_actor, gen.gpus_per_actor)[0]

    def _start_rewards(self) -> runtime.RoleGroup:
        kwargs = [dict(cfg=self.cfg, index=i) for i in range(self.cfg.reward.count)]
        return self._create("reward", kwargs, self.cfg.reward.cpus_per_actor)[0]

    def _probe(self):
        """The parity probe: a fixed sequence (held-out prompt + reference), scored at every position."""
        ex = (self.eval_examples or self.train_examples)[0]
        row = encode_sft(self.tokenizer, ex.prompt, ex.response or ex.answer or "", self.cfg.train.max_length, self.chat)
        row["labels"] = list(row["input_ids"])
        return pad_rows([row], self.pad_id())

    # ----------------------------------------------------------------- learner steps
    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def learner_step(self, rows: list[dict]) -> dict[str, float]:
        """Split rows over ranks and micro-batches, pad them, and run one optimizer step.

        The step-global token and sequence counts are computed here, once, for every rank.
        """
        shards = shard_micro_batches(rows, len(self.learners), self.cfg.train.micro_batch_size)
        batches = [[self.spec.pad(mb, self.pad_id()) for mb in shard] for shard in shards]
        counts = [self.spec.count_tokens(mb) for shard in batches for mb in shard]
        step = StepCounts(num_tokens=sum(c[0] for c in counts), num_sequences=sum(c[1] for c in counts),
                          step=self.optimizer_steps_taken)
        results = self.learners.call_each("train_step", [(shard, step) for shard in batches])
        self.optimizer_steps_taken += 1
        merged = {k: sum(r.get(k, 0.0) for r in results) for k in results[0] if k not in ("grad_norm", "lr")}
        merged["grad_norm"], merged["lr"], merged["step_tokens"] = results[0]["grad_norm"], results[0]["lr"], step.num_tokens
        return merged

    def optimize(self, rows: list[dict]) -> tuple[dict[str, float], int]:
        """spec.passes: mini-batches x epochs optimizer steps on rows; sums (grad norm and lr averaged)."""
        mini_batches, epochs = self.spec.passes(self.cfg)
        passes = [mb for _ in range(epochs) for mb in split_evenly(rows, mini_batches)]
        totals: dict[str, float] = {}
        for mb_rows in passes:
            for key, value in self.learner_step(mb_rows).items():
                totals[key] = totals.get(key, 0.0) + value
        totals["grad_norm"] /= len(passes)
        totals["lr"] /= len(passes)
        return totals, len(passes)

    def next_batch(self, iteration: int, prefetch: bool) -> tuple[list, dict[str, float]]:
        """Source batch `iteration` (generated during the previous iteration when it was prefetched);
        with `prefetch`, start generating batch iteration + 1 in the background."""
        if self._next_batch is not None:
            items, metrics = self._next_batch.result()
        else:
            items, metrics = self.source.next_batch(iteration, self.policy_version)
        self._next_batch = None
        if prefetch:
            if self._prefetcher is None:
                self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlft-prefetch")
            # trained after this iteration's publish, so at version + 1: that is what staleness counts from
            self._next_batch = self._prefetcher.submit(self.source.next_batch, iteration + 1, self.policy_version + 1)
        return items, metrics

    def settle(self) -> None:
        """Wait for the batch in generation (if any), so the generators are free for the caller."""
        if self._next_batch is not None:
            wait([self._next_batch])

    def iteration(self, iteration: int, last: bool = False) -> dict[str, float]:
        """One source batch -> rows -> optimizer steps -> publish; returns the logged metrics."""
        t0 = time.time()
        items, metrics = self.next_batch(iteration, prefetch=bool(self.cfg.rollout.max_staleness) and not last)
        t_batch = time.time()
        rows, row_stats = self.spec.build_rows(items, self.row_ctx)
        self.samples_seen += len(rows)
        t1 = time.time()
        sums, steps = self.optimize(rows)
        t2 = time.time()
        metrics.update(row_stats)
        metrics.update({"train/loss": sums["loss"] / steps, "train/grad_norm": sums["grad_norm"], "train/lr": sums["lr"],
                        "train/iteration": float(iteration), **self.spec.log_metrics(sums, steps),
                        **{k: v for k, v in sums.items() if k.startswith("peft/")}})  # the PEFT method's own
        t_wait = time.time()
        self.settle()
        t3 = time.time()
        if self.sync is not None:
            metrics.update(self.sync.publish())
            metrics["perf/time_sync"] = metrics["sync/seconds"]
        elapsed = time.time() - t0
        if self.cfg.rollout.max_staleness:  # the learners' idle time: waiting for a batch, for generation to end
            metrics["perf/time_wait_generation"] = (t_batch - t0) + (t3 - t_wait)
        metrics.update({"perf/time_train": t2 - t1, "perf/train_tokens_per_s": sums["step_tokens"] / max(t2 - t1, 1e-9),
                        "perf/step_seconds": elapsed, "perf/samples_per_s": len(rows) / elapsed})
        return metrics

    def memory(self) -> dict[str, float]:
        """perf/mem_<role>_<measure>: the largest value over each role's members (rlft.memory)."""
        found: dict[str, float] = {}
        for kind, group in self.roles.items():
            try:
                per_member = group.call("memory")
            except AttributeError:  # an injected role class without the probe
                continue
            for key in per_member[0]:
                found[f"perf/mem_{kind}_{key}"] = max(m[key] for m in per_member)
        return found

    # ----------------------------------------------------------------- eval and outputs
    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy held-out accuracy: by the generators (current version) when there are any, else learner rank 0."""
        cfg = self.cfg.eval
        if not self.eval_examples:
            return {}
        if "generator" in self.roles:
            self.settle()
            rollouts = generate(self.roles["generator"], self.tokenizer, self.chat, self.eval_examples, 1,
                                cfg.max_new_tokens, 0.0, 1.0, seed=0)
            score(self.roles["reward"], rollouts)
            found = reward_metrics(rollouts, self.task.name, prefix="eval")
            metrics = {**eval_metrics([r.example for r in rollouts], [float(r.correct) for r in rollouts],
                                      [len(r.completion_ids) for r in rollouts]), "eval/reward": found["eval/mean"]}
        else:
            scores, lengths = score_greedy(
                self.task, self.tokenizer, self.eval_examples, self.chat, cfg,
                lambda chunk: self.learners.call_one(0, "generate", chunk, cfg.max_new_tokens, cfg.batch_size),
                description=f"eval @ step {step}", show_progress=self.show_progress,
            )
            metrics = eval_metrics(self.eval_examples, scores, lengths)
        if self.start_eval is None:
            self.start_eval = metrics
        act = act_against(metrics, self.start_eval)  # reasoning modes: ACT against the start's high mode
        return {**metrics, **({"eval/act": act} if act is not None else {})}

    def checkpoint(self, tag: str) -> Path:
        out = self.run_dir / "checkpoints" / tag
        self.learners.call("save", str(out))
        return out

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        try:
            self.setup()
            return self.loop()
        except Exception:
            if self._log_handler is not None:  # the run folder keeps why it stopped (the console shows the error)
                self._log_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "run stopped by an error",
                                                        None, sys.exc_info()))
            raise
        finally:
            self.close()

    def loop(self) -> dict[str, Any]:
        cfg = self.cfg
        per_iteration = self.spec.optimizer_steps(cfg)
        iterations = cfg.train.steps // per_iteration
        start = time.time()
        initial = self.evaluate(0)
        if self.sync is not None and cfg.sync.parity_every:
            initial.update(self.sync.check_parity())
        self.tracker.log(initial, 0)
        metrics: dict[str, float] = {}
        with progress_bar("train", iterations, self.show_progress) as advance:
            for it in range(1, iterations + 1):
                metrics = self.iteration(it, last=it == iterations)
                step = it * per_iteration
                if due(cfg.train.log_every, step, per_iteration) or it == iterations:
                    self.tracker.log({**metrics, **self.memory()}, step)
                if due(cfg.train.eval_every, step, per_iteration) and it != iterations:
                    self.tracker.log(self.evaluate(step), step)
                if due(cfg.train.save_every, step, per_iteration):
                    self.checkpoint(f"step_{step}")
                advance(1, loss=metrics["train/loss"], **({"reward": metrics["reward/mean"]} if "reward/mean" in metrics else {}))
        final_eval = self.evaluate(iterations * per_iteration)
        self.tracker.log(final_eval, iterations * per_iteration)
        final = self.checkpoint("final")
        seconds = time.time() - start
        modes = write_mode_report(self.run_dir, final_eval, initial)
        if modes is not None:
            log.info("eval by reasoning mode (%s):\n%s", self.run_dir / "modes.png", modes)
        return {
            "run_dir": str(self.run_dir), "steps": iterations * per_iteration, "iterations": iterations,
            "policy_version": self.policy_version, "train/loss": metrics.get("train/loss"),
            "eval/accuracy_start": initial.get("eval/accuracy"), "eval/accuracy": final_eval.get("eval/accuracy"),
            **({"reward/mean_last": metrics["reward/mean"]} if "reward/mean" in metrics else {}),
            "checkpoint": str(final), "seconds": round(seconds, 1), "samples_per_s": round(self.samples_seen / seconds, 2),
            "trainable_params": self.learner_info["trainable_params"], "learner_ranks": len(self.learners),
        }

    def close(self) -> None:
        if self._prefetcher is not None:  # a batch still in generation ends before its roles do
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher, self._next_batch = None, None
        for kind in reversed(list(self.roles)):
            group = self.roles.pop(kind)
            try:
                group.call("close")
            finally:
                group.shutdown()
        self.sync = None
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
            if self.cfg.tracking.plots:
                plot_run(self.run_dir)
        runtime.stop(self.cfg.runtime.mode)
        if self._log_handler is not None:
            logging.getLogger("rlft").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def train(cfg: RLFTConfig, show_progress: bool = True) -> dict[str, Any]:
    summary = Controller(cfg, show_progress).run()
    if show_progress:
        print_summary(summary)
    return summary
