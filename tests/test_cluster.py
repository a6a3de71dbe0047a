"""Cluster mode: shared storage, per-role resources, placement, the rendezvous on rank 0's node, and
job submission (launch/submit.sh) to a real Ray head started here."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rlft.cluster import resolve_storage, role_bundles
from rlft.errors import RunError
from rlft.runtime import check_fits, free_port, member_gpus
from tests.helpers import rl_config, tiny_config

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------- pure functions
def test_gpus_per_member_default_to_one_when_the_cluster_has_gpus():
    assert member_gpus(None, 0.0) == 0.0
    assert member_gpus(None, 8.0) == 1.0
    assert member_gpus(0.0, 8.0) == 0.0  # explicit values are kept
    assert member_gpus(0.25, 8.0) == 0.25
    assert member_gpus(2, 0.0) == 2.0


def test_role_bundles_carry_cpus_gpus_and_custom_resources(tmp_path):
    cfg = rl_config(tmp_path, "b", runtime={"mode": "cluster"}, learner={"count": 2, "resources": {"node_a": 1}},
                    generator={"count": 3, "cpus_per_actor": 2, "resources": {"node_b": 1}})
    on_gpus = role_bundles(cfg, ("learner", "generator", "reward"), cluster_gpus=4)
    assert on_gpus["learner"] == [{"CPU": 1.0, "GPU": 1.0, "node_a": 1}] * 2
    assert on_gpus["generator"] == [{"CPU": 2.0, "GPU": 1.0, "node_b": 1}] * 3
    assert on_gpus["reward"] == [{"CPU": 0.25}]
    on_cpus = role_bundles(cfg, ("learner",), cluster_gpus=0)
    assert on_cpus == {"learner": [{"CPU": 1.0, "node_a": 1}] * 2}
    with pytest.raises(RuntimeError, match="GPU: 5 needed, 4 in the cluster"):
        check_fits(on_gpus, {"CPU": 64, "GPU": 4, "node_a": 2, "node_b": 3})
    check_fits(on_gpus, {"CPU": 64, "GPU": 5, "node_a": 2, "node_b": 3})
    tp = rl_config(tmp_path, "tp", runtime={"mode": "cluster"}, generator={"count": 2, "tensor_parallel_size": 4})
    assert role_bundles(tp, ("generator",), cluster_gpus=8)["generator"] == [{"CPU": 4.0, "GPU": 4.0}] * 2  # one per engine


def test_cluster_mode_puts_runs_and_the_model_cache_on_shared_storage(tmp_path, monkeypatch):
    monkeypatch.delenv("RLFT_CACHE", raising=False)
    relative = tiny_config(tmp_path, "s", run={"output_dir": "runs"}, runtime={"mode": "cluster"},
                           warm_start={"recipe": "configs/sft_tiny_arith.yaml"})
    with pytest.raises(RunError, match="runtime.storage"):
        resolve_storage(relative)
    with pytest.raises(RunError, match="is relative"):
        resolve_storage(relative.model_copy(update={"runtime": relative.runtime.model_copy(update={"storage": "shared"})}))
    shared = tmp_path / "shared"
    cfg = resolve_storage(relative.model_copy(update={"runtime": relative.runtime.model_copy(
        update={"storage": str(shared), "ray_address": "10.0.0.1:6379"})}))
    assert cfg.run_dir == shared / "runs" / "s"
    assert cfg.model.cache_dir == str(shared / "cache")
    assert cfg.warm_start.overrides[-3:] == ["runtime.mode=cluster", "runtime.ray_address=10.0.0.1:6379",
                                             f"runtime.storage={shared}"]
    # an absolute output folder is taken as shared; local mode only makes the run folder absolute
    assert resolve_storage(tiny_config(tmp_path, "a", runtime={"mode": "cluster"})).run_dir == tmp_path / "runs" / "a"
    monkeypatch.chdir(tmp_path)
    local = resolve_storage(tiny_config(tmp_path, "l", run={"output_dir": "out"}, runtime={"mode": "local"}))
    assert local.run_dir == tmp_path / "out" / "l" and local.model.cache_dir is None


# ----------------------------------------------------------------- two nodes (ray.cluster_utils)
@pytest.mark.own_ray  # a two-node cluster of its own (ray.cluster_utils)
def test_roles_are_placed_by_their_resources_and_learners_meet_on_rank_0s_node(tmp_path):
    """Two Ray nodes with distinct custom resources: learner ranks spread over both, the generator on
    node_b, the reward actor on node_a; the rendezvous is on the node of learner rank 0."""
    from ray.cluster_utils import Cluster

    from rlft.control import train

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"node_a": 4}})
    try:
        node_b = cluster.add_node(num_cpus=2, resources={"node_b": 4})
        cluster.wait_for_nodes()
        head_id, b_id = cluster.head_node.node_id, node_b.node_id
        cfg = rl_config(tmp_path, "two_nodes", run={"output_dir": "runs"}, train={"steps": 1},
                        runtime={"mode": "cluster", "ray_address": cluster.address, "storage": str(tmp_path / "shared")},
                        learner={"count": 2, "placement": "STRICT_SPREAD"},
                        generator={"resources": {"node_b": 1}}, reward={"resources": {"node_a": 1}},
                        eval={"num_examples": 4})
        summary = train(cfg, show_progress=False)
    finally:
        cluster.shutdown()
    run_dir = tmp_path / "shared" / "runs" / "two_nodes"
    assert summary["run_dir"] == str(run_dir) and (run_dir / "checkpoints" / "final" / "adapter_config.json").is_file()
    assert (tmp_path / "shared" / "cache" / "models").is_dir()  # the model was built on shared storage
    placed = json.loads((run_dir / "placement.json").read_text())
    assert placed["mode"] == "cluster"
    assert {m["node_id"] for m in placed["learner"]} == {head_id, b_id}
    assert placed["rendezvous"]["node_id"] == placed["learner"][0]["node_id"]
    assert placed["rendezvous"]["addr"] == placed["learner"][0]["node_ip"]
    assert [m["node_id"] for m in placed["generator"]] == [b_id]
    assert [m["node_id"] for m in placed["reward"]] == [head_id]


# ----------------------------------------------------------------- ray job submit
def _start_head(temp_dir: str, env: dict) -> tuple[subprocess.Popen, int]:
    """`ray start --head --block` in its own process group: ending that process stops its cluster."""
    gcs, dashboard = free_port(), free_port()
    ports = [f"--port={gcs}", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
             f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}",
             f"--runtime-env-agent-port={free_port()}"]
    head = subprocess.Popen(
        [str(REPO / ".venv/bin/ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=4",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--temp-dir={temp_dir}", "--disable-usage-stats",
         *ports], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return head, dashboard


def _stop_head(head: subprocess.Popen) -> None:
    head.send_signal(signal.SIGTERM)  # ray start --block stops the processes it started
    try:
        head.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()


def _ray(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(REPO / ".venv/bin/ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def _job_status(job_id: str, env: dict, timeout: float = 300) -> str:
    """The job's final status line, lower-cased, once it succeeded, failed or stopped."""
    deadline = time.time() + timeout
    while True:
        found = _ray("job", "status", job_id, env=env)
        status = (found.stdout + found.stderr).lower()  # the CLI logs "job 'ID' succeeded" (or failed, stopped)
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            return status
        assert time.time() < deadline, f"job {job_id} still running after {timeout:g} s"
        time.sleep(3)


@pytest.mark.long
def test_submit_sh_runs_a_recipe_as_a_ray_job(tmp_path):
    """A head with token authentication (its own token, given to every client through the environment), a
    tiny GPPO recipe submitted with launch/submit.sh and followed with `ray job status`, stopped with
    `ray job stop` mid-run and continued with resume=auto to success."""
    temp_dir = tempfile.mkdtemp(prefix="rlft-ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}", "RAY_AUTH_MODE": "token",
           "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    head, dashboard = _start_head(temp_dir, env)
    env["RAY_ADDRESS"] = f"http://127.0.0.1:{dashboard}"
    storage = tmp_path / "shared"
    try:
        deadline = time.time() + 90
        while _ray("job", "list", env=env).returncode != 0:
            assert time.time() < deadline and head.poll() is None, "the Ray head's job server did not come up"
            time.sleep(2)
        without_token = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN"}
        assert _ray("job", "list", env={**without_token, "HOME": str(tmp_path)}).returncode != 0  # token auth is on
        # `ray job stop` sends SIGTERM and (submit.sh's RAY_JOB_STOP_WAIT_TIME_S) waits: the run writes a step
        # checkpoint and stops; the same submission with resume=auto continues from it. Long enough that the
        # stop lands mid-run (it is sent a few seconds after the second logged step), short enough that the
        # resumed job does not spend minutes finishing it.
        overrides = ["warm_start.recipe=null", "run.name=stopped", "train.steps=80", "train.batch_size=8",
                     "train.micro_batch_size=4", "train.eval_every=0", "rollout.mini_batches=1", "algorithm.group_size=4", "peft.r=4",
                     "learner.count=1", "generator.count=1", "generator.kv_cache_mb=64", "rollout.max_new_tokens=16",
                     "eval.num_examples=4", "eval.max_new_tokens=16", "tracking.wandb=disabled", "tracking.plots=false"]
        submit = {**env, "RLFT_STORAGE": str(storage), "RLFT_PYTHON": sys.executable}
        out = subprocess.run(["bash", "launch/submit.sh", "configs/gppo_tiny_arith.yaml", *overrides], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={**submit, "RLFT_JOB_ID": "rlft-stopped"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "ray job logs -f rlft-stopped" in out.stdout and "ray job stop rlft-stopped" in out.stdout
        metrics = storage / "runs" / "stopped" / "metrics.jsonl"
        deadline = time.time() + 300
        while not (metrics.is_file() and sum('"train/loss"' in line for line in metrics.read_text().splitlines()) >= 2):
            assert time.time() < deadline, "the job logged no steps in 5 min: " + _job_status("rlft-stopped", env)[-4000:]
            time.sleep(1)
        assert _ray("job", "stop", "rlft-stopped", env=env, timeout=400).returncode == 0
        assert "stopped" in _job_status("rlft-stopped", env)
        stopped = storage / "runs" / "stopped"
        checkpoints = [c for c in (stopped / "checkpoints").glob("step_*") if (c / "COMPLETE").is_file()]
        assert len(checkpoints) == 1 and "stopped by SIGTERM" in (stopped / "train.log").read_text()
        out = subprocess.run(["bash", "launch/submit.sh", "configs/gppo_tiny_arith.yaml", *overrides, "resume=auto",
                              ], cwd=REPO, capture_output=True, text=True, timeout=120,
                             env={**submit, "RLFT_JOB_ID": "rlft-resumed"})
        assert out.returncode == 0, out.stdout + out.stderr
        assert "succeeded" in _job_status("rlft-resumed", env, timeout=600)
        finished = json.loads((stopped / "finished.json").read_text())
        assert finished["resumed_from"] == str(checkpoints[0]) and finished["steps"] == 80
    finally:
        _stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)
    stopped_at = int(checkpoints[0].name.split("_")[1])
    assert 2 <= stopped_at < 80  # mid-run
    rows = [json.loads(line) for line in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r][-1] == 80
    assert (stopped / "checkpoints" / "final" / "adapter_config.json").is_file()
    assert json.loads((stopped / "placement.json").read_text())["mode"] == "cluster"
