"""The recipe-level numbers of the README, rerun: every tiny recipe end to end, one table.

    .venv/bin/python bench/recipes.py                                     # every recipe (~1.5-2 h on 2 idle cores)
    .venv/bin/python bench/recipes.py --only dpo_offline_tiny_arith tpo_offline_tiny_arith
    .venv/bin/python bench/recipes.py --report-only                       # table and JSON from runs already made

Recipes: configs/*tiny*.yaml, configs/mdlm_dna_pretrain.yaml and configs/drakes_dna.yaml (the
SmolLM2 recipes are run-throughs on CPU, not results). Each runs as shipped, at its own seed
(`rlft train` in a child process), under --out (default runs/bench_recipes); a finished run
there is reused, never overwritten. Warm starts are found or trained under the same --out, so the
recipes that share the main job's warm start train it once. A recipe that is another's warm start
under the same run name (the ThinkDial phases, mdlm_dna_pretrain, imrag_sft_tiny) runs after the
recipe that needs it and reuses the run its warm start made (run alone, it makes its own run, and
a dependent run later trains its warm start again).

Per recipe: its first evaluation (step 0: the model it starts from) and its last (the end of
training) in the metrics it logs (greedy held-out accuracy; ThinkDial: accuracy and tokens per
reasoning mode; IM-RAG: accuracy and evidence coverage; MDLM: held-out NELBO per token and the
HepG2 fraction; DRAKES: Pred-Activity, HepG2 fraction and App-Log-Lik), optimizer steps, and the
minutes of the run's loop (training and evaluations, role start-up excluded; from its
finished.json). Warm starts made on the way get their own rows. Every evaluation of every run,
the runs' summaries and the machine go to --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recipe_runs import ROOT, finished, run_summary, train, write_results

EXTRA_RECIPES = ("configs/mdlm_dna_pretrain.yaml", "configs/drakes_dna.yaml")
# What the table shows of a recipe's evaluations, by recipe-name prefix (the JSON keeps every eval/* value).
SHOWN = {
    "thinkdial": (("high", "eval/accuracy_high", "{:.3f}"), ("medium", "eval/accuracy_medium", "{:.3f}"),
                  ("low", "eval/accuracy_low", "{:.3f}"), ("tokens high", "eval/tokens_high", "{:.0f}"),
                  ("medium", "eval/tokens_medium", "{:.0f}"), ("low", "eval/tokens_low", "{:.0f}")),
    "imrag": (("accuracy", "eval/accuracy", "{:.3f}"), ("coverage", "eval/coverage", "{:.3f}")),
    "mdlm": (("NELBO/token", "eval/nelbo_per_token", "{:.3f}"), ("HepG2", "eval/accuracy", "{:.3f}")),
    "drakes": (("Pred-Activity", "eval/pred_activity", "{:.2f}"), ("HepG2", "eval/accuracy", "{:.3f}"),
               ("App-Log-Lik", "eval/log_likelihood", "{:.1f}")),
}
ACCURACY = (("accuracy", "eval/accuracy", "{:.3f}"),)


def all_recipes() -> dict[str, str]:
    """Recipe name (file stem) -> path relative to the checkout."""
    paths = sorted(p for p in (ROOT / "configs").glob("*tiny*.yaml") if "smollm2" not in p.name)
    return {p.stem: str(p.relative_to(ROOT)) for p in paths} | {Path(p).stem: p for p in EXTRA_RECIPES}


def parse_args(names: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=names, metavar="RECIPE",
                        help=f"run only these (default: all of {', '.join(names)})")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_recipes")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "recipes.json")
    parser.add_argument("--report-only", action="store_true", help="only read finished runs")
    return parser.parse_args()


def load(recipes: dict[str, str]) -> dict:
    """Each recipe's resolved config (run name and seed, warm start), without starting anything."""
    import os

    from rlft.config import load_config

    os.chdir(ROOT)  # recipes name their warm starts and data relative to the checkout
    return {name: load_config(path) for name, path in recipes.items()}


def warm_start_folder(cfg, configs: dict) -> str:
    """The run name a recipe's warm start gets under --out (its run.name override, else the warm start recipe's)."""
    names = [o.split("=", 1)[1] for o in cfg.warm_start.overrides if o.startswith("run.name=")]
    return names[-1] if names else configs[Path(cfg.warm_start.recipe).stem].run.name


def reusable_warm_starts(configs: dict) -> dict[str, tuple[str, str]]:
    """Recipe -> (the recipe whose warm start it is, that warm start's run name), where the warm start
    changes nothing but the run name: running the dependent first makes this recipe's run too."""
    found = {}
    for name, cfg in configs.items():
        ws = cfg.warm_start
        if ws.recipe and all(o.startswith("run.name=") for o in ws.overrides):
            found[Path(ws.recipe).stem] = (name, warm_start_folder(cfg, configs))
    return found


def run_order(selected: list[str], reusable: dict[str, tuple[str, str]]) -> list[str]:
    """Dependents before the warm starts they make (thinkdial before its warm-up before its SFT)."""
    def depth(name: str) -> int:
        return 0 if name not in reusable else 1 + depth(reusable[name][0])

    return sorted(selected, key=depth)


def read_run(run_dir: Path) -> dict | None:
    """A finished run's evaluations (step and every eval/* value), summary and loop seconds; None if unfinished."""
    if not finished(run_dir):
        return None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [{k: v for k, v in row.items() if k == "step" or k.startswith("eval/")} for row in rows
             if any(k.startswith("eval/") for k in row)]
    summary = run_summary(run_dir)
    return {"run_dir": str(run_dir), "evaluations": evals, "loop_seconds": summary.get("seconds"),
            "steps": summary.get("steps"), "summary": summary}


def cell(evaluation: dict | None, shown) -> str:
    if not evaluation:
        return "-"
    parts = [f"{label} {fmt.format(evaluation[key])}" for label, key, fmt in shown if evaluation.get(key) is not None]
    return ", ".join(parts) or "-"


def print_table(runs: dict[str, dict | None], failed: dict[str, str], out: Path) -> None:
    print(f"\nrecipes under {out}: first and last evaluation, minutes of the run's loop (set-up excluded)\n")
    print("| recipe | start | end | steps | minutes |")
    print("|---|---|---|---|---|")
    for label, run in runs.items():
        if run is None:
            print(f"| {label} | - | {failed.get(label, 'no finished run')} | - | - |")
            continue
        shown = next((s for prefix, s in SHOWN.items() if label.startswith(prefix)), ACCURACY)
        evals = run["evaluations"]
        first, last = (evals[0], evals[-1]) if evals else (None, None)
        minutes = f"{run['loop_seconds'] / 60:.1f}" if run["loop_seconds"] is not None else "-"
        print(f"| {label} | {cell(first, shown)} | {cell(last, shown)} | {run['steps']} | {minutes} |")


def main() -> int:
    recipes = all_recipes()
    args = parse_args(list(recipes))
    args.out, args.json = args.out.resolve(), args.json.resolve()  # before load() moves to the checkout
    args.out.mkdir(parents=True, exist_ok=True)
    configs = load(recipes)
    reusable = reusable_warm_starts(configs)
    run_names = {name: reusable[name][1] if name in reusable else cfg.run.name for name, cfg in configs.items()}
    selected = run_order(args.only or list(recipes), reusable)
    failed, wall = {}, {}
    for name in selected if not args.report_only else ():
        print(f"running {name} ({recipes[name]}) ...", flush=True)
        try:  # seconds of the child process, warm starts it trained included; 0 when reused
            wall[name] = train(recipes[name], run_names[name], configs[name].run.seed, args.out, [], name)
        except SystemExit as failure:  # one broken recipe leaves the others' results
            failed[name] = str(failure)
            print(f"  {failure}", flush=True)
    runs = {name: read_run(args.out / run_names[name]) for name in selected}
    shown_runs = {run_names[name] for name in selected}
    warm_starts = {warm_start_folder(configs[name], configs) for name in selected if configs[name].warm_start.recipe}
    warm_runs = {f"{folder} (warm start)": read_run(args.out / folder) for folder in sorted(warm_starts - shown_runs)}
    print_table({**runs, **warm_runs}, failed, args.out)
    write_results(args.json, {
        "out": str(args.out), "recipes": {name: recipes[name] for name in selected},
        "runs": {name: run and {**run, "run_name": run_names[name], "wall_seconds": wall.get(name) or None}
                 for name, run in runs.items()},
        "warm_starts": warm_runs, "failed": failed})
    print(f"\nraw results: {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
