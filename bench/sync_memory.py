"""Memory a merged weight sync costs each process: the payload sent whole or in buckets, vLLM's engine
in processes of its own or in the generator actor.

    .venv/bin/python bench/sync_memory.py                      # 92M-parameter model (368 MB in float32)
    .venv/bin/python bench/sync_memory.py --setups separate:0 separate:64 in_actor:64 --syncs 3

A local-mode run (Ray actors: one learner rank, one vLLM generator) on the embedded model family
made wide (hidden 768, 12 layers: 92M parameters), LoRA with `sync.weights: merged`, so every sync
ships the whole model. Each setup is `generator.engine_processes:sync.bucket_mb` (0: sent whole). After the roles start, each process's peak resident size is reset
(/proc/PID/clear_refs), then --syncs syncs run (`WeightSync.publish`: export, load, fingerprint check,
parity probe), and each process's new peak (VmHWM) less its size before the syncs is what the syncs
cost it. Ray's object store lives in the raylet's shared memory. Beside each measurement: the part
of rlft.footprint's estimate for that process. Raw numbers to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from recipe_runs import ROOT, write_results

PROCESSES = {"learner rank": "ray::LearnerActor", "generator actor": "ray::GeneratorActor",
             "engine core": "VLLM::EngineCore", "engine worker": "VLLM::Worker", "raylet (object store)": "raylet"}
ESTIMATED = {"learner rank": ("learner", "rank"), "generator actor": ("generator", "actor"),
             "engine core": ("generator", "engine core"), "engine worker": ("generator", "engine worker"),
             "raylet (object store)": ("controller", "driver")}
WIDE = {"hidden_size": 768, "intermediate_size": 2304, "num_layers": 12, "num_heads": 12}


def processes() -> dict[str, int]:
    """This run's processes by label: the Ray this process started, its actors and their vLLM processes
    are all its descendants (another run's are not)."""
    import psutil

    found = {}
    for proc in psutil.Process().children(recursive=True):
        try:
            text = " ".join(proc.cmdline()) or proc.name()
        except psutil.Error:
            continue
        for label, marker in PROCESSES.items():
            if marker in text and label not in found:
                found[label] = proc.pid
    return found


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(engine: str, bucket_mb: int | None, syncs: int, out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from rlft.config import config_from_dict
    from rlft.control import Controller

    name = f"{engine}_buckets_{bucket_mb or 'none'}"
    cfg = config_from_dict({
        "run": {"name": name, "output_dir": str(out), "if_exists": "overwrite"},
        "model": {"name": "tiny", "tiny": WIDE},
        "task": {"name": "arith", "digits": 2, "train_size": 64, "eval_size": 8},
        "algorithm": {"name": "gppo", "group_size": 2}, "peft": {"method": "lora", "r": 8},
        "learner": {"count": 1}, "generator": {"count": 1, "engine_processes": engine},
        "sync": {"weights": "merged", "bucket_mb": bucket_mb},
        "runtime": {"mode": "local", "memory_check": "warn"},
        "train": {"steps": 1, "batch_size": 4, "micro_batch_size": 4, "max_length": 64},
        "tracking": {"wandb": "disabled"},
        "eval": {"num_examples": 0}}, source="bench/sync_memory.py")
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        pids = processes()
        before = {label: status_kb(pid, "VmRSS") for label, pid in pids.items()}
        for pid in pids.values():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
        seconds = []
        for _ in range(syncs):
            started = time.perf_counter()
            metrics = ctl.sync.publish()
            seconds.append(time.perf_counter() - started)
        peak = {label: status_kb(pid, "VmHWM") for label, pid in pids.items()}
        estimate = json.loads((ctl.run_dir / "memory_estimate.json").read_text())
    finally:
        ctl.close()
    rows = {}
    for label in pids:
        role, process = ESTIMATED[label]
        parts = estimate[role]["processes"][process]
        payload_part = next((v for k, v in parts.items() if "sync payload" in k), 0)
        rows[label] = {"before_mb": before[label] / 1024, "peak_mb": peak[label] / 1024,
                       "sync_cost_mb": (peak[label] - before[label]) / 1024, "estimated_sync_mb": payload_part}
    return {"engine_processes": engine, "bucket_mb": bucket_mb, "payload_mb": metrics["sync/bytes"] / 2**20, "sync_seconds": seconds,
            "parity_max_abs_diff": metrics["sync/parity_max_abs_diff"], "processes": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", nargs="+", default=["separate:0", "separate:64", "in_actor:64"],
                        help="generator.engine_processes:sync.bucket_mb (0: the payload sent whole)")
    parser.add_argument("--syncs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_sync_memory")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "sync_memory.json")
    args = parser.parse_args()
    setups = [(engine, int(bucket)) for engine, bucket in (setup.split(":") for setup in args.setups)]
    results = [measure(engine, bucket or None, args.syncs, args.out.resolve()) for engine, bucket in setups]
    print(f"\nmerged sync of a {results[0]['payload_mb']:.0f} MB payload, {args.syncs} syncs: peak resident MB "
          "each process added over its size before the syncs (rlft.footprint's estimate of it)\n")
    labels = list(PROCESSES)
    print("| engine | sync.bucket_mb | " + " | ".join(labels) + " | seconds per sync (median) |")
    print("|---|---|" + "---|" * (len(labels) + 1))
    for result in results:
        found = result["processes"]
        cells = [f"{found[k]['sync_cost_mb']:.0f} ({found[k]['estimated_sync_mb']})" if k in found else "-" for k in labels]
        median = sorted(result["sync_seconds"])[len(result["sync_seconds"]) // 2]
        print(f"| {result['engine_processes']} | {result['bucket_mb'] or 'whole'} | " + " | ".join(cells)
              + f" | {median:.2f} |")
    write_results(args.json, {"results": results, "syncs": args.syncs, "model": WIDE})
    return 0


if __name__ == "__main__":
    sys.exit(main())
