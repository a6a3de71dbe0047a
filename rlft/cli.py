"""Command line: `rlft train|eval|samples|plot|algorithms|doctor`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cmd_train(args: argparse.Namespace) -> int:
    from rlft.config import load_config
    from rlft.control import train
    from rlft.logs import console_for

    cfg = load_config(args.config, args.overrides)
    cfg.runtime.log_level = train_log_level(cfg.runtime.log_level, args.verbose)
    with console_for(cfg.runtime.log_level):
        train(cfg, show_progress=not args.quiet)
    return 0


def train_log_level(configured: str, verbose: bool) -> str:
    """runtime.log_level as `rlft train` runs it: --verbose shows everything (info), or more when the
    recipe or an override asked for debug."""
    return "info" if verbose and configured == "quiet" else configured


def _cmd_eval(args: argparse.Namespace) -> int:
    from rlft.config import load_config
    from rlft.control.evaluate import evaluate_checkpoint
    from rlft.progress import print_summary

    cfg = load_config(args.config, args.overrides)
    print_summary(evaluate_checkpoint(cfg, args.checkpoint, show_progress=not args.quiet), title="eval")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from rlft.tracking import plot_run

    for path in plot_run(Path(args.run_dir)):
        print(path)
    return 0


def _cmd_samples(args: argparse.Namespace) -> int:
    from rlft.samples import SAMPLES_FILE, latest, read_samples, select
    from rlft.samples_view import heading, print_samples

    records = latest(read_samples(Path(args.run_dir)))
    correct = True if args.correct else False if args.incorrect else None
    shown = select(records, args.last, correct, args.step)
    filters = [name for name, on in (("correct", args.correct), ("incorrect", args.incorrect),
                                     (f"step {args.step}", args.step is not None)) if on]
    print_samples(shown, heading(Path(args.run_dir) / SAMPLES_FILE, records, shown, filters))
    return 0


def _cmd_algorithms(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from rlft.algorithms import ALGORITHMS

    table = Table(title="algorithms (algorithm.name)")
    for column in ("name", "data source", "roles besides learners", "what"):
        table.add_column(column)
    for name in ALGORITHMS.names():
        spec = ALGORITHMS[name]
        table.add_row(name, spec.source, ", ".join(spec.roles) or "-", spec.summary)
    Console().print(table)
    from rlft.algorithms.gppo_advantages import ADVANTAGE_ESTIMATORS
    from rlft.algorithms.gppo_losses import POLICY_LOSSES

    for registry, title in ((POLICY_LOSSES, "gppo policy losses (algorithm.clip_mode)"),
                            (ADVANTAGE_ESTIMATORS, "gppo advantage estimators (algorithm.advantage)")):
        table = Table(title=title)
        for column in ("name", "fields", "what"):
            table.add_column(column)
        for name in registry.names():
            table.add_row(name, ", ".join(registry[name].fields) or "-", registry[name].summary)
        Console().print(table)
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rlft.doctor import devices, package_versions, run_checks
    from rlft.progress import print_summary

    print_summary(package_versions(), title="versions")
    print_summary(devices(), title="devices")
    checks = run_checks()
    print_summary(checks, title="checks")
    return 0 if all(v.startswith("ok") for v in checks.values()) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlft", description="Distributed RL post-training for language models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="run a recipe")
    train.add_argument("config", help="recipe YAML, e.g. configs/sft_tiny_arith.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=1e-4")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--verbose", action="store_true",
                       help="every process's log lines on the console (runtime.log_level=info); by default vLLM, Ray "
                            "and DeepSpeed write to RUN/train.log and RUN/logs/")
    train.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="score a checkpoint on the recipe's held-out split")
    ev.add_argument("config")
    ev.add_argument("overrides", nargs="*")
    ev.add_argument("--checkpoint", help="checkpoint folder (default: the base model)")
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_eval)
    samples = sub.add_parser("samples", help="print a run's latest sampled rollouts (RUN_DIR/samples.jsonl)")
    samples.add_argument("run_dir")
    samples.add_argument("--last", type=int, default=8, metavar="N", help="the newest N samples (default %(default)s)")
    verdict = samples.add_mutually_exclusive_group()
    verdict.add_argument("--correct", action="store_true", help="only rollouts the task checker marked correct")
    verdict.add_argument("--incorrect", action="store_true", help="only rollouts marked incorrect")
    samples.add_argument("--step", type=int, metavar="S", help="only the samples of optimizer step S")
    samples.set_defaults(func=_cmd_samples)
    plot = sub.add_parser("plot", help="write PNG plots of a run's metrics")
    plot.add_argument("run_dir")
    plot.set_defaults(func=_cmd_plot)
    algorithms = sub.add_parser("algorithms", help="list the registered algorithms and what each one is")
    algorithms.set_defaults(func=_cmd_algorithms)
    doctor = sub.add_parser("doctor", help="report versions, devices and whether Ray/DeepSpeed/vLLM work")
    doctor.set_defaults(func=_cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from rlft.config import ConfigError
    from rlft.control.resume import RunStopped
    from rlft.data.jsonl import DataError
    from rlft.errors import ResumeError, RunError
    from rlft.faults import LearnerFailed, RoleTimeout
    from rlft.sync.protocol import SyncError

    try:
        return args.func(args)
    except RunStopped as stopped:
        print(f"rlft: {stopped}", file=sys.stderr)
        return 128 + 15  # the exit status of a process ended by SIGTERM
    except (ConfigError, DataError, RunError, SyncError, ResumeError, LearnerFailed, RoleTimeout, FloatingPointError,
            FileNotFoundError, FileExistsError) as err:
        print(f"rlft: error: {err}", file=sys.stderr)
        for note in getattr(err, "__notes__", ()):  # e.g. the output of the role member that failed (rlft.faults)
            print(note, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
