"""IM-RAG questioner rewards over seeds: turn-level progress rewards vs outcome-only reward.

    .venv/bin/python bench/imrag_rewards.py                      # 3 seeds, the recipe's budget
    .venv/bin/python bench/imrag_rewards.py --seeds 0 1 2 --steps 60
    .venv/bin/python bench/imrag_rewards.py --report-only        # table, PNG and JSON from runs already made

Every run is configs/imrag_tiny.yaml (`rlft train`, in a child process) with `run.seed` set, under
--out (default runs/bench_imrag; a finished run is reused, never overwritten). Its SFT warm start
(configs/imrag_sft_tiny.yaml) runs once under --out and is shared by every run, so both arms start
from the same weights and spend the same budget (steps, batch, episodes):

* progress: the recipe. Advantage per search turn = group-normalised answer F1 (outcome) plus the
  group-normalised sum of the retrieval_progress turn rewards P_t - P_{t-1} from that turn on;
* outcome: algorithm.process_coef=0, the answer F1 alone for every turn.

In both the answer turn is trained by SFT on the gold answer (answerer: sft). Metrics are the
held-out greedy episodes (all 400 held-out questions; no run trains on them): exact-match accuracy, answer
F1, evidence coverage P_T, searches per episode, malformed episodes. "start" is each run's step-0
evaluation (the warm start). Mean (std) over seeds. Held out by default: whole people
(`task.held_out: entities`), so no held-out question's person was in a training question.
The raw numbers (every evaluation of every run, minutes per run, the machine) go to --json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from recipe_runs import ROOT, evaluations, finished, mean_std, plot_seed_curves, run_summary, train, write_results

RECIPE = "configs/imrag_tiny.yaml"
ARMS = {"progress": [], "outcome": ["algorithm.process_coef=0"]}
WINDOW = 10  # iterations averaged at the start and the end of a run (rollout metrics are noisy)
COLUMNS = (("accuracy (EM)", "eval/accuracy"), ("answer F1", "eval/answer_f1"), ("coverage", "eval/coverage"),
           ("searches", "eval/searches"), ("malformed", "eval/malformed"))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="train.steps of the RL runs (default: the recipe's)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_imrag")
    parser.add_argument("--png", type=Path, default=ROOT / "bench" / "results" / "imrag_rewards.png")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "imrag_rewards.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args()


def training_rows(run_dir: Path) -> list[dict]:
    """The metrics rows of a run's RL iterations (they hold the rollout statistics)."""
    return evaluations(run_dir, "rollout/coverage")


def run_name(arm: str, seed: int, steps: int | None) -> str:
    return f"{arm}_s{seed}" + (f"_{steps}steps" if steps else "")


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    steps = [f"train.steps={args.steps}"] if args.steps else []
    if not args.report_only:
        for seed in args.seeds:
            for arm, overrides in ARMS.items():
                print(f"running {arm} seed {seed} ...", flush=True)
                train(RECIPE, run_name(arm, seed, args.steps), seed, args.out, [*overrides, *steps], f"{arm} seed {seed}")
    # each run's loop (training and evaluations; role start-up excluded), from its finished.json
    seconds = {(arm, s): run_summary(args.out / run_name(arm, s, args.steps)).get("seconds")
               for arm in ARMS for s in args.seeds}
    seconds = {key: value for key, value in seconds.items() if value is not None}
    runs = {arm: {s: evaluations(args.out / run_name(arm, s, args.steps), "eval/accuracy") for s in args.seeds
                  if finished(args.out / run_name(arm, s, args.steps))} for arm in ARMS}
    rows = {"start (warm start)": ("progress", 0), "outcome-only reward": ("outcome", -1),
            "progress turn rewards": ("progress", -1)}
    print(f"\nIM-RAG questioner, {RECIPE}, seeds {args.seeds}: held-out greedy episodes, mean (std) over seeds\n")
    print("| | " + " | ".join(c[0] for c in COLUMNS) + " | seeds | loop min/run |")
    print("|---|" + "---|" * (len(COLUMNS) + 2))
    for label, (arm, at) in rows.items():
        found = [evals[at] for evals in runs[arm].values()]
        if not found:
            print(f"| {label} | " + " | ".join("-" for _ in COLUMNS) + " | 0 | - |")
            continue
        minutes = [seconds[arm, s] / 60 for s in args.seeds if (arm, s) in seconds]
        timing = f"{statistics.median(minutes):.1f}" if at != 0 and minutes else "-"
        print(f"| {label} | " + " | ".join(mean_std([r[key] for r in found]) for _, key in COLUMNS)
              + f" | {len(found)} | {timing} |")
    print(f"\nRL questions (sampled episodes at the rollout temperature), mean of the first and the last "
          f"{WINDOW} iterations, mean (std) over seeds\n")
    print("| arm | answer F1 first | answer F1 last | coverage first | coverage last | seeds |")
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        rollouts = [training_rows(args.out / run_name(arm, s, args.steps)) for s in runs[arm]]
        if not rollouts:
            continue
        cells = [mean_std([statistics.mean(r[key] for r in rows[part]) for rows in rollouts])
                 for key in ("reward/answer_f1", "rollout/coverage") for part in (slice(0, WINDOW), slice(-WINDOW, None))]
        print(f"| {arm} | " + " | ".join(cells) + f" | {len(rollouts)} |")
    png = args.png
    plot_seed_curves([(label, "", {arm: {seed: [(r["step"], r[key]) for r in rows] for seed, rows in runs[arm].items()}
                                   for arm in ARMS})
                      for key, label in (("eval/accuracy", "held-out accuracy (exact match)"),
                                         ("eval/coverage", "held-out evidence coverage P_T"))],
                     png)
    keys = [key for _, key in COLUMNS]
    write_results(args.json, {"recipe": RECIPE, "seeds": args.seeds, "steps": args.steps, "arms": ARMS,
                              "minutes": {f"{arm}_s{seed}": t / 60 for (arm, seed), t in seconds.items()},
                              "evaluations": {arm: {seed: [{k: r[k] for k in ("step", *keys) if k in r} for r in rows]
                                                    for seed, rows in found.items()} for arm, found in runs.items()}})
    print(f"\ncurves: {png}\nraw results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
