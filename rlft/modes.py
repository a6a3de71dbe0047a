"""Evaluation by reasoning mode (ThinkDial, docs/algorithms.md#act-score): accuracy and mean
response tokens per mode, the ACT score against a base, the comparison table and its bar chart.

Examples carry their mode in `meta["mode"]` (the `arith_think` task); tasks without modes add no
metrics here. Cost = mean completion tokens (thinking + answer) of the greedy eval responses.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlft.data.thinkdial import MODES
from rlft.rewards.budget import act_score


def mode_metrics(examples, correct: list[bool], lengths: list[int], prefix: str = "eval") -> dict[str, float]:
    """{prefix}/accuracy_<mode> and {prefix}/tokens_<mode> for every mode present (none without modes)."""
    by_mode: dict[str, list[int]] = {}
    for i, example in enumerate(examples):
        mode = example.meta.get("mode")
        if mode is not None:
            by_mode.setdefault(mode, []).append(i)
    metrics = {}
    for mode, members in by_mode.items():
        metrics[f"{prefix}/accuracy_{mode}"] = sum(bool(correct[i]) for i in members) / len(members)
        metrics[f"{prefix}/tokens_{mode}"] = sum(lengths[i] for i in members) / len(members)
    return metrics


def modes_of(metrics: dict[str, float], prefix: str = "eval") -> list[str]:
    found = [key[len(f"{prefix}/accuracy_"):] for key in metrics if key.startswith(f"{prefix}/accuracy_")]
    return sorted(found, key=lambda m: (MODES.index(m) if m in MODES else len(MODES), m))


def act_against(metrics: dict[str, float], base: dict[str, float], prefix: str = "eval") -> float | None:
    """ACT of `metrics`' modes with the base's high mode as Acc_base / Cost_base (None without one)."""
    modes = modes_of(metrics, prefix)
    base_acc, base_cost = base.get(f"{prefix}/accuracy_high"), base.get(f"{prefix}/tokens_high")
    if not modes or not base_acc or not base_cost:
        return None
    return act_score({m: metrics[f"{prefix}/accuracy_{m}"] for m in modes},
                     {m: metrics[f"{prefix}/tokens_{m}"] for m in modes}, base_acc, base_cost)


def mode_table(final: dict[str, float], start: dict[str, float] | None = None, prefix: str = "eval") -> list[dict]:
    """One row per mode: accuracy and tokens (at the start and the end), and, against the final high
    mode, the relative accuracy drop and the token saving."""
    high_acc, high_cost = final.get(f"{prefix}/accuracy_high"), final.get(f"{prefix}/tokens_high")
    rows = []
    for mode in modes_of(final, prefix):
        acc, cost = final[f"{prefix}/accuracy_{mode}"], final[f"{prefix}/tokens_{mode}"]
        row = {"mode": mode, "accuracy": acc, "tokens": cost}
        if start and f"{prefix}/accuracy_{mode}" in start:
            row.update(accuracy_start=start[f"{prefix}/accuracy_{mode}"], tokens_start=start[f"{prefix}/tokens_{mode}"])
        if high_acc:
            row["accuracy_drop"] = 1 - acc / high_acc
        if high_cost:
            row["token_saving"] = 1 - cost / high_cost
        rows.append(row)
    return rows


def format_table(rows: list[dict], act: float | None = None) -> str:
    has_start = any("accuracy_start" in r for r in rows)
    head = f"{'mode':<7} " + (f"{'acc@start':>9} {'tok@start':>9} " if has_start else "") + \
        f"{'accuracy':>8} {'tokens':>7} {'acc drop':>8} {'saving':>7}"
    lines = [head]
    for r in rows:
        start = f"{r.get('accuracy_start', float('nan')):>9.3f} {r.get('tokens_start', float('nan')):>9.1f} " if has_start else ""
        drop = f"{r['accuracy_drop']:>8.1%}" if "accuracy_drop" in r else f"{'-':>8}"
        saving = f"{r['token_saving']:>7.1%}" if "token_saving" in r else f"{'-':>7}"
        lines.append(f"{r['mode']:<7} {start}{r['accuracy']:>8.3f} {r['tokens']:>7.1f} {drop} {saving}")
    if act is not None:
        lines.append(f"ACT score (base: high mode at the start): {act:.3f}")
    return "\n".join(lines)


def plot_modes(rows: list[dict], path: Path, title: str = "") -> Path:
    """Bars of accuracy and mean tokens per mode, at the start (light) and the end (dark)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [r["mode"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key, label in ((axes[0], "accuracy", "held-out accuracy"), (axes[1], "tokens", "mean response tokens")):
        x = range(len(modes))
        if all(f"{key}_start" in r for r in rows):
            ax.bar([i - 0.2 for i in x], [r[f"{key}_start"] for r in rows], 0.4, label="start", color="#9ecae1")
            ax.bar([i + 0.2 for i in x], [r[key] for r in rows], 0.4, label="end", color="#3182bd")
            ax.legend()
        else:
            ax.bar(list(x), [r[key] for r in rows], 0.6, color="#3182bd")
        ax.set_xticks(list(x), modes)
        ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_mode_report(run_dir: Path, final: dict[str, float], start: dict[str, float] | None) -> str | None:
    """modes.json and modes.png in the run folder; returns the printed table (None without modes)."""
    rows = mode_table(final, start)
    if not rows:
        return None
    act = act_against(final, start or final)
    run_dir = Path(run_dir)
    (run_dir / "modes.json").write_text(json.dumps({"modes": rows, "act": act}, indent=1))
    plot_modes(rows, run_dir / "modes.png", title=run_dir.name)
    return format_table(rows, act)
