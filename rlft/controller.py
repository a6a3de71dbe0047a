"""The controller: the only code that knows the order of calls (DESIGN section 1).

It creates the roles through rlft.runtime, feeds the learner group step by step, evaluates,
checkpoints and logs. It holds no model weights (only a tokenizer).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

from rlft import runtime
from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import StepCounts
from rlft.config import RLFTConfig, dump_config
from rlft.data.collate import encode_sft, pad_rows, shard_micro_batches, uses_chat_template
from rlft.data.models import resolve_model
from rlft.data.sampler import EpochSampler
from rlft.data.tasks import Example, build_task
from rlft.evaluate import score_greedy
from rlft.progress import progress_bar, print_summary
from rlft.roles.learner import LearnerActor
from rlft.tracking import Tracker, plot_run

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, cfg: RLFTConfig, show_progress: bool = True):
        self.cfg = cfg
        self.show_progress = show_progress
        self.spec = ALGORITHMS[cfg.algorithm.name]
        self.run_dir = cfg.run_dir
        self.learners: runtime.RoleGroup | None = None

    # ----------------------------------------------------------------- set-up
    def _prepare_run_dir(self) -> None:
        if self.run_dir.exists() and any(self.run_dir.iterdir()) and not self.cfg.run.overwrite:
            raise FileExistsError(f"{self.run_dir} exists; set run.overwrite=true or pick another run.name")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        (self.run_dir / "config.yaml").write_text(dump_config(self.cfg))
        handler = logging.FileHandler(self.run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.getLogger("rlft").addHandler(handler)
        self._log_handler = handler
        logging.getLogger("rlft").setLevel(logging.INFO)

    def _warm_start(self) -> Path | None:
        """Run (or reuse) the warm-start SFT recipe; its full checkpoint becomes the base model."""
        from rlft.config import load_config

        ws = self.cfg.warm_start
        if ws.recipe is None:
            return None
        overrides = [*ws.overrides, f"run.output_dir={self.cfg.run.output_dir}"]
        sub = load_config(ws.recipe, overrides)
        if sub.peft.method != "full":
            raise ValueError(f"warm_start.recipe {ws.recipe}: needs peft.method=full to produce a base model")
        final = sub.run_dir / "checkpoints" / "final"
        stamp = {"recipe": Path(ws.recipe).read_text(), "overrides": overrides}
        marker = sub.run_dir / "warm_start.json"
        if ws.reuse and (final / "config.json").is_file() and marker.is_file() and json.loads(marker.read_text()) == stamp:
            log.info("reusing warm start %s", final)
            return final
        log.info("warm start: running %s", ws.recipe)
        train(sub, show_progress=self.show_progress)
        marker.write_text(json.dumps(stamp))
        return final

    def required_cpus(self) -> float:
        return self.cfg.learner.count * self.cfg.learner.cpus_per_rank

    def setup(self) -> None:
        from transformers import AutoTokenizer

        cfg = self.cfg
        warm = self._warm_start()
        self._prepare_run_dir()
        self.model_path = warm or resolve_model(cfg.model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        self.chat = uses_chat_template(self.tokenizer, cfg.data.chat_template)
        self.task = build_task(cfg.task)
        self.train_examples = self.task.split("train")
        self.eval_examples = self.task.split("eval")[: cfg.eval.num_examples]
        self.tracker = Tracker(self.run_dir, cfg.run.name, cfg.model_dump(mode="json"), cfg.tracking.wandb, cfg.tracking.project)
        num_cpus = cfg.runtime.num_cpus or max(os.cpu_count() or 1, math.ceil(self.required_cpus()))
        runtime.start(cfg.runtime.mode, address=cfg.runtime.ray_address, num_cpus=num_cpus)
        self.learners = self._start_learners()

    def _start_learners(self) -> runtime.RoleGroup:
        cfg = self.cfg
        mode = cfg.runtime.mode
        ranks = runtime.collective_group_size(mode, cfg.learner.count)
        grad_accum = cfg.train.batch_size // (ranks * cfg.train.micro_batch_size)
        addr, port = runtime.node_address(mode), runtime.free_port()
        threads = None if mode == "inline" else (cfg.learner.threads_per_rank or max(1, int(cfg.learner.cpus_per_rank)))
        args = [
            (cfg, str(self.model_path), rank, ranks, addr, port, grad_accum, threads, str(self.run_dir))
            for rank in range(ranks)
        ]
        group = runtime.RoleGroup.create(
            LearnerActor, mode, args, num_cpus=cfg.learner.cpus_per_rank, num_gpus=cfg.learner.gpus_per_rank, name="learner"
        )
        info = group.call("setup")
        log.info("learner group ready: %s", info[0])
        self.learner_info = info[0]
        return group

    # ----------------------------------------------------------------- steps
    def _sft_rows(self, examples: list[Example]) -> list[dict[str, list[int]]]:
        rows = []
        for ex in examples:
            if ex.response is None:
                raise ValueError(f"task {self.task.name!r} has no reference responses; SFT needs them")
            rows.append(encode_sft(self.tokenizer, ex.prompt, ex.response, self.cfg.train.max_length, self.chat))
        return rows

    def pad_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def learner_step(self, rows: list[dict], pad: Callable[[list[dict], int], dict]) -> dict[str, float]:
        """Split rows over ranks and micro-batches, pad them, and run one optimizer step.

        The step-global token and sequence counts are computed here, once, for every rank.
        """
        shards = shard_micro_batches(rows, len(self.learners), self.cfg.train.micro_batch_size)
        batches = [[pad(mb, self.pad_id()) for mb in shard] for shard in shards]
        counts = [self.spec.count_tokens(mb) for shard in batches for mb in shard]
        step = StepCounts(num_tokens=sum(c[0] for c in counts), num_sequences=sum(c[1] for c in counts))
        results = self.learners.call_each("train_step", [(shard, step) for shard in batches])
        merged = {k: sum(r[k] for r in results) for k in results[0] if k not in ("grad_norm", "lr")}
        merged["grad_norm"], merged["lr"], merged["tokens"] = results[0]["grad_norm"], results[0]["lr"], step.num_tokens
        return merged

    def train_step(self, examples: list[Example]) -> dict[str, float]:
        """Tokenise examples and run one SFT optimizer step."""
        return self.learner_step(self._sft_rows(examples), pad_rows)

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy completions (learner rank 0) on held-out examples, scored by the task's checker."""
        cfg = self.cfg.eval
        if not self.eval_examples:
            return {}
        scores = score_greedy(
            self.task, self.tokenizer, self.eval_examples, self.chat, cfg,
            lambda chunk: self.learners.call_one(0, "generate", chunk, cfg.max_new_tokens, cfg.batch_size),
            description=f"eval @ step {step}", show_progress=self.show_progress,
        )
        return {"eval/accuracy": sum(scores) / len(scores), "eval/examples": float(len(scores))}

    def checkpoint(self, tag: str) -> Path:
        out = self.run_dir / "checkpoints" / tag
        self.learners.call("save", str(out))
        return out

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        loop = self.loops().get(self.spec.data_kind)
        if loop is None:
            raise NotImplementedError(
                f"algorithm {self.spec.name!r} trains on {self.spec.data_kind!r}; this controller has no loop for it yet"
            )
        self.setup()
        try:
            return loop()
        finally:
            self.close()

    def loops(self) -> dict:
        return {"sft": self._run_sft}

    def _run_sft(self) -> dict[str, Any]:
        cfg = self.cfg
        sampler = EpochSampler(len(self.train_examples), cfg.run.seed)
        start = time.time()
        metrics: dict[str, float] = {}
        with progress_bar("train", cfg.train.steps, self.show_progress) as advance:
            for step in range(1, cfg.train.steps + 1):
                t0 = time.time()
                out = self.train_step(sampler.next_batch(self.train_examples, cfg.train.batch_size))
                seconds = time.time() - t0
                metrics = {
                    "train/loss": out["loss"], "train/grad_norm": out["grad_norm"], "train/lr": out["lr"],
                    "perf/step_seconds": seconds, "perf/train_tokens_per_s": out["tokens"] / seconds,
                }
                if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                    self.tracker.log(metrics, step)
                if cfg.train.eval_every and step % cfg.train.eval_every == 0 and step != cfg.train.steps:
                    self.tracker.log(self.evaluate(step), step)
                if cfg.train.save_every and step % cfg.train.save_every == 0:
                    self.checkpoint(f"step_{step}")
                advance(1, loss=out["loss"])
        eval_metrics = self.evaluate(cfg.train.steps)
        self.tracker.log(eval_metrics, cfg.train.steps)
        final = self.checkpoint("final")
        summary = {
            "run_dir": str(self.run_dir), "steps": cfg.train.steps, "train/loss": metrics.get("train/loss"),
            **eval_metrics, "checkpoint": str(final), "seconds": round(time.time() - start, 1),
            "trainable_params": self.learner_info["trainable_params"], "learner_ranks": len(self.learners),
        }
        return summary

    def close(self) -> None:
        if self.learners is not None:
            try:
                self.learners.call("close")
            finally:
                self.learners.shutdown()
                self.learners = None
        if hasattr(self, "tracker"):
            self.tracker.finish()
            if self.cfg.tracking.plots:
                plot_run(self.run_dir)
        runtime.stop(self.cfg.runtime.mode)
        if getattr(self, "_log_handler", None) is not None:
            logging.getLogger("rlft").removeHandler(self._log_handler)
            self._log_handler.close()
            self._log_handler = None


def train(cfg: RLFTConfig, show_progress: bool = True) -> dict[str, Any]:
    from rlft.rl_controller import RLController

    controller_cls = RLController if ALGORITHMS[cfg.algorithm.name].data_kind == "rollouts" else Controller
    summary = controller_cls(cfg, show_progress).run()
    if show_progress:
        print_summary(summary)
    return summary
