"""The ThinkDial recipe end to end on the tiny model (configs/thinkdial_*_tiny_arith.yaml, shortened):
budget-mode SFT, high-mode warm-up, budget-aware shaping, each phase starting from the last one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlft.config import load_config
from rlft.control import train

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHORTER = {  # the recipes' own settings, with fewer steps and examples
    "thinkdial_sft_tiny_arith": {"train": {"steps": 100, "batch_size": 32, "micro_batch_size": 16},
                                 "task": {"train_size": 400, "eval_size": 20}},
    "thinkdial_warmup_tiny_arith": {"train": {"steps": 2}, "task": {"eval_size": 20}},
    "thinkdial_tiny_arith": {"train": {"steps": 2, "eval_every": 0}, "task": {"eval_size": 20}},
}


def _shortened(tmp_path: Path) -> Path:
    for name, changes in SHORTER.items():
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        for section, values in changes.items():
            raw[section].update(values)
        raw["eval"].update(num_examples=60, batch_size=60)
        raw["run"]["output_dir"] = str(tmp_path / "runs")
        raw["tracking"] = {"wandb": "disabled", "plots": False}
        if "warm_start" in raw:
            raw["warm_start"]["recipe"] = str(tmp_path / Path(raw["warm_start"]["recipe"]).name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    return tmp_path / "thinkdial_tiny_arith.yaml"


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.long
def test_thinkdial_recipe_runs_its_three_phases_and_reports_by_mode(tmp_path):
    summary = train(load_config(_shortened(tmp_path)), show_progress=False)
    runs = tmp_path / "runs"

    # BM-SFT: the mode prompt alone sets how long the model thinks.
    sft = json.loads((runs / "thinkdial_sft_tiny_arith" / "modes.json").read_text())["modes"]
    tokens = {row["mode"]: row["tokens"] for row in sft}
    assert tokens["low"] < tokens["medium"] < tokens["high"], tokens

    # Warm-up: high-mode prompts only, answer reward only.
    warmup = _metrics(runs / "thinkdial_warmup_tiny_arith")
    trained = [row for row in warmup if "rollout/tokens_high" in row]
    assert trained and not any("rollout/tokens_low" in row or "reward/budget" in row for row in trained)

    # Shaping: every mode is trained, with the budget component beside the answer.
    shaping = _metrics(Path(summary["run_dir"]))
    trained = [row for row in shaping if "reward/budget" in row]
    assert trained and all(f"rollout/tokens_{mode}" in trained[-1] for mode in ("high", "medium", "low"))
    final = [row for row in shaping if "eval/act" in row][-1]
    assert {f"eval/accuracy_{mode}" for mode in ("high", "medium", "low")} <= set(final)
    report = json.loads((Path(summary["run_dir"]) / "modes.json").read_text())
    assert [row["mode"] for row in report["modes"]] == ["high", "medium", "low"] and report["act"] == final["eval/act"]
    assert (Path(summary["run_dir"]) / "modes.png").stat().st_size > 0
