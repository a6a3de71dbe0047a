"""`rlft samples`: a run's sampled rollouts (rlft.samples) in the terminal, one panel each.

Texts are rich `Text`, never markup: a completion that contains "[/b]" prints as written. In an
episode the model's turns and the environment's observations get different labels and styles,
so what the model wrote is never confused with what it was shown.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.text import Text

VERDICT = {True: ("correct", "green"), False: ("incorrect", "red"), None: ("not checked", "yellow")}
TURN_STYLE = {"turn": ("model", "bold"), "observation": ("observation", "dim cyan")}


def _labelled(label: str, text: str, style: str = "") -> Text:
    out = Text(f"{label}\n", style="bold underline")
    out.append(text if text else "(empty)", style=style)
    return out


def _rewards_line(record: dict[str, Any]) -> Text:
    title = "oracle scores" if record["kind"] == "sequence" else "reward"
    total = record["reward"]
    line = Text(f"{title} ", style="bold")
    line.append("-" if total is None else f"{total:.4g}")
    if record["rewards"]:
        line.append("  (" + ", ".join(f"{name} {value:.4g}" for name, value in record["rewards"].items()) + ")")
    return line


def _turns(record: dict[str, Any]) -> list[Text]:
    parts, turn = [], 0
    for segment in record["turns"]:
        label, style = TURN_STYLE.get(segment["kind"], (segment["kind"], ""))
        if segment["kind"] == "turn":
            turn += 1
            label = f"{label} turn {turn}"
        parts.append(_labelled(f"{label} ({segment['tokens']} tokens)", segment["text"], style))
    return parts


def render(record: dict[str, Any]) -> Panel:
    """One record as a panel: verdict and versions in the title, texts and rewards in the body."""
    verdict, colour = VERDICT[record["correct"]]
    parts: list[Text] = []
    if record["kind"] == "sequence":
        parts.append(_labelled("sequence", record["sequence"]))
    else:
        parts.append(_labelled("prompt", record["prompt"], "dim"))
        parts += _turns(record) if record["kind"] == "episode" else [_labelled("completion", record["completion"])]
    if record.get("answer") is not None:
        label = "target" if record["kind"] == "sequence" else "expected answer"
        parts.append(Text(f"{label}: {record['answer']}", style="italic"))
    parts.append(_rewards_line(record))
    unit = "bases" if record["kind"] == "sequence" else "tokens"
    title = (f"step {record['step']} · {record['source']} sample {record['index']} (group {record['group']}) · "
             f"[{colour}]{verdict}[/{colour}]")
    subtitle = (f"{record['length']} {unit} · version {record['version']} · staleness {record['staleness']}"
                + (f" · ended: {record['finish_reason']}" if record.get("finish_reason") else ""))
    return Panel(Group(*parts), title=title, subtitle=Text(subtitle), border_style=colour, title_align="left")


def print_samples(records: list[dict[str, Any]], heading: str, console: Console | None = None) -> None:
    console = console or Console()
    console.print(Text(heading, style="bold"), soft_wrap=True)  # a path reads best unbroken
    for record in records:
        console.print(render(record))


def heading(path, records: list[dict[str, Any]], shown: list[dict[str, Any]], filters: list[str]) -> str:
    """What the file holds and what is shown: "<path>: 24 samples at steps 1-6; showing 4 (incorrect)"."""
    if not records:
        return f"{path}: no samples yet"
    steps = [r["step"] for r in records]
    return (f"{path}: {len(records)} samples at steps {min(steps)}-{max(steps)}; showing {len(shown)}"
            + (f" ({', '.join(filters)})" if filters else ""))
