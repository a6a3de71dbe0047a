"""Memory per learner rank at ZeRO-2 and ZeRO-3: SmolLM2-135M full fine-tuning on 2 ranks.

    .venv/bin/python bench/zero3_memory.py          # ZeRO-2, ZeRO-3 at zero3_live_mb 128 and 32, 3 steps (~6 min, 2 cores)
    .venv/bin/python bench/zero3_memory.py --mmap-thresholds 0 1048576 --live-mb 128 \
        --json bench/results/zero3_memory_allocators.json   # glibc's allocator and the fixed threshold

For each stage, one local-mode learner group (Ray actors, 2 ranks, float32 on CPU) runs GPPO's learner step
(no generators: tests/helpers.py LEARNER_ONLY_GPPO) on fixed rows. After set-up each rank's resident size is
read with its peak so far (VmHWM: what loading the model and building DeepSpeed's engine held; at ZeRO-3 each
rank loads only its slices, rlft.roles.zero3.loading_partitioned) and the peak is reset (/proc/PID/clear_refs);
then --steps optimizer steps run, and each rank's new peak is what training held. Beside each measurement:
rlft.footprint's estimate of a rank. Prints a table; raw numbers to bench/results/zero3_memory.json.

ZeRO-3 runs at each --live-mb (learner.zero3_live_mb: what a rank holds gathered at once, and its reduce
bucket). The processes run with MALLOC_MMAP_THRESHOLD_ fixed at 1 MiB (--mmap-thresholds; 0: glibc's own):
by default glibc raises its mmap threshold after each large free (up to 32 MiB), so the tensors that ZeRO-3
gathers and releases every layer come from the heap, whose freed pages a process keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from recipe_runs import ROOT, write_results

MIB = 2**20


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(stage: int, live_mb: int | None, steps: int, mmap_threshold: int, out: Path) -> dict:
    """One learner group; mmap_threshold: glibc's MALLOC_MMAP_THRESHOLD_ in its processes (0: glibc's own)."""
    import os

    os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    if mmap_threshold:  # the Ray processes this controller starts inherit it
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)
    sys.path.insert(0, str(ROOT))
    from rlft.control import Controller
    from tests.helpers import rl_config, synthetic_rollout_rows

    cfg = rl_config(out, f"zero{stage}", model={"name": "smollm2-135m-instruct"},
                    algorithm={"name": "gppo_learner_only"}, peft={"method": "full"},
                    learner={"count": 2, "zero_stage": stage, **({"zero3_live_mb": live_mb} if live_mb else {})}, runtime={"mode": "local", "num_cpus": 4},
                    train={"steps": steps, "batch_size": 8, "micro_batch_size": 4, "max_length": 128, "lr": 1e-5})
    ctl = Controller(cfg, show_progress=False)
    try:
        started = time.perf_counter()
        ctl.setup()
        setup_s = time.perf_counter() - started
        pids = [w["pid"] for w in ctl.learners.where()]
        after_setup = [status_kb(pid, "VmRSS") / 1024 for pid in pids]
        setup_peak = [status_kb(pid, "VmHWM") / 1024 for pid in pids]
        for pid in pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        rows = synthetic_rollout_rows(ctl)
        step_s = []
        for _ in range(steps):
            started = time.perf_counter()
            ctl.optimize(rows)
            step_s.append(time.perf_counter() - started)
        peak = [status_kb(pid, "VmHWM") / 1024 for pid in pids]
        estimate = json.loads((ctl.run_dir / "memory_estimate.json").read_text())["learner"]
    finally:
        ctl.close()
    return {"zero_stage": stage, "zero3_live_mb": live_mb, "mmap_threshold": mmap_threshold, "rss_after_setup_mib": after_setup,
            "peak_setup_mib": setup_peak, "peak_training_mib": peak,
            "estimate_per_rank_mib": estimate["per_member_mib"], "setup_s": setup_s, "step_s": step_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--mmap-thresholds", type=int, nargs="+", default=[1 << 20])
    parser.add_argument("--live-mb", type=int, nargs="+", default=[128, 32])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "runs" / "zero3_memory")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "zero3_memory.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from rlft.algorithms import ALGORITHMS
    from tests.helpers import LEARNER_ONLY_GPPO

    ALGORITHMS.register(LEARNER_ONLY_GPPO.name, LEARNER_ONLY_GPPO, replace=True)
    rows = [measure(stage, live_mb, args.steps, threshold, args.out / time.strftime("%Y%m%d-%H%M%S"))
            for threshold in args.mmap_thresholds for stage in args.stages
            for live_mb in (args.live_mb if stage == 3 else [None])]
    print(f"\nSmolLM2-135M full fine-tuning, float32, 2 learner ranks, {args.steps} steps (MiB per rank)")
    print(f"{'mmap threshold':>15} {'ZeRO':>5} {'live MiB':>9} {'rank':>5} {'peak in set-up':>15} {'RSS after set-up':>17} "
          f"{'peak in training':>17} {'estimate':>9} {'s/step':>7}")
    for row in rows:
        for rank in range(2):
            threshold = f"{row['mmap_threshold'] >> 20} MiB" if row["mmap_threshold"] else "glibc's"
            live = row["zero3_live_mb"] or "-"
            print(f"{threshold:>15} {row['zero_stage']:>5} {live:>9} {rank:>5} {row['peak_setup_mib'][rank]:>15.0f} "
                  f"{row['rss_after_setup_mib'][rank]:>17.0f} "
                  f"{row['peak_training_mib'][rank]:>17.0f} {row['estimate_per_rank_mib']:>9.0f} "
                  f"{sum(row['step_s']) / len(row['step_s']):>7.1f}")
    print(f"wrote {write_results(args.json, {'steps': args.steps, 'model': 'smollm2-135m-instruct', 'runs': rows})}")


if __name__ == "__main__":
    main()
