"""The controller: the only code that knows the order of calls (docs/design.md#the-loop).

One loop runs every algorithm; the algorithm's spec (rlft.algorithms.base) says what it needs:

    iteration i:
      source.next_batch(i)        dataset rows, or prompts -> generators sample -> reward roles score
        -> spec.build_rows          training rows (advantages, labels, ...)
        -> learners.learner_scores, annotate   spec.learner_scores when it applies (a KL to the reference
                                    put into the reward: per-token returns)
        -> companion groups score the rows, companion.annotate   spec.companions (a critic: values -> GAE)
        -> learners.proximal_logprobs   with spec.recompute_logprobs: every row scored once, before the passes
        -> learners.train_step      spec.passes: mini-batches x epochs optimizer steps (unless
                                    spec.trains_policy says not in this iteration)
        -> companions.train_step    each companion group's own optimizer steps on the same rows
        -> sync.publish             when generators exist: versioned payload, fingerprints, parity probe
      log at optimizer step i * steps_per_iteration; evaluate / checkpoint when a cadence is due

A step checkpoint holds everything the loop needs to continue exactly (rlft.control.checkpoints);
with `resume`, setup loads it into the freshly started roles, re-sends the policy to the
generators (verified like any sync) and the loop continues at the next iteration. SIGTERM ends the
current iteration, writes a step checkpoint and stops (rlft.control.resume).

With rollout.max_staleness = k >= 1, batches i + 1 .. i + k are generated in a background thread
while the learners train on batch i (rlft.control.ahead: batch j is trained at most k versions after
the policy that began it; each rollout keeps the version and sampling log-probs that produced it). A
weight update waits for the batch in generation, or with rollout.in_flight_updates goes to the
generators while they sample (paused between two engine steps). Evaluation and checkpoints first
wait for every batch ahead.

Roles come from the registry that `runtime.roles` names (rlft.roles.ROLES), so a test can run
this loop with fake roles. The controller holds no model weights (only a tokenizer).

The controller is composed of parts that take what they need as arguments: set-up starts the
roles through a `RoleStarter` and the `STARTERS` registry (rlft.control.startup), the loop makes
its remote calls through a `Recovery` (rlft.control.recovery), and step checkpoints are written
and loaded by rlft.control.resume. What the loop counts (steps, rows, skipped steps, the first
evaluation) stays here, and goes into each step checkpoint (`resume_state`). Held-out evaluation
is the source's (`source.evaluate`, rlft.sources): the controller hands it the roles, the
held-out examples and the step, and adds the evaluation's time and ACT.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from rlft import run_modes, runtime
from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import RowContext, StepCounts, combine_metric_sums
from rlft.cluster import resolve_storage
from rlft.config import RLFTConfig, dump_config
from rlft.control.ahead import BatchesAhead
from rlft.control.recovery import Recovery, explain_fault
from rlft.control.resume import (ResumePoint, RunFinished, RunStopped, StopOnSignal, restore_roles, resume_point,
                                 save_checkpoint)
from rlft.control.run_dirs import FINISHED, prepare_run_dir
from rlft.control.startup import (STARTERS, RoleStarter, check_role_models, memory_check, required_cpus, role_models,
                                  start_together)
from rlft.control.validation import check_run
from rlft.control.warm_start import base_model_path
from rlft.data.collate import pad_token_id, shard_micro_batches
from rlft.data.tasks import build_task
from rlft.faults import is_actor_death, note_member_output
from rlft.families import family_for
from rlft.logs import attach_run_log, detach_run_log
from rlft.modes import act_against, write_mode_report
from rlft.peft import PEFT_METHODS
from rlft.progress import print_summary, progress_bar
from rlft.rollouts import with_logprobs
from rlft.samples import SampleLog
from rlft.sources import SOURCES, SourceContext
from rlft.sources.rollouts import split_evenly
from rlft.sync.protocol import WeightSync
from rlft.tracking import Tracker, plot_run

log = logging.getLogger("rlft.controller")  # the name its lines have always carried in train.log


def due(every: int, step: int, steps_per_iteration: int) -> bool:
    """True when the iteration that ended at optimizer `step` crossed a multiple of `every`."""
    return bool(every) and step // every > (step - steps_per_iteration) // every


class Controller:
    """One run: set-up, the loop, evaluation and outputs (see the module's docstring for its parts)."""

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
        self._owns_ray = False  # whether setup connected to Ray (then close disconnects)
        self.optimizer_steps_taken = 0  # StepCounts.step of the next learner step
        self.samples_seen = 0  # training rows built so far
        self.ahead: BatchesAhead | None = None  # batches generated while the learners train (max_staleness >= 1)
        self.start_eval: dict[str, float] | None = None  # the first eval: the base of per-mode comparisons
        self.initial: dict[str, float] = {}  # what was logged at step 0
        self.resumed: ResumePoint | None = None
        self.skipped_steps = 0  # optimizer steps skipped for non-finite gradients, in all
        self.skipped_in_a_row = 0
        self.stop = StopOnSignal()
        self.starter: RoleStarter | None = None  # set-up's: starts the roles, knows the learners' device
        self.recovery: Recovery | None = None  # set-up's, once the roles and the weight sync exist
        self.samples: SampleLog | None = None  # rollouts a person can read (rlft.samples)

    @property
    def learners(self) -> runtime.RoleGroup | None:
        return self.roles.get("learner")

    @property
    def policy_version(self) -> int:
        return self.sync.version if self.sync is not None else 0

    @property
    def learner_info(self) -> dict[str, Any]:
        """What learner rank 0 reported when it started (device, dtype, trainable parameters)."""
        return self.starter.learner_info

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Validate, resolve the base model and data, then start the roles (learners first)."""
        # Absolute paths; in cluster mode on storage that every node reaches (rlft.cluster).
        self.cfg = cfg = resolve_storage(self.cfg)
        check_run(cfg, self.spec, self.peft)
        self.resumed = resume_point(cfg)  # before the warm start: a finished run needs nothing
        # The base model; a warm start not run yet runs now, as a run of its own (rlft.control.warm_start).
        self.model_path = base_model_path(cfg, train=train, show_progress=self.show_progress)
        self.family = family_for(self.model_path)
        self.tokenizer = self.family.load_tokenizer(self.model_path)
        self.chat = self.family.uses_chat(self.tokenizer, cfg.data.chat_template)
        self.task = build_task(cfg.task)
        self.train_examples = self.task.split("train")
        self.eval_examples = self.task.split("eval")[: cfg.eval.num_examples]
        check_run(cfg, self.spec, self.peft, data=(self.model_path, self.tokenizer, self.chat,
                                                   self.train_examples, self.eval_examples),
                  check_data=self.family.check_data, family=self.family)
        # Models of other roles (a distillation teacher), made now if a recipe must run first.
        self.role_models = role_models(cfg, self.spec, train=train, show_progress=self.show_progress)
        check_role_models(self.role_models, self.tokenizer)
        memory = memory_check(cfg, self.spec, self.peft, self.model_path, self.role_models)
        # The source reads and checks its data now, before any role starts; it reaches the roles
        # through self.roles, filled below.
        self.source = SOURCES[self.spec.source](SourceContext(
            cfg, self.spec, self.task, self.tokenizer, self.chat, self.train_examples, self.roles))
        if self.resumed is None:
            self.run_dir = prepare_run_dir(cfg.run_dir, cfg.run.if_exists, dump_config(cfg))
        else:
            self.run_dir = self.resumed.run_dir
        self._start_log_file()
        if memory is not None:
            (self.run_dir / "memory_estimate.json").write_text(json.dumps(
                {role.kind: role.as_dict() for role in memory}, indent=1))
        state = self.resumed.state if self.resumed else {}
        self.tracker = Tracker(self.run_dir, cfg.run.name, cfg.model_dump(mode="json"), cfg.tracking.wandb,
                               cfg.tracking.project, resume_step=state.get("step"), wandb_id=state.get("wandb_id"))
        self.samples = SampleLog(self.run_dir, cfg.train.log_samples, cfg.run.seed, self.tracker)
        num_cpus = cfg.runtime.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus(cfg, self.spec)))
        self._owns_ray = runtime.start(cfg.runtime.mode, address=cfg.runtime.ray_address, num_cpus=num_cpus,
                                       log_level=cfg.runtime.log_level)
        self.stop.install()  # ray.init replaced the SIGTERM handler
        self.starter = RoleStarter(cfg, self.spec, self.peft, self.model_path, self.run_dir, self.role_models)
        self.starter.placement_check()
        kinds = ("learner", *self.spec.roles)
        if run_modes.uses_ray(cfg.runtime.mode) and run_modes.on_this_machine(cfg.runtime.mode):
            self.roles.update(start_together(self.starter, kinds))  # what started is closed if one failed
        else:  # learners first: the others follow the device learner rank 0 reports
            for kind in kinds:
                self.roles[kind] = STARTERS[kind](self.starter)
        self.starter.record_placement(self.roles)
        if "generator" in self.roles:
            self.sync = WeightSync(self.learners, self.roles["generator"], cfg.sync, self.family.probe(self),
                                   self.starter.dtype(), beside_sampling=cfg.rollout.in_flight_updates)
        self.recovery = Recovery(cfg, self.roles, self.sync)
        if cfg.rollout.max_staleness:
            self.ahead = BatchesAhead(self.source, cfg.rollout.max_staleness,
                                      last_iteration=cfg.train.steps // self.spec.optimizer_steps(cfg),
                                      in_flight=cfg.rollout.in_flight_updates)
        self.row_ctx = RowContext(self.tokenizer, self.chat, cfg.train.max_length, cfg.algorithm)
        if self.resumed is not None:
            self.restore(self.resumed)

    def _start_log_file(self) -> None:
        """<run>/train.log: what the driver logs (rlft's lines; under the command line also Ray's and
        the libraries' INFO lines, which runtime.log_level quiet keeps off the console; rlft.logs)."""
        self._log_handler = attach_run_log(self.run_dir / "train.log", self.cfg.runtime.log_level)

    # ----------------------------------------------------------------- learner steps
    def pad_id(self) -> int | None:
        tok = self.tokenizer
        if tok is None:  # fixed-length sequences (rlft.families.mdlm): nothing is padded
            return None
        return pad_token_id(tok)

    def learner_step(self, rows: list[dict], group: runtime.RoleGroup | None = None,
                     spec=None) -> dict[str, float]:
        """Split rows over ranks and micro-batches, pad them, and run one optimizer step of the learners
        (or of a companion `group` running `spec`, which leaves the policy's step count as it is).

        The step-global token and sequence counts are computed here, once, for every rank.
        """
        policy = group is None
        group, spec = group or self.learners, spec or self.spec
        shards = shard_micro_batches(rows, len(group), self.cfg.train.micro_batch_size)
        batches = [[spec.pad(mb, self.pad_id()) for mb in shard] for shard in shards]
        counts = [spec.count_tokens(mb) for shard in batches for mb in shard]
        step = StepCounts(num_tokens=sum(c[0] for c in counts), num_sequences=sum(c[1] for c in counts),
                          step=self.optimizer_steps_taken)
        results = group.call_each("train_step", [(shard, step) for shard in batches])
        self.optimizer_steps_taken += policy
        per_rank = ("grad_norm", "lr", "skipped_steps")  # the same on every rank: rank 0's
        merged = combine_metric_sums({k: v for k, v in r.items() if k not in per_rank} for r in results)
        merged["grad_norm"], merged["lr"], merged["step_tokens"] = results[0]["grad_norm"], results[0]["lr"], step.num_tokens
        self.count_skipped(bool(results[0].get("skipped_steps")))
        return merged

    def count_skipped(self, skipped: bool) -> None:
        """A step skipped for non-finite gradients is counted; too many in a row stop the run."""
        self.skipped_in_a_row = self.skipped_in_a_row + 1 if skipped else 0
        self.skipped_steps += skipped
        if skipped:
            log.warning("optimizer step %d skipped: NaN or inf loss or gradients (%d in a row)",
                        self.optimizer_steps_taken, self.skipped_in_a_row)
        if self.skipped_in_a_row > self.cfg.train.max_skipped_steps:
            raise FloatingPointError(
                f"{self.skipped_in_a_row} optimizer steps in a row had a NaN or inf loss or gradients (up to step "
                f"{self.optimizer_steps_taken}); stopping (train.max_skipped_steps={self.cfg.train.max_skipped_steps}). "
                "Lower train.lr, set train.grad_clip, or check the data")

    def optimize(self, rows: list[dict], group: runtime.RoleGroup | None = None,
                 spec=None) -> tuple[dict[str, float], int]:
        """spec.passes: mini-batches x epochs optimizer steps on rows; sums (grad norm and lr averaged).
        With spec.recompute_logprobs the learners first score every mini-batch under the weights they
        hold now (the proximal policy), before the first pass changes them. `group` and `spec`: a
        companion learner group and its spec instead of the learners and the run's."""
        spec = spec or self.spec
        mini_batches, epochs = spec.passes(self.cfg)
        split = split_evenly(rows, mini_batches)
        if spec.recompute_logprobs(self.cfg):
            split = [self.proximal_rows(mb_rows, group, spec) for mb_rows in split]
        passes = [mb for _ in range(epochs) for mb in split]
        totals = combine_metric_sums(self.learner_step(mb_rows, group, spec) for mb_rows in passes)
        totals["grad_norm"] /= len(passes)
        totals["lr"] /= len(passes)
        return totals, len(passes)

    def proximal_rows(self, rows: list[dict], group: runtime.RoleGroup | None = None, spec=None,
                      key: str = "prox_logprobs", method: str = "proximal_logprobs") -> list[dict]:
        """rows with `key`, the per-token scores of `spec.proximal_logprobs` (the learners' log-probs; a
        companion's own score, e.g. a critic's values), or of the learners' `method`, in the micro-batches
        `learner_step` gives them."""
        group, spec = group or self.learners, spec or self.spec
        shards = shard_micro_batches(rows, len(group), self.cfg.train.micro_batch_size)
        scored = group.call_each(method, [([spec.pad(mb, self.pad_id()) for mb in shard],) for shard in shards])
        return [row for shard, per_rank in zip(shards, scored) for mb, logprobs in zip(shard, per_rank)
                for row in with_logprobs(mb, logprobs, key)]

    def annotate(self, rows: list[dict], stats: dict[str, float]) -> list[dict]:
        """spec.companions: each companion group scores the rows (before any update of this batch) and the
        algorithm turns the scores into what the learners train on (a critic's values -> advantages). First,
        spec.learner_scores: the learners' own per-token scores of the rows (a KL to the reference)."""
        own = self.spec.learner_scores
        if own is not None and own.applies(self.cfg):
            rows, found = own.annotate(self.proximal_rows(rows, key=own.key, method="learner_scores"), self.row_ctx)
            stats.update(found)
        for companion in self.spec.companions:
            scored = self.proximal_rows(rows, self.roles[companion.kind], companion.spec, companion.score_key)
            rows, found = companion.annotate(scored, self.row_ctx)
            stats.update(found)
        return rows

    def train_companions(self, rows: list[dict]) -> dict[str, float]:
        """Each companion group's own optimizer steps on the rows (after the learners'); its metrics, and its
        loss, grad norm and LR as <kind>/loss, <kind>/grad_norm, <kind>/lr."""
        metrics: dict[str, float] = {}
        for companion in self.spec.companions:
            sums, steps = self.optimize(rows, self.roles[companion.kind], companion.spec)
            metrics.update(companion.spec.log_metrics(sums, steps))
            metrics.update({f"{companion.kind}/loss": sums["loss"] / steps,
                            f"{companion.kind}/grad_norm": sums["grad_norm"], f"{companion.kind}/lr": sums["lr"]})
        return metrics

    def next_batch(self, iteration: int) -> tuple[list, dict[str, float]]:
        """Source batch `iteration`: generated now, or ahead (rollout.max_staleness >= 1; then the batches
        after it are handed to the background thread)."""
        def now(it: int, after: BaseException | None = None):
            return self.recovery.recovering(self.source.next_batch, it, self.policy_version, after=after,
                                            source=self.source)

        if self.ahead is None:
            return now(iteration)
        return self.ahead.take(iteration, self.policy_version, now)

    def settle(self) -> None:
        """Wait for the batches in generation (if any), so the generators are free for the caller."""
        if self.ahead is not None:
            self.ahead.settle()

    def iteration(self, iteration: int, last: bool = False) -> dict[str, float]:
        """One source batch -> rows -> optimizer steps -> publish; returns the logged metrics."""
        t0 = time.time()
        items, metrics = self.next_batch(iteration)
        t_batch = time.time()
        step = self.log_step(iteration, last)
        if step is not None:  # beside the step's metrics, some of the scored rollouts behind them
            self.samples.write(items, step, iteration, learner_version=self.policy_version)
        rows, row_stats = self.spec.build_rows(items, self.row_ctx)
        rows = self.annotate(rows, row_stats)
        self.samples_seen += len(rows)
        t1 = time.time()
        sums, steps = ({}, 0)
        if self.spec.trains_policy(self.cfg, iteration):
            sums, steps = self.optimize(rows)
        else:  # the loop's step count (logs, checkpoints, resume) goes on as if the learners had stepped
            self.optimizer_steps_taken += self.spec.optimizer_steps(self.cfg)
        metrics.update(self.train_companions(rows))
        t2 = time.time()
        metrics.update(row_stats)
        metrics.update({"train/iteration": float(iteration), "train/skipped_steps": float(self.skipped_steps)})
        if steps:  # the policy trained (not in a companion's warm-up)
            metrics.update({"train/loss": sums["loss"] / steps, "train/grad_norm": sums["grad_norm"],
                            "train/lr": sums["lr"], **self.spec.log_metrics(sums, steps),
                            **{k: v for k, v in sums.items() if k.startswith("peft/")}})  # the PEFT method's own
        t_wait = time.time()
        with self.ahead.update_turn() if self.ahead is not None else nullcontext():  # the generators free for it
            t3 = time.time()
            if self.sync is not None:
                metrics.update(self.recovery.recovering(self.sync.publish))
                metrics["perf/time_sync"] = metrics["sync/seconds"]
        if self.recovery.restarts:
            metrics["faults/restarts"] = float(self.recovery.restarts)
        elapsed = time.time() - t0
        if self.ahead is not None:  # the learners' idle time: waiting for a batch, for generation to end
            metrics["perf/time_wait_generation"] = (t_batch - t0) + (t3 - t_wait)
            metrics.update({"rollout/dropped_batches": float(self.ahead.dropped),
                            "rollout/batches_ahead": float(len(self.ahead.pending))})
        metrics.update({"perf/time_train": t2 - t1,
                        "perf/train_tokens_per_s": sums.get("step_tokens", 0.0) / max(t2 - t1, 1e-9),
                        "perf/step_seconds": elapsed, "perf/samples_per_s": len(rows) / elapsed})
        return metrics

    def log_step(self, iteration: int, last: bool) -> int | None:
        """The optimizer step at which `iteration` logs its metrics and samples; None when it logs none."""
        per_iteration = self.spec.optimizer_steps(self.cfg)
        step = iteration * per_iteration
        return step if due(self.cfg.train.log_every, step, per_iteration) or last else None

    def memory(self) -> dict[str, float]:
        """perf/mem_<role>_<measure>: the largest value over each role's members (rlft.memory). A member
        that died since the iteration's last call leaves its role out: the next call that needs it
        meets the death and replaces it (rlft.control.recovery), the metrics being no reason to stop a run."""
        found: dict[str, float] = {}
        for kind, group in self.roles.items():
            try:
                per_member = group.call("memory")
            except AttributeError:  # an injected role class without the probe
                continue
            except Exception as err:
                if not is_actor_death(err):
                    raise
                log.warning("%s memory not logged: a member died (%s)", kind, type(err).__name__)
                continue
            for key in per_member[0]:
                found[f"perf/mem_{kind}_{key}"] = max(m[key] for m in per_member)
        return found

    # ----------------------------------------------------------------- eval and outputs
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out evaluation by the run's source, the way it makes the training data (rlft.sources:
        greedy answers or episodes by the generators, diffusion samples, or learner rank 0 when the
        algorithm has no generators); then perf/time_eval, and ACT against the first evaluation."""
        started = time.perf_counter()
        self.settle()  # the generators are free for evaluation: no batch is in generation beside it
        metrics = self.source.evaluate(self.roles, self.eval_examples, step, family=self.family,
                                       policy_version=self.policy_version, samples=self.samples,
                                       show_progress=self.show_progress)
        if not metrics:
            return {}
        metrics["perf/time_eval"] = time.perf_counter() - started  # kept apart from the iterations' clocks
        if self.start_eval is None:
            self.start_eval = metrics
        act = act_against(metrics, self.start_eval)  # reasoning modes: ACT against the start's high mode
        return {**metrics, **({"eval/act": act} if act is not None else {})}

    def checkpoint(self, tag: str, iteration: int | None = None) -> Path:
        """The policy as users load it (checkpoints/<tag>); with `iteration`, also everything exact
        resume needs (rlft.control.resume.save_checkpoint)."""
        def state_and_batch():  # asked for once the learner ranks wrote their state
            ahead = self.ahead.finished() if self.ahead is not None else []  # before the source's state is read
            return self.resume_state(iteration), ahead

        return save_checkpoint(self.run_dir, self.learners, tag, self.cfg.train.keep_checkpoints,
                               state_and_batch if iteration is not None else None, self.companion_groups())

    def companion_groups(self) -> dict[str, runtime.RoleGroup]:
        """The algorithm's companion learner groups by kind (spec.companions; a critic)."""
        return {companion.kind: self.roles[companion.kind] for companion in self.spec.companions}

    def resume_state(self, iteration: int) -> dict[str, Any]:
        """What the loop needs to continue after `iteration`: state.json of a step checkpoint."""
        return {"iteration": iteration, "step": self.optimizer_steps_taken, "policy_version": self.policy_version,
                "samples_seen": self.samples_seen, "source": self.source.state(), "start_eval": self.start_eval,
                "initial": self.initial, "skipped_steps": self.skipped_steps,
                "wandb_id": self.tracker.wandb_id if self.tracker else None}

    def restore(self, point: ResumePoint) -> None:
        """Continue from a step checkpoint: the freshly started roles get its state (the generators its
        policy), the loop its counters and the batches generated ahead, if any."""
        restore_roles(point, self.learners, self.source, self.sync, self.companion_groups())
        state = point.state
        self.optimizer_steps_taken, self.samples_seen = state["step"], state["samples_seen"]
        self.start_eval, self.initial, self.skipped_steps = state["start_eval"], state["initial"], state["skipped_steps"]
        if point.batches_ahead:  # generated ahead before the stop: trained on next, as they would have been
            if self.ahead is None:
                raise ValueError(f"{point.checkpoint} holds {len(point.batches_ahead)} batches generated ahead, and "
                                 "this run has rollout.max_staleness=0; resume with the stopped run's max_staleness")
            self.ahead.restore(state["iteration"] + 1, point.batches_ahead)

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        try:
            with self.stop:
                self.setup()
                return self.loop()
        except RunStopped as stopped:
            log.warning("%s", stopped)  # the run folder says why it stopped and how to continue
            raise
        except RunFinished:
            raise
        except Exception as err:
            failed = explain_fault(err, self.cfg, self.roles, self.run_dir)
            # a member that raised or died: its log file and last lines (runtime.log_level quiet)
            note_member_output(err, self.roles, target=failed)
            if self._log_handler is not None:  # the run folder keeps why it stopped (the console shows the error)
                self._log_handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                                        f"run stopped by an error{f': {failed}' if failed else ''}",
                                                        None, sys.exc_info()))
            if failed is not None:
                raise failed from err
            raise
        finally:
            self.close()

    def loop(self) -> dict[str, Any]:
        cfg = self.cfg
        per_iteration = self.spec.optimizer_steps(cfg)
        iterations = cfg.train.steps // per_iteration
        start = time.time()
        first = self.resumed.state["iteration"] + 1 if self.resumed else 1
        if self.resumed is None:
            self.initial = self.recovery.recovering(self.evaluate, 0)
            if self.sync is not None and cfg.sync.parity_every:
                self.initial.update(self.sync.check_parity())
            self.tracker.log(self.initial, 0)
        initial = self.initial
        metrics: dict[str, float] = {}
        with progress_bar("train", iterations, self.show_progress) as advance:
            advance(first - 1)
            for it in range(first, iterations + 1):
                metrics = self.iteration(it, last=it == iterations)
                step = it * per_iteration
                if self.log_step(it, last=it == iterations) is not None:
                    self.tracker.log({**metrics, **self.memory()}, step)
                if due(cfg.train.eval_every, step, per_iteration) and it != iterations:
                    self.tracker.log(self.recovery.recovering(self.evaluate, step), step)
                saved = None
                if due(cfg.train.save_every, step, per_iteration) or (self.stop.requested and it != iterations):
                    saved = self.checkpoint(f"step_{step}", it)
                advance(1, loss=metrics.get("train/loss", float("nan")),  # none in a companion's warm-up
                        **({"reward": metrics["reward/mean"]} if "reward/mean" in metrics else {}))
                if self.stop.requested and saved is not None:
                    raise RunStopped(f"stopped by SIGTERM after step {step} of {iterations * per_iteration}; checkpoint "
                                     f"{saved}. Continue with: rlft train <recipe> [overrides] resume=auto")
        final_eval = self.recovery.recovering(self.evaluate, iterations * per_iteration)
        self.tracker.log(final_eval, iterations * per_iteration)
        final = self.checkpoint("final")
        seconds = time.time() - start
        modes = write_mode_report(self.run_dir, final_eval, initial)
        if modes is not None:
            log.info("eval by reasoning mode (%s):\n%s", self.run_dir / "modes.png", modes)
        summary = {
            "run_dir": str(self.run_dir), "steps": iterations * per_iteration, "iterations": iterations,
            "policy_version": self.policy_version, "train/loss": metrics.get("train/loss"),
            "eval/accuracy_start": initial.get("eval/accuracy"), "eval/accuracy": final_eval.get("eval/accuracy"),
            **({"reward/mean_last": metrics["reward/mean"]} if "reward/mean" in metrics else {}),
            "checkpoint": str(final), "seconds": round(seconds, 1), "samples_per_s": round(self.samples_seen / seconds, 2),
            "trainable_params": self.learner_info["trainable_params"], "learner_ranks": len(self.learners),
            **({"resumed_from": str(self.resumed.checkpoint)} if self.resumed else {}),
        }
        (self.run_dir / FINISHED).write_text(json.dumps(summary, indent=1))
        return summary

    def close(self) -> None:
        if self.ahead is not None:  # a batch still in generation ends before its roles do
            self.ahead.close()
        for kind in reversed(list(self.roles)):
            group = self.roles.pop(kind)
            try:
                group.call("close")
            except Exception as err:  # a dead member has nothing to close
                log.warning("closing the %s group: %s", kind, type(err).__name__)
            finally:
                group.shutdown()
        self.sync = None
        if self.tracker is not None:
            self.tracker.finish()
            self.tracker = None
            if self.cfg.tracking.plots:
                plot_run(self.run_dir)
        if self._owns_ray:
            runtime.stop(self.cfg.runtime.mode)
            self._owns_ray = False
        if self._log_handler is not None:
            detach_run_log(self._log_handler)
            self._log_handler = None


def train(cfg: RLFTConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run a recipe; returns its summary (a finished run's own, when resume=auto finds one)."""
    try:
        summary = Controller(cfg, show_progress).run()
    except RunFinished as done:
        log.warning("%s", done)
        summary = done.summary
    if show_progress:
        print_summary(summary)
    return summary
