"""Seconds per merged SmolLM2-135M sync: the object store against the collective transport, in one run.

    PYTHONPATH=. .venv/bin/python bench/sync_transport.py                     # breakdown + both transports, bf16 and float32
    PYTHONPATH=. .venv/bin/python bench/sync_transport.py --part transports --syncs 5 --dtypes bfloat16

Two parts:

* `breakdown`: where an object-store merged sync's time goes, piece by piece, in one process: the
  LoRA merge (`effective_weights`), safetensors serialisation and the learner's fingerprint, Ray's
  object store (a put, then an actor's get), and on a vLLM engine in this process the worker's
  deserialisation, its fingerprint and vLLM's `reload_weights`.
* `transports`: a local-mode run per dtype and transport (the SmolLM2 sums recipe's roles: one learner
  rank, LoRA r=16 merged, one vLLM generator with its engine in the actor), a warm-up publish then
  --syncs publishes (`WeightSync.publish`: export, transfer, load, fingerprint check; the parity probe
  runs after each and is not counted), the `sync/seconds` of each.

The machine has 2 cores shared with whatever else runs (noted with the results: load average), so
every figure is a median over repeats. Raw results to --json, a table printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

from recipe_runs import ROOT, write_results

MODEL = "smollm2-135m-instruct"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------- breakdown (object store, piece by piece)
def _worker_pieces(self, bucket: bytes):
    """Runs on the vLLM worker (the rlft extension is mixed in): the object-store path's worker side, timed."""
    import time as clock

    from rlft.sync.payload import fingerprint, load_tensors

    t0 = clock.perf_counter()
    tensors = load_tensors(bucket)
    t1 = clock.perf_counter()
    fingerprint(tensors)
    t2 = clock.perf_counter()
    self._rlft_reload(tensors)
    return t1 - t0, t2 - t1, clock.perf_counter() - t2


def breakdown(dtype_name: str, repeats: int, bucket_mb: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine and its worker in this process
    import ray
    import torch
    from vllm import LLM

    from rlft.config import GeneratorConfig, ModelConfig
    from rlft.data.models import resolve_model
    from rlft.families import family_for
    from rlft.peft import PEFT_METHODS
    from rlft.roles.generator import engine_kwargs
    from rlft.sync.payload import bucket_names, fingerprint, serialize

    path = str(resolve_model(ModelConfig(name=MODEL)))
    lora = PEFT_METHODS["lora"]
    peft = lora(lora.config_cls(r=16, alpha=32))
    model = peft.wrap(family_for(path).load_model(path, getattr(torch, dtype_name), head="lm"), 0, with_reference=False)
    llm = LLM(**engine_kwargs(GeneratorConfig(kv_cache_mb=256, max_model_len=256), path, dtype_name, None, 256,
                              seed=0, cpu=True, in_actor=True))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    sink = ray.remote(lambda blobs: sum(len(b) for b in blobs))
    ray.get(sink.remote([b"warm"]))
    rows = []
    for _ in range(repeats):
        row, t = {}, time.perf_counter()
        with torch.no_grad():
            tensors = peft.effective_weights(model)
        row["merge (effective_weights)"] = time.perf_counter() - t
        blobs, row["serialize (safetensors)"], row["fingerprint, learner"] = [], 0.0, 0.0
        for names in bucket_names(tensors, bucket_mb << 20):
            part = {n: tensors[n].detach().contiguous() for n in names}
            t = time.perf_counter()
            blobs.append(serialize(part))
            row["serialize (safetensors)"] += time.perf_counter() - t
            t = time.perf_counter()
            fingerprint(part)
            row["fingerprint, learner"] += time.perf_counter() - t
        t = time.perf_counter()
        ref = ray.put(blobs)
        row["object store put"] = time.perf_counter() - t
        t = time.perf_counter()
        ray.get(sink.remote(ref))
        row["object store get (an actor)"] = time.perf_counter() - t
        del ref
        pieces = [llm.collective_rpc(_worker_pieces, args=(blob,))[0] for blob in blobs]
        row["deserialize, worker"], row["fingerprint, generator"], row["reload_weights into vLLM"] = map(sum, zip(*pieces))
        rows.append(row)
        print(f"  breakdown {dtype_name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()), flush=True)
    ray.shutdown()
    return {"dtype": dtype_name, "bytes": sum(len(b) for b in blobs), "repeats": rows,
            "median_s": {k: median([r[k] for r in rows]) for k in rows[0]}}


def breakdown_in_child(dtype_name: str, args) -> dict:
    """The breakdown of one dtype in a process of its own (its vLLM engine and Ray live in that process)."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        found = Path(folder) / "breakdown.json"
        subprocess.run([sys.executable, __file__, "--part", "breakdown-one", "--dtypes", dtype_name, "--repeats",
                        str(args.repeats), "--bucket-mb", str(args.bucket_mb), "--json", str(found)], check=True)
        return json.loads(found.read_text())["breakdown"][0]


# ----------------------------------------------------------------- transports (whole publishes in a run)
def transport_run(dtype_name: str, transport: str, syncs: int, bucket_mb: int, out: Path) -> dict:
    from rlft.config import config_from_dict
    from rlft.control import Controller

    name = f"sync_{transport}_{dtype_name}"
    cfg = config_from_dict({
        "run": {"name": name, "output_dir": str(out), "if_exists": "overwrite"},
        "model": {"name": MODEL, "dtype": dtype_name},
        "task": {"name": "sums", "digits": 2, "train_size": 64, "eval_size": 8},
        "algorithm": {"name": "gppo", "group_size": 2}, "peft": {"method": "lora", "r": 16, "alpha": 32},
        "learner": {"count": 1, "threads_per_rank": "auto"},
        "generator": {"count": 1, "kv_cache_mb": 256, "max_model_len": 256},
        "sync": {"weights": "merged", "transport": transport, "bucket_mb": bucket_mb,
                 "parity_tolerance": 0.3 if dtype_name != "float32" else None},
        "runtime": {"mode": "local", "memory_check": "warn"},
        "train": {"steps": 1, "batch_size": 4, "micro_batch_size": 4, "max_length": 160},
        "tracking": {"wandb": "disabled", "plots": False}, "eval": {"num_examples": 0}}, source="bench/sync_transport.py")
    ctl = Controller(cfg, show_progress=False)
    ctl.setup()
    try:
        warm = ctl.sync.publish()  # the collective's group forms here (not counted in sync/seconds either way)
        found = [ctl.sync.publish() for _ in range(syncs)]
    finally:
        ctl.close()
    seconds = [m["sync/seconds"] for m in found]
    print(f"  {transport} {dtype_name}: " + " ".join(f"{s:.2f}" for s in seconds) + f" (warm-up {warm['sync/seconds']:.2f})",
          flush=True)
    return {"dtype": dtype_name, "transport": transport, "bucket_mb": bucket_mb, "bytes": found[0]["sync/bytes"],
            "seconds": seconds, "median_s": median(seconds), "warmup_s": warm["sync/seconds"],
            "parity_mean_abs_diff": [m["sync/parity_mean_abs_diff"] for m in found],
            "parity_max_abs_diff": [m["sync/parity_max_abs_diff"] for m in found],
            "load_average_after": os.getloadavg()}


GOAL_S = {"bfloat16": 1.5, "float32": 3.0}


def print_tables(results: dict) -> None:
    for item in results.get("breakdown", []):
        print(f"\nwhere an object-store merged sync goes, {item['dtype']} ({item['bytes'] / 1e6:.0f} MB), median of "
              f"{len(item['repeats'])}:\n\n| piece | seconds |\n|---|---|")
        for key, value in item["median_s"].items():
            print(f"| {key} | {value:.2f} |")
        print(f"| sum | {sum(item['median_s'].values()):.2f} |")
    runs = results.get("transports", [])
    if runs:
        print("\nseconds per merged SmolLM2-135M sync (sync/seconds, median over every round; [all syncs]):\n")
        print("| dtype | MB | object_store | collective | speed-up | goal (collective) |\n|---|---|---|---|---|---|")
    for dtype in dict.fromkeys(r["dtype"] for r in runs):
        by = {}
        for r in runs:  # every round's syncs of a transport together
            if r["dtype"] == dtype:
                by.setdefault(r["transport"], {"seconds": [], "bytes": r["bytes"]})["seconds"] += r["seconds"]
        for found in by.values():
            found["median_s"] = median(found["seconds"])
        cells = [f"{by[t]['median_s']:.2f} [{' '.join(f'{s:.2f}' for s in by[t]['seconds'])}]" if t in by else "-"
                 for t in ("object_store", "collective")]
        ratio = (by["object_store"]["median_s"] / by["collective"]["median_s"]) if len(by) == 2 else float("nan")
        met = "met" if "collective" in by and by["collective"]["median_s"] <= GOAL_S[dtype] else "not met"
        size = next(iter(by.values()))["bytes"] / 1e6
        print(f"| {dtype} | {size:.0f} | {cells[0]} | {cells[1]} | {ratio:.1f}x | <= {GOAL_S[dtype]} s: {met} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "breakdown", "transports", "breakdown-one"], default="all")
    parser.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"])
    parser.add_argument("--transports", nargs="+", default=["object_store", "collective"])
    parser.add_argument("--syncs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2, help="runs of each transport per dtype, alternating")
    parser.add_argument("--repeats", type=int, default=3, help="breakdown repeats")
    parser.add_argument("--bucket-mb", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_sync_transport")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "sync_transport.json")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results: dict = {"model": MODEL, "peft": "lora r=16, merged", "bucket_mb": args.bucket_mb, "syncs": args.syncs}
    if args.part in ("all", "transports"):
        # rounds alternate the transports, so that a burst of load elsewhere lands on both
        runs = [transport_run(dtype, transport, args.syncs, args.bucket_mb, args.out.resolve())
                for dtype in args.dtypes for _ in range(args.rounds) for transport in args.transports]
        results["transports"] = runs
    if args.part == "breakdown-one":  # a child of the breakdown part: one dtype, its engine in this process
        write_results(args.json, {"breakdown": [breakdown(args.dtypes[0], args.repeats, args.bucket_mb)]})
        return 0
    if args.part in ("all", "breakdown"):
        results["breakdown"] = [breakdown_in_child(dtype, args) for dtype in args.dtypes]
    print_tables(results)
    write_results(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
