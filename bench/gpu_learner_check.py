"""GPU learner check: DeepSpeed + PEFT LoRA on one CUDA GPU (bf16, NCCL), against a CPU reference.

    .venv/bin/python bench/gpu_learner_check.py --reference bench/data/gpu_learner_check_cpu.json   # CPU: write it
    python bench/gpu_learner_check.py                                                               # GPU: compare

No vLLM, Ray or generator: one inline learner rank (rlft.roles.learner.LearnerActor through the
controller) on the tiny model with LoRA r=8 takes 3 SFT steps on the arith train split and 3 GPPO
steps on fixed rollout rows (tests.helpers.synthetic_rollout_rows: reference traces, fixed
rewards, old log-probs perturbed from 0), the same rows on every machine. The CPU run (float32, gloo) saves per-step losses and gradient
norms; the GPU run (model.dtype auto = bfloat16, NCCL) recomputes them and prints both, with
their relative differences. Passes when every value is finite and within 5% of the CPU value
(bf16 keeps ~3 significant digits). Where no CUDA GPU is present it says so and checks nothing
(and writes nothing). On a GPU the comparison (every value, its relative difference, the verdict,
the GPU and the machine) goes to --json. `bench/gpu_learner_check.sh` wraps it; tests/test_gpu.py runs
the same check (`check`) under pytest's `gpu` marker.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers: the learner-only GPPO spec and its fixed rollout rows
DEFAULT_REFERENCE = ROOT / "bench" / "data" / "gpu_learner_check_cpu.json"
DEFAULT_RESULTS = ROOT / "bench" / "results" / "gpu_learner_check.json"
TOLERANCE = 0.05


def config(algorithm: dict, out: Path):
    from rlft.config import config_from_dict

    return config_from_dict({
        "run": {"name": f"gpu_check_{algorithm['name']}", "output_dir": str(out), "seed": 0, "if_exists": "overwrite"},
        "runtime": {"mode": "inline"}, "model": {"name": "tiny"},
        "peft": {"method": "lora", "r": 8, "alpha": 16},
        "task": {"name": "arith", "train_size": 512, "eval_size": 8}, "algorithm": algorithm,
        "train": {"steps": 3, "batch_size": 16, "micro_batch_size": 8, "lr": 1e-2, "max_length": 64},
        "learner": {"count": 1}, "eval": {"num_examples": 0}, "tracking": {"wandb": "disabled", "plots": False},
    }, source="<gpu_learner_check>")


def steps(algorithm: str, out: Path) -> tuple[list[dict], dict]:
    """Three learner steps; (per step {loss, grad_norm}, learner info)."""
    from rlft.control import Controller

    from tests.helpers import synthetic_rollout_rows

    ctl = Controller(config({"name": algorithm} | ({"group_size": 4} if algorithm != "sft" else {}), out),
                     show_progress=False)
    ctl.setup()
    try:
        found = []
        for iteration in (1, 2, 3):
            if algorithm == "sft":
                rows = ctl.spec.build_rows(ctl.source.next_batch(iteration, 0)[0], ctl.row_ctx)[0]
            else:
                rows = synthetic_rollout_rows(ctl, n=16)
            result = ctl.learner_step(rows)
            found.append({"loss": result["loss"], "grad_norm": result["grad_norm"]})
        return found, ctl.learner_info
    finally:
        ctl.close()


def run_all(out: Path) -> tuple[dict, dict]:
    from rlft.algorithms import ALGORITHMS
    from tests.helpers import LEARNER_ONLY_GPPO  # GPPO's learner step without generators

    ALGORITHMS.register(LEARNER_ONLY_GPPO.name, LEARNER_ONLY_GPPO, replace=True)
    try:
        sft, info = steps("sft", out)
        gppo, _ = steps(LEARNER_ONLY_GPPO.name, out)
    finally:
        ALGORITHMS.unregister(LEARNER_ONLY_GPPO.name)
    return {"sft": sft, "gppo": gppo}, info


def compare(reference: dict, found: dict) -> list[dict]:
    """Every (algorithm, step, value) of the CPU reference beside the GPU's, with the relative difference."""
    rows = []
    for algorithm in ("sft", "gppo"):
        for step, (cpu, gpu) in enumerate(zip(reference[algorithm], found[algorithm]), start=1):
            for key in ("loss", "grad_norm"):
                rel = abs(gpu[key] - cpu[key]) / max(abs(cpu[key]), 1e-8)
                rows.append({"algorithm": algorithm, "step": step, "value": key, "cpu": cpu[key], "gpu": gpu[key],
                             "rel_diff": rel, "ok": math.isfinite(gpu[key]) and rel <= TOLERANCE})
    return rows


def check(reference: dict, out: Path) -> tuple[list[dict], dict, bool]:
    """The steps on this machine against the CPU reference: (compare's rows, the learner info, passed).
    Passed: the learner ran on cuda with nccl and every value is finite and within TOLERANCE."""
    found, info = run_all(out)
    rows = compare(reference, found)
    ok = info["device"].startswith("cuda") and info["backend"] == "nccl" and all(r["ok"] for r in rows)
    return rows, info, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, help="write the CPU reference here (run on a CPU machine)")
    parser.add_argument("--against", type=Path, default=DEFAULT_REFERENCE, help="CPU reference to compare with")
    parser.add_argument("--json", type=Path, default=DEFAULT_RESULTS, help="the GPU comparison, as JSON")
    args = parser.parse_args()
    import torch

    out = Path(tempfile.mkdtemp(prefix="rlft_gpu_check_"))
    if args.reference:
        found, info = run_all(out)
        args.reference.parent.mkdir(parents=True, exist_ok=True)
        args.reference.write_text(json.dumps({"info": info, **found}, indent=1) + "\n")
        print(f"CPU reference ({info['device']}, {info['dtype']}, {info['backend']}) written to {args.reference}")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU on this machine: the GPU learner check did not run (nothing was checked)")
        return 0
    reference = json.loads(args.against.read_text())
    rows, info, ok = check(reference, out)
    print(f"GPU: {torch.cuda.get_device_name(0)}; learner on {info['device']}, {info['dtype']}, {info['backend']}")
    print(f"CPU reference: {reference['info']['device']}, {reference['info']['dtype']}, {reference['info']['backend']}\n")
    print("| algorithm | step | value | CPU float32 | GPU | rel. diff |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['algorithm']} | {r['step']} | {r['value']} | {r['cpu']:.5f} | {r['gpu']:.5f} | "
              f"{r['rel_diff']:.2%} |")
    print(f"\n{'PASS' if ok else 'FAIL'}: finite and within {TOLERANCE:.0%} of the CPU reference, on cuda with nccl")
    # Imported here: bench/ is on the path when this runs as a script, not when a test imports the file.
    from recipe_runs import write_results

    write_results(args.json, {"gpu": torch.cuda.get_device_name(0), "learner": info, "reference": reference["info"],
                              "tolerance": TOLERANCE, "passed": ok, "rows": rows})
    print(f"raw results: {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
