"""The one controller with fake roles, in one process: call order, versions, sync failures, and an
algorithm defined entirely in this file (REINFORCE with a mean baseline).

The fake learner is a bigram policy that really runs the registered algorithm's loss; the fake
generator samples fixed token patterns; the fake reward scores by completion length.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Literal

import pytest
import torch

from rlft.algorithms import ALGORITHMS
from rlft.algorithms.base import AlgorithmSpec, Companion, RowContext
from rlft.control import Controller, train
from rlft.ops.logprobs import token_logprobs
from rlft.roles import ROLES
from rlft.rollouts import pad_rollout_rows, rollout_row
from rlft.samples import choose, read_samples
from rlft.schema import Section
from rlft.sync.protocol import SyncError
from rlft.types import Rollout, Score
from tests.helpers import tiny_config

CALLS: list[tuple[str, str]] = []
VOCAB = 128


@dataclass(frozen=True)
class FakePayload:
    version: int
    fingerprint: str
    kind: str = "fake"
    num_bytes: int = 3


class FakeLearner:
    kind = "learner"  # what CALLS records (FakeCritic: a companion group of the same ranks)

    def __init__(self, cfg, spec, rank, world_size, model_path, master_addr, master_port, grad_accum,
                 num_threads=None):
        self.cfg, self.spec, self.rank = cfg, spec, rank
        self.table = torch.nn.Parameter(torch.zeros(VOCAB, VOCAB))  # bigram logits: next token | token
        self.batches: list[dict] = []
        FakeLearner.last = self

    def logits(self, batch):
        return self.table[batch["input_ids"]]

    def reference_logits(self, batch):
        return torch.zeros(*batch["input_ids"].shape, VOCAB)

    def setup(self):
        CALLS.append((self.kind, "setup"))
        return {"trainable_params": self.table.numel()}

    def train_step(self, micro_batches, counts):
        CALLS.append((self.kind, "train_step"))
        totals = {"loss": 0.0}
        for batch in micro_batches:
            self.batches.append(batch)
            loss, metrics = self.spec.micro_batch_loss(self, batch, self.cfg.algorithm, counts)
            loss.backward()
            totals["loss"] += float(loss.detach())
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value
        with torch.no_grad():
            totals["grad_norm"] = float(self.table.grad.norm())
            self.table -= self.cfg.train.lr * self.table.grad
            self.table.grad = None
        return {**totals, "lr": self.cfg.train.lr}

    def export_weights(self, version, everything=False):
        CALLS.append(("learner", "export_weights"))
        self.exported = FakePayload(version, fingerprint=f"fp-{version}")
        return self.exported

    def last_export(self):
        return asdict(self.exported)

    def probe_logprobs(self, probe):
        CALLS.append(("learner", "probe_logprobs"))
        return torch.zeros(probe["input_ids"].shape[1] - 1)

    def save(self, out_dir):
        CALLS.append((self.kind, "save"))

    def proximal_logprobs(self, micro_batches):
        CALLS.append((self.kind, "proximal_logprobs"))
        return [self.spec.proximal_logprobs(self, b, self.cfg.algorithm) for b in micro_batches]

    def save_state(self, folder):
        CALLS.append((self.kind, "save_state"))

    def close(self):
        CALLS.append((self.kind, "close"))


class FakeGenerator:
    corrupt = False  # True: report a fingerprint other than the one sent

    def __init__(self, cfg, index, model_path, dtype, lora_rank, seed, cpu_bind=None):
        self.index, self.version = index, 0

    def setup(self):
        CALLS.append(("generator", "setup"))
        return {}

    def generate(self, prompts, n, max_new_tokens, temperature, top_p, seed):
        CALLS.append(("generator", "generate"))
        # Sample j of every prompt has j + 1 tokens, so rewards differ inside a group.
        return [[{"completion_ids": [10 + j] * (j + 1), "logprobs": [-1.0] * (j + 1), "text": "A: 0",
                  "finish_reason": "stop", "version": self.version} for j in range(n)] for _ in prompts]

    def load_weights(self, payload):
        CALLS.append(("generator", "load_weights"))
        self.version = payload.version
        return "tampered" if FakeGenerator.corrupt else payload.fingerprint

    def probe_logprobs(self, probe):
        CALLS.append(("generator", "probe_logprobs"))
        return [0.0] * (probe["input_ids"].shape[1] - 1)

    def close(self):
        CALLS.append(("generator", "close"))


class FakeReward:
    def __init__(self, cfg, index):
        pass

    def setup(self):
        CALLS.append(("reward", "setup"))
        return {}

    def score(self, rollouts):
        CALLS.append(("reward", "score"))
        return [Score(reward=float(len(r.completion_ids) % 2), correct=len(r.completion_ids) == 1,
                      components={"length_parity": float(len(r.completion_ids) % 2)}) for r in rollouts]

    def close(self):
        CALLS.append(("reward", "close"))


# ---- a new algorithm, defined and registered here: REINFORCE with a per-group mean baseline -----

class ReinforceConfig(Section):
    name: Literal["reinforce"] = "reinforce"
    group_size: int = 4


def reinforce_loss(model, batch, cfg, counts):
    """L = -(1/N) sum_{i,t} (r_i - mean_group(r)) log pi(y_it), N = the step's response tokens."""
    logprobs, mask = token_logprobs(model.logits(batch), batch["labels"])
    loss = -(batch["advantages"] * logprobs * mask).sum() / counts.num_tokens
    return loss, {"tokens": float(mask.sum()), "logprob_sum": float((logprobs * mask).sum().detach())}


def reinforce_rows(rollouts: list[Rollout], ctx: RowContext):
    groups: dict[int, list[float]] = {}
    for r in rollouts:
        groups.setdefault(r.group, []).append(r.reward)
    baseline = {g: sum(v) / len(v) for g, v in groups.items()}
    return [rollout_row(r, r.reward - baseline[r.group], 0.0, ctx.max_length) for r in rollouts], {}


REINFORCE = AlgorithmSpec(
    name="reinforce", config_cls=ReinforceConfig, source="rollouts", roles=("generator", "reward"),
    micro_batch_loss=reinforce_loss, build_rows=reinforce_rows, pad=pad_rollout_rows,
    samples_per_prompt=lambda run_cfg: run_cfg.algorithm.group_size,
    log_metrics=lambda sums, steps: {"train/logprob": sums["logprob_sum"] / sums["tokens"]},
)


# ---- the same with a companion learner group (a critic) and a warm-up without policy steps ------------

class FakeCritic(FakeLearner):
    kind = "critic"


class CriticConfig(ReinforceConfig):
    name: Literal["reinforce_critic"] = "reinforce_critic"


def mean_value_scores(model, batch, cfg):
    """The companion's per-token score: 0.25 on every response position."""
    return 0.25 * (batch["labels"][:, 1:] != -100).float()


def baseline_from_values(rows, ctx):
    """Advantage = minus the companion's score on each position (a stand-in for GAE)."""
    return [{**row, "advantages": [-v for v in row["values"]]} for row in rows], {"train/scored_rows": float(len(rows))}


def companion_loss(model, batch, cfg, counts):
    CALLS.append(("critic", "loss"))
    return reinforce_loss(model, batch, cfg, counts)


COMPANION_SPEC = AlgorithmSpec(name="fake_critic", config_cls=CriticConfig, source="rollouts",
                               micro_batch_loss=companion_loss, build_rows=reinforce_rows, pad=pad_rollout_rows,
                               proximal_logprobs=mean_value_scores)
WITH_CRITIC = AlgorithmSpec(
    name="reinforce_critic", config_cls=CriticConfig, source="rollouts", roles=("generator", "reward", "critic"),
    micro_batch_loss=reinforce_loss, build_rows=reinforce_rows, pad=pad_rollout_rows,
    samples_per_prompt=lambda run_cfg: run_cfg.algorithm.group_size,
    companions=(Companion("critic", COMPANION_SPEC, run_config=lambda cfg: cfg, annotate=baseline_from_values,
                          score_key="values"),),
    trains_policy=lambda run_cfg, iteration: iteration > 1,
)


@pytest.fixture(autouse=True)
def fakes():
    for kind, cls in (("learner", FakeLearner), ("generator", FakeGenerator), ("reward", FakeReward),
                      ("critic", FakeCritic)):
        ROLES[kind].register("fake", cls, replace=True)
    ALGORITHMS.register("reinforce", REINFORCE, replace=True)
    ALGORITHMS.register("reinforce_critic", WITH_CRITIC, replace=True)
    CALLS.clear()
    FakeGenerator.corrupt = False
    yield
    for kind in ROLES:
        ROLES[kind].unregister("fake")
    ALGORITHMS.unregister("reinforce")
    ALGORITHMS.unregister("reinforce_critic")


def _config(tmp_path, name="fake", **over):
    sections = dict(
        runtime={"roles": {"learner": "fake", "generator": "fake", "reward": "fake"}},
        algorithm={"name": "reinforce"}, peft={"method": "lora", "r": 4}, generator={"count": 1},
        train={"steps": 3, "batch_size": 8, "micro_batch_size": 4, "lr": 0.5},
        task={"name": "arith", "train_size": 64, "eval_size": 4}, eval={"num_examples": 4},
    )
    for key, values in over.items():
        name_key = {"task": "name", "algorithm": "name", "peft": "method"}.get(key)
        replaced = name_key is not None and values.get(name_key) not in (None, sections[key][name_key])
        sections[key] = dict(values) if replaced else {**sections.get(key, {}), **values}
    return tiny_config(tmp_path, name, **sections)


ITERATION = [("generator", "generate"), ("reward", "score"), ("learner", "train_step"),
             ("learner", "export_weights"), ("generator", "load_weights"),
             ("learner", "probe_logprobs"), ("generator", "probe_logprobs")]
EVAL = [("generator", "generate"), ("reward", "score")]


def test_new_algorithm_runs_in_the_controller_with_fake_roles_in_call_order(tmp_path):
    started = time.perf_counter()
    summary = train(_config(tmp_path), show_progress=False)
    seconds = time.perf_counter() - started
    setup = [("learner", "setup"), ("generator", "setup"), ("reward", "setup")]
    start = EVAL + [("learner", "probe_logprobs"), ("generator", "probe_logprobs")]
    end = EVAL + [("learner", "save"), ("reward", "close"), ("generator", "close"), ("learner", "close")]
    assert CALLS == setup + start + ITERATION * 3 + end
    assert summary["policy_version"] == 3 and summary["iterations"] == 3
    rows = [json.loads(line) for line in (tmp_path / "runs" / "fake" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/loss" in r]
    assert [r["sync/version"] for r in trained] == [1.0, 2.0, 3.0]
    assert all(r["rollout/staleness"] == 0.0 for r in trained)  # each batch sampled by the latest version
    assert all("train/logprob" in r and "reward/length_parity" in r for r in trained)
    # train.log_samples (4) of each logged step's 8 rollouts, chosen by the seed and the step (rlft.samples)
    samples = read_samples(tmp_path / "runs" / "fake")
    assert [(r["step"], r["index"]) for r in samples] == [(s, i) for s in (1, 2, 3) for i in choose(4, 8, 0, s)]
    assert all(r["version"] == r["learner_version"] == r["step"] - 1 and r["staleness"] == 0 for r in samples)
    assert all(r["completion"] == "A: 0" and r["prompt"] and "length_parity" in r["rewards"] for r in samples)
    print(f"controller run with fake roles: {seconds:.2f} s")


def test_a_companion_group_scores_rows_before_the_learners_and_steps_after_them(tmp_path):
    """spec.companions: the critic group is started after the algorithm's other roles, scores every
    iteration's rows before any step (its scores reach the learners' rows through `annotate`), and takes
    its own step after the learners'; spec.trains_policy keeps the learners still in iteration 1 (the
    loop's step count goes on); checkpoints hold the critic's model and state."""
    cfg = _config(tmp_path, runtime={"roles": {"learner": "fake", "generator": "fake", "reward": "fake",
                                               "critic": "fake"}},
                  algorithm={"name": "reinforce_critic"}, train={"save_every": 2})
    summary = train(cfg, show_progress=False)
    assert summary["policy_version"] == 3
    setup = [("learner", "setup"), ("generator", "setup"), ("reward", "setup"), ("critic", "setup")]
    assert CALLS[:4] == setup
    publish = [("learner", "export_weights"), ("generator", "load_weights"), ("learner", "probe_logprobs"),
               ("generator", "probe_logprobs")]
    scored = [("generator", "generate"), ("reward", "score"), ("critic", "proximal_logprobs")]
    critic_step = [("critic", "train_step"), ("critic", "loss"), ("critic", "loss")]
    first = scored + critic_step + publish
    later = scored + [("learner", "train_step")] + critic_step + publish
    body = CALLS[4 + len(EVAL) + 2:]
    assert body[:len(first)] == first and body[len(first):len(first) + len(later)] == later
    checkpoint = [("learner", "save"), ("critic", "save"), ("learner", "save_state"), ("critic", "save_state")]
    assert body[len(first) + len(later):len(first) + 2 * len(later) + len(checkpoint)] == checkpoint + later
    rows = [json.loads(line) for line in (tmp_path / "runs" / "fake" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "critic/loss" in r]
    assert [r["step"] for r in trained] == [1, 2, 3] and "train/loss" not in trained[0]
    assert all("train/loss" in r for r in trained[1:]) and all(r["train/scored_rows"] == 8.0 for r in trained)
    batch = FakeLearner.last.batches[-1]  # the critic's last micro-batch: the learners' rows, with the scores
    mask = batch["labels"][:, 1:] != -100
    assert torch.all(batch["advantages"][mask] == -0.25)


def test_reinforce_rows_carry_mean_baseline_advantages_and_the_update_follows_them(tmp_path):
    """Samples of lengths 1..4 score [1, 0, 1, 0]: advantages [.5, -.5, .5, -.5] in every group, and
    the bigram policy moves toward the rewarded (odd-length) samples."""
    train(_config(tmp_path, train={"steps": 1}), show_progress=False)
    learner = FakeLearner.last
    batches = learner.batches
    assert len(batches) == 2  # 8 rows in micro-batches of 4
    for batch in batches:
        per_row = [float(a[a != 0][0]) for a in batch["advantages"]]
        assert per_row == [0.5, -0.5, 0.5, -0.5]
    # Token 10 after token 10 appears in rewarded and penalised samples alike; EOS-free samples of
    # length 1 (rewarded) end right after the prompt, so the logit of 10 after the prompt's last token rises.
    assert learner.table.detach().abs().sum() > 0


def test_wrong_fingerprint_from_a_generator_stops_the_run(tmp_path):
    FakeGenerator.corrupt = True
    with pytest.raises(SyncError, match="generator 0 loaded fake weights version 1 with fingerprint tampered"):
        train(_config(tmp_path), show_progress=False)
    assert CALLS.count(("learner", "train_step")) == 1  # nothing trained after the failed sync
    assert {("learner", "close"), ("generator", "close"), ("reward", "close")} <= set(CALLS)
    log = next((tmp_path / "runs").glob("*/train.log")).read_text()  # the run folder says why it stopped
    assert "run stopped by an error" in log and "SyncError: generator 0 loaded fake weights" in log


def test_a_run_folder_is_never_destroyed_by_default(tmp_path):
    first = train(_config(tmp_path, "same"), show_progress=False)
    metrics = (tmp_path / "runs" / "same" / "metrics.jsonl").read_text()
    second = train(_config(tmp_path, "same"), show_progress=False)
    assert first["run_dir"].endswith("same") and second["run_dir"].endswith("same-2")
    assert (tmp_path / "runs" / "same" / "metrics.jsonl").read_text() == metrics
    with pytest.raises(FileExistsError, match="run.if_exists"):
        Controller(_config(tmp_path, "same", run={"if_exists": "error"}), show_progress=False).run()


def test_prompt_too_long_names_the_file_line_before_any_role_starts(tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("\n".join(json.dumps({"prompt": p, "response": "ok"}) for p in ["short", "x" * 80, "fine"]) + "\n")
    cfg = _config(tmp_path, task={"name": "jsonl", "path": str(rows), "eval_fraction": 0.0}, algorithm={"name": "sft"},
                  peft={"method": "full"}, train={"steps": 1, "batch_size": 4, "micro_batch_size": 4})
    with pytest.raises(ValueError, match=r"rows.jsonl:2\): prompt of 80 tokens \+ 1 more does not fit train.max_length \(64\)"):
        Controller(cfg, show_progress=False).run()
    assert CALLS == []


def test_each_source_says_how_many_tokens_a_training_prompt_must_leave_room_for():
    """The prompt-length check (rlft.data.lengths) adds the source's `sampled_tokens`: every token the
    rollout source may sample, one response token for every other source (rows are cut to train.max_length)."""
    from types import SimpleNamespace

    from rlft.sources import SOURCES

    cfg = SimpleNamespace(rollout=SimpleNamespace(max_new_tokens=9))
    assert {name: SOURCES[name].sampled_tokens(cfg) for name in SOURCES.names()} == {
        "dataset": 1, "rollouts": 9, "pairs": 1, "reward_pairs": 1, "lists": 1, "trees": 1, "sampling": 1, "episodes": 1,
        "teacher_rollouts": 9}


def test_import_config_loads_no_heavy_dependency():
    code = ("import sys, rlft.config; "
            "print([m for m in ('torch', 'transformers', 'vllm', 'deepspeed', 'ray') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_learner_threads_auto_takes_the_idle_cores_only_in_a_local_synchronous_loop():
    from rlft.config import LearnerConfig
    from rlft.control.startup import learner_threads

    auto, default = LearnerConfig(threads_per_rank="auto", cpus_per_rank=1), LearnerConfig(cpus_per_rank=1)
    assert learner_threads(auto, "local", synchronous=True, cores=2, ranks=1) == 2
    assert learner_threads(auto, "local", synchronous=True, cores=8, ranks=2) == 4
    assert learner_threads(auto, "local", synchronous=True, cores=2, ranks=4) == 1
    assert learner_threads(auto, "local", synchronous=False, cores=8, ranks=1) == 1   # the engine generates meanwhile
    assert learner_threads(auto, "cluster", synchronous=True, cores=8, ranks=1) == 1  # the node is not ours alone
    assert learner_threads(default, "local", synchronous=True, cores=8, ranks=1) == 1
    assert learner_threads(LearnerConfig(threads_per_rank=3), "local", synchronous=True, cores=8, ranks=1) == 3
    assert learner_threads(auto, "inline", synchronous=True, cores=8, ranks=1) is None
    with pytest.raises(ValueError):
        LearnerConfig(threads_per_rank=0)


def test_run_modes_answer_what_each_mode_means_and_refuse_unknown_names():
    from rlft import run_modes

    table = {mode: (run_modes.one_process(mode), run_modes.uses_ray(mode), run_modes.on_this_machine(mode))
             for mode in run_modes.MODES}
    assert table == {"inline": (True, False, True), "local": (False, True, True), "cluster": (False, True, False)}
    with pytest.raises(ValueError, match="unknown runtime mode 'locl'"):
        run_modes.uses_ray("locl")


def test_every_role_kind_has_a_starter():
    """The set-up starts each kind through rlft.control.startup.STARTERS: every kind an algorithm
    names needs one (learners first, then the algorithm's kinds in their order)."""
    from rlft.control.startup import STARTERS

    assert list(STARTERS) == list(ROLES) == ["learner", "generator", "reward", "environment", "teacher", "critic"]
    assert all(kind in STARTERS for name in ALGORITHMS.names() for kind in ALGORITHMS[name].roles)


def test_cpu_engines_get_even_shares_of_the_cores():
    from rlft.roles.generator import engine_cpu_bind

    assert [engine_cpu_bind(i, 1, 2) for i in range(1)] == ["0-1"]        # one engine: every core
    assert [engine_cpu_bind(i, 2, 2) for i in range(2)] == ["0", "1"]
    assert [engine_cpu_bind(i, 2, 8) for i in range(2)] == ["0-3", "4-7"]
    assert [engine_cpu_bind(i, 3, 8) for i in range(3)] == ["0-1", "2-3", "4-5"]  # 2 cores left for the rest
    assert [engine_cpu_bind(i, 3, 2) for i in range(3)] == ["0", "1", "0"]      # more engines than cores
    # tensor-parallel engines split their share among their workers ('|' between workers)
    assert engine_cpu_bind(0, 1, 2, tensor_parallel_size=2) == "0|1"
    assert [engine_cpu_bind(i, 2, 8, tensor_parallel_size=2) for i in range(2)] == ["0-1|2-3", "4-5|6-7"]
    assert engine_cpu_bind(1, 2, 2, tensor_parallel_size=2) == "1|1"  # one core for two workers: shared
