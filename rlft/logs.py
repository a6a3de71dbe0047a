"""Where log lines go: the console, `<run>/train.log`, and `<run>/logs/<role>-<i>.log`
(docs/design.md#logs).

`runtime.log_level` picks one of three plans (`plan`):

* `quiet` (the default): the console shows the progress bars, rlft's own warnings and errors,
  errors logged by any library, and the summary. The driver's other lines (rlft's INFO, Ray's start-up
  lines, Python warnings, whatever a library logs) go to `<run>/train.log`. Each remote role
  member writes its stdout and stderr (vLLM, DeepSpeed, torch, Ray's worker lines, prints and
  C-level output, its child processes' too) to `<run>/logs/<role>-<i>.log`, and passes only rlft's
  warnings and any error on to the console (through Ray, prefixed with the actor and its pid).
* `info` (`rlft train --verbose`): nothing is moved; every process writes to the console as it
  always did, and `<run>/train.log` keeps the driver's lines as well.
* `debug`: `info`, with rlft, vLLM and DeepSpeed at DEBUG.

Everything here is standard `logging` and file descriptors; no rlft module is imported, so roles,
the runtime and the command line can all use it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

LOG_LEVELS = ("quiet", "info", "debug")
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"  # the command line's (rlft.cli)
OUTPUT_TAIL_LINES = 20  # lines of a role member's log file an error message quotes
LOGS_FOLDER = "logs"  # <run>/logs/<role>-<i>.log

_KEPT: list[Any] = []  # streams a role member writes to for the rest of its life


@dataclass(frozen=True)
class LogPlan:
    """What one `runtime.log_level` means."""

    to_files: bool  # role members' output goes to <run>/logs/, the driver's library lines to train.log only
    level: int  # the level of rlft's loggers and, where set, of vLLM's and DeepSpeed's
    console_rlft: int  # the least severe record of rlft's own the console shows
    console_other: int  # the least severe record of any other logger the console shows
    capture_warnings: bool  # Python warnings become log records (py.warnings), so they reach the files
    library_levels: bool  # vLLM and DeepSpeed get `level` (else they keep their own defaults)


def plan(log_level: str) -> LogPlan:
    if log_level == "quiet":
        return LogPlan(True, logging.INFO, logging.WARNING, logging.ERROR, True, True)
    if log_level == "info":
        return LogPlan(False, logging.INFO, logging.INFO, logging.WARNING, False, False)
    if log_level == "debug":
        return LogPlan(False, logging.DEBUG, logging.DEBUG, logging.INFO, False, True)
    raise ValueError(f"unknown runtime.log_level {log_level!r}; expected one of {', '.join(LOG_LEVELS)}")


def is_rlft(name: str) -> bool:
    return name == "rlft" or name.startswith("rlft.")


def console_shows(name: str, levelno: int, log_plan: LogPlan) -> bool:
    """Whether a record of logger `name` at `levelno` reaches the console."""
    return levelno >= (log_plan.console_rlft if is_rlft(name) else log_plan.console_other)


class ConsoleFilter(logging.Filter):
    """Lets through what `console_shows` lets through (on a console handler)."""

    def __init__(self, log_plan: LogPlan):
        super().__init__()
        self.plan = log_plan

    def filter(self, record: logging.LogRecord) -> bool:
        return console_shows(record.name, record.levelno, self.plan)


def library_env(log_level: str, engine_in_process: bool, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment variables for vLLM, to set before it is imported; a variable already set (by the
    user) is left alone. vLLM reads them in vllm/envs.py (VLLM_LOGGING_LEVEL, VLLM_CONFIGURE_LOGGING)
    and applies them when an engine is built (vllm/logger.py, _configure_vllm_root_logger).

    `engine_in_process`: the engine core and its worker run in this process (inline mode, or
    generator.engine_processes=in_actor). Quiet, vLLM then adds no handler of its own and its lines go
    through the root logger like any library's (to the files; its errors to the console). With separate
    engine processes vLLM keeps its own handler: it writes to their stdout, which they inherit from the
    role member, so to the member's log file."""
    environ = os.environ if environ is None else environ
    log_plan = plan(log_level)
    wanted: dict[str, str] = {}
    if log_plan.library_levels:
        wanted["VLLM_LOGGING_LEVEL"] = logging.getLevelName(log_plan.level)
    # vLLM refuses a logging config file with its configuration turned off
    if log_plan.to_files and engine_in_process and "VLLM_LOGGING_CONFIG_PATH" not in environ:
        wanted["VLLM_CONFIGURE_LOGGING"] = "0"
    return {key: value for key, value in wanted.items() if key not in environ}


def set_library_loggers(log_level: str) -> None:
    """DeepSpeed's logger (deepspeed/utils/logging.py: "DeepSpeed", WARNING, its own stdout handler,
    not propagating), once `deepspeed` is imported. Quiet: INFO, through the root logger (the files;
    errors to the console); debug: DEBUG; info: as DeepSpeed leaves it."""
    log_plan = plan(log_level)
    if not log_plan.library_levels:
        return
    speed = logging.getLogger("DeepSpeed")
    speed.setLevel(log_plan.level)
    if log_plan.to_files:
        adopt("DeepSpeed")
    else:
        for handler in speed.handlers:
            handler.setLevel(log_plan.level)


def adopt(name: str) -> None:
    """A library logger that has handlers of its own and does not propagate (Ray's, DeepSpeed's) sends
    its records to the root logger's handlers instead, like any library's."""
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True


# ----------------------------------------------------------------- the driver
@contextmanager
def console_for(log_level: str) -> Iterator[LogPlan]:
    """The driver's console while a command runs (rlft.cli): records through the root logger's console
    handlers as `plan(log_level)` says, the root at INFO (so train.log gets the libraries' INFO lines),
    rlft at the plan's level, Python warnings captured when quiet. Everything is put back on exit."""
    log_plan = plan(log_level)
    root, rlft = logging.getLogger(), logging.getLogger("rlft")
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format=CONSOLE_FORMAT)
    consoles = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout)]
    added = ConsoleFilter(log_plan)
    saved = (root.level, rlft.level)
    for handler in consoles:
        handler.addFilter(added)
    root.setLevel(min(logging.INFO, log_plan.level))
    rlft.setLevel(log_plan.level)
    logging.captureWarnings(log_plan.capture_warnings)
    try:
        yield log_plan
    finally:
        for handler in consoles:
            handler.removeFilter(added)
        root.setLevel(saved[0])
        rlft.setLevel(saved[1])
        logging.captureWarnings(False)


def attach_run_log(path: Path, log_level: str) -> logging.Handler:
    """`<run>/train.log`: every record that reaches the root logger (rlft's at the plan's level; other
    libraries' as the root's level lets them: INFO under the command line)."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    logging.getLogger().addHandler(handler)
    rlft = logging.getLogger("rlft")
    if rlft.level == logging.NOTSET or rlft.level > plan(log_level).level:
        rlft.setLevel(plan(log_level).level)
    return handler


def detach_run_log(handler: logging.Handler) -> None:
    logging.getLogger().removeHandler(handler)
    handler.close()


def route_ray_driver_logs(log_level: str) -> None:
    """Quiet: Ray's driver lines ("Started a local Ray instance.", ...) go where every library's go.
    Ray gives its "ray" logger a stderr handler of its own and stops it propagating
    (ray/_private/log.py, generate_logging_config); `ray.init(configure_logging=True)` then only sets
    that logger's level and formatters (ray/_private/ray_logging/__init__.py, setup_logger)."""
    if plan(log_level).to_files:
        adopt("ray")


# ----------------------------------------------------------------- role members
def member_log_path(folder: Path, kind: str, index: int) -> Path:
    return Path(folder) / f"{kind}-{index}.log"


def route_member_output(_actor: Any, path: str, log_level: str) -> str | None:
    """Inside a role member's process (rlft.runtime runs it first, with Ray's `__ray_call__`): its
    stdout and stderr (file descriptors 1 and 2, so also C-level output and the child processes it
    starts later) go to `path`, appended; the root logger writes there too, at the plan's level, and
    passes rlft's warnings and any error to the stream Ray forwards to the driver's console.
    Returns the file, or None when it could not be opened (the output then stays where it was)."""
    log_plan = plan(log_level)
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        logging.getLogger(__name__).warning("output of pid %d stays on the console: %s", os.getpid(), err)
        return None
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            pass
    console = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")  # Ray's copy to the driver
    _KEPT.append(console)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.write(1, f"==== {target.stem}: pid {os.getpid()}, {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())

    root = logging.getLogger()
    to_file = logging.FileHandler(target, encoding="utf-8")  # appends, like the descriptors
    to_file.setFormatter(logging.Formatter(FILE_FORMAT))
    to_console = logging.StreamHandler(console)
    to_console.setFormatter(logging.Formatter(CONSOLE_FORMAT))
    to_console.addFilter(ConsoleFilter(log_plan))
    root.addHandler(to_file)
    root.addHandler(to_console)
    root.setLevel(min(logging.INFO, log_plan.level))
    logging.getLogger("rlft").setLevel(log_plan.level)
    adopt("ray")  # Ray's worker-side logger: its errors reach the console too
    logging.captureWarnings(log_plan.capture_warnings)
    return str(target)


def tail(path: Path, lines: int = OUTPUT_TAIL_LINES, max_bytes: int = 1 << 16, width: int = 400) -> list[str] | None:
    """The last `lines` lines of a log file as a terminal would have shown them (of a line rewritten
    with carriage returns, a progress bar's, only its last state), each cut at `width` characters;
    None when the file is missing or empty."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return None
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes and "\n" in text:
        text = text.partition("\n")[2]  # the first line read may be a part of one
    shown = [line.rstrip("\r").rpartition("\r")[2].rstrip() for line in text.split("\n")]
    while shown and not shown[-1]:
        shown.pop()
    if not shown:
        return None
    return [line if len(line) <= width else line[:width] + " ..." for line in shown[-lines:]]


def output_note(who: str, path: Path, lines: int = OUTPUT_TAIL_LINES) -> str | None:
    """The text an error message adds about a role member: its log file and the file's last lines."""
    last = tail(path, lines)
    if last is None:
        return f"{who}'s output: {path} (empty)" if Path(path).is_file() else None
    return f"{who}'s output: {path}; its last {len(last)} lines:\n" + "\n".join(f"    {line}" for line in last)
