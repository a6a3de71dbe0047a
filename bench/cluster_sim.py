"""How rlft's loop would use a cluster: a small discrete-event simulation of G generator devices and L learner
devices, from costs measured on this machine, for staleness bounds k = 0, 1, 2, 4 and both weight transports.

    .venv/bin/python bench/cluster_sim.py                      # the SmolLM2 costs measured here, default grid
    .venv/bin/python bench/cluster_sim.py --generators 1 2 4 8 --learners 1 2 4 --iterations 50

Costs (each from a measured run; the file and the fields are printed and written with the results):
  * generation: response tokens per second of one generator device, from the merged SmolLM2 GPPO run of
    bench/results/e2e_vs_trl_smollm2.json (configs/gppo_smollm2_gsm.yaml, float32: 1 engine, 2 learner ranks;
    tokens sampled per iteration / seconds generating x engines);
  * training: tokens per second of one learner device, from the same run (tokens trained per iteration /
    seconds training x ranks);
  * weight sync: seconds per merged SmolLM2 sync in bf16 of each transport (the median of the rounds' medians),
    from bench/results/sync_transport.json when it exists (object store vs collective, one generator), else the
    object store's 269 MB in 5.1 s (the middle of the 4.2-6.0 s measured before) and no collective.

Assumptions (what the model leaves out):
  * devices are independent: a generator and a learner do not share cores (on this 2-core machine they do);
  * generation splits a batch's prompts evenly over the engines and a batch is done when its slowest engine
    is: response lengths vary by `--length-cv` (log-normal per engine and batch, seeded);
  * training scales linearly with learner devices, plus `--allreduce-s` per optimizer step for L > 1;
  * a sync stops every engine for its duration (weights are loaded with requests paused, then resumed);
    the object store sends one copy per generator through learner rank 0's link (its seconds grow with G),
    the collective one broadcast whose seconds do not (a pipelined broadcast);
  * staleness bound k: batch j (trained into version j) may be sampled by version j - 1 - k at the oldest,
    so the generators may start it once that version reached them; k = 0 is the synchronous loop,
    k = 1 the overlap rlft runs today (rollout.max_staleness 1). Tokens sampled after a mid-batch update
    belong to the newer version (staleness only falls).
Reported per (G, L, k, transport): samples per second, the busy share of generators and learners, and the mean
staleness of the batches trained. Raw results: bench/results/cluster_sim.json.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURED_RUN = ROOT / "bench" / "results" / "e2e_vs_trl_smollm2.json"
SYNC_RESULTS = ROOT / "bench" / "results" / "sync_transport.json"


@dataclass(frozen=True)
class Transport:
    seconds: float  # one sync to one generator (the payload's bytes over the link, plus loading)
    per_generator: bool  # True: one copy per generator through the sender's link (object store)


@dataclass(frozen=True)
class Costs:
    batch_samples: int  # completions per iteration
    batch_tokens: float  # response tokens per iteration
    gen_tokens_per_s: float  # one generator device
    train_tokens_per_s: float  # one learner device
    optimizer_steps: int = 2  # per iteration (each pays the all-reduce once)
    allreduce_s: float = 0.0  # per optimizer step when L > 1
    length_cv: float = 0.3  # spread of response lengths between engines


@dataclass(frozen=True)
class Outcome:
    samples_per_s: float
    generator_busy: float
    learner_busy: float
    mean_staleness: float
    seconds: float


def generation_seconds(costs: Costs, generators: int, rng: random.Random) -> float:
    """One batch over `generators` engines: each samples its share; the slowest one ends the batch."""
    share = costs.batch_tokens / generators / costs.gen_tokens_per_s
    sigma = math.sqrt(math.log(1.0 + costs.length_cv ** 2))
    return max(share * rng.lognormvariate(-sigma * sigma / 2, sigma) for _ in range(generators))


def training_seconds(costs: Costs, learners: int) -> float:
    allreduce = costs.allreduce_s * costs.optimizer_steps if learners > 1 else 0.0
    return costs.batch_tokens / (learners * costs.train_tokens_per_s) + allreduce


def sync_seconds(transport: Transport, generators: int) -> float:
    return transport.seconds * (generators if transport.per_generator else 1)


def delayed_by_syncs(start: float, work: float, syncs: list[tuple[float, float]]) -> float:
    """When work of `work` seconds started at `start` ends if every sync interval (begin, end) that begins
    before it ends pauses it (engines load weights with requests paused)."""
    end = start + work
    for begin, finish in sorted(syncs):
        if start < finish and begin < end:  # overlaps the (growing) window
            end += finish - max(begin, start)
    return end


def simulate(costs: Costs, transport: Transport, generators: int, learners: int, staleness: int, iterations: int,
             seed: int = 0) -> Outcome:
    """The loop for `iterations` batches: batch j is generated once version j - 1 - k reached the engines,
    trained once it is sampled and the learners are free, then published (the engines pause for it)."""
    rng = random.Random(seed)
    published = [0.0]  # published[v]: when version v reached every engine (version 0: at the start)
    syncs: list[tuple[float, float]] = []
    gen_free = learner_free = 0.0
    gen_busy = train_busy = 0.0
    stale = []
    sampled_at: dict[int, tuple[float, float]] = {}
    for j in range(1, iterations + 1):
        oldest = max(0, j - 1 - staleness)
        start = max(gen_free, published[oldest])
        work = generation_seconds(costs, generators, rng)
        end = delayed_by_syncs(start, work, syncs)
        gen_busy += work
        gen_free = end
        sampled_at[j] = (start, end)
        # the version that sampled the batch's first token: the newest one published when it started
        version = max(v for v, t in enumerate(published) if t <= start)
        stale.append(j - 1 - version)
        train_start = max(learner_free, end)
        train_end = train_start + training_seconds(costs, learners)
        train_busy += train_end - train_start
        sync_end = train_end + sync_seconds(transport, generators)
        syncs.append((train_end, sync_end))
        published.append(sync_end)
        learner_free = sync_end  # rank 0 sends; the next step starts after the update is out
    total = published[-1]
    return Outcome(samples_per_s=iterations * costs.batch_samples / total, generator_busy=gen_busy / total,
                   learner_busy=train_busy / total, mean_staleness=statistics.fmean(stale), seconds=total)


def measured_costs(path: Path = MEASURED_RUN, run: str = "rlft GPPO merged", generators: int = 1,
                   learners: int = 2) -> tuple[Costs, dict]:
    """Per-device costs from a measured run: its engines and ranks shared this machine's cores."""
    result = json.loads(path.read_text())
    found = result["results"][run]
    completions = found["completions"] // found["steps"] * 2  # one generation feeds two optimizer steps
    tokens = completions * found["length"]
    costs = Costs(batch_samples=completions, batch_tokens=tokens,
                  gen_tokens_per_s=tokens / found["split"]["generate"] / generators,
                  train_tokens_per_s=tokens / found["split"]["train"] / learners)
    return costs, {"file": str(path.relative_to(ROOT)), "run": run, "generators": generators, "learners": learners,
                   "seconds_generate": found["split"]["generate"], "seconds_train": found["split"]["train"],
                   "tokens_per_iteration": tokens, "machine": result.get("machine")}


def measured_transports(path: Path = SYNC_RESULTS) -> tuple[dict[str, Transport], dict]:
    """Seconds per merged SmolLM2 sync by transport (median, bf16), from the sync bench when it ran."""
    if not path.is_file():
        return {"object_store": Transport(5.1, per_generator=True)}, {"file": None, "object_store_seconds": 5.1}
    result = json.loads(path.read_text())
    seconds: dict[str, list[float]] = {}  # every round's median, by transport (bf16)
    for entry in result["transports"]:
        if entry["dtype"] == "bfloat16":
            seconds.setdefault(entry["transport"], []).append(entry["median_s"])
    medians = {name: statistics.median(found) for name, found in seconds.items()}
    transports = {name: Transport(value, per_generator=name == "object_store") for name, value in medians.items()}
    return transports, {"file": str(path.relative_to(ROOT)), "bf16_medians_s": medians}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="+", type=int, default=[1, 2, 4, 8])
    parser.add_argument("--learners", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--staleness", nargs="+", type=int, default=[0, 1, 2, 4])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--length-cv", type=float, default=0.3)
    parser.add_argument("--allreduce-s", type=float, default=0.1, help="seconds of all-reduce per optimizer step")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "cluster_sim.json")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    costs, cost_source = measured_costs()
    costs = Costs(**{**asdict(costs), "length_cv": args.length_cv, "allreduce_s": args.allreduce_s})
    transports, sync_source = measured_transports()
    rows = []
    print(f"costs: {costs}\nsync: { {k: asdict(v) for k, v in transports.items()} }\n")
    print("| generators | learners | k | transport | samples/s | generators busy | learners busy | mean staleness |")
    print("|---|---|---|---|---|---|---|---|")
    for g in args.generators:
        for l in args.learners:
            for name, transport in transports.items():
                for k in args.staleness:
                    out = simulate(costs, transport, g, l, k, args.iterations)
                    rows.append({"generators": g, "learners": l, "staleness": k, "transport": name, **asdict(out)})
                    print(f"| {g} | {l} | {k} | {name} | {out.samples_per_s:.2f} | {out.generator_busy:.0%} | "
                          f"{out.learner_busy:.0%} | {out.mean_staleness:.2f} |")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"costs": asdict(costs), "cost_source": cost_source, "sync_source": sync_source,
                                     "transports": {k: asdict(v) for k, v in transports.items()},
                                     "iterations": args.iterations, "rows": rows}, indent=1) + "\n")
    print(f"\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
