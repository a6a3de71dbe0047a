"""Where log lines go (rlft.logs): the config field and flag, the plan of each level, the environment
vLLM gets, a role member's output routed to its file, and the tail an error message quotes.

Pure and fast: no Ray, no vLLM. The member routing runs in a subprocess of its own (it moves that
process's file descriptors 1 and 2).
"""

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlft.cli import build_parser, train_log_level
from rlft.config import ConfigError, load_config
from rlft.faults import member_of, note_member_output
from rlft.logs import (ConsoleFilter, console_for, console_shows, library_env, member_log_path, output_note, plan,
                       tail)

ROOT = Path(__file__).resolve().parents[1]
BASE = "task: {name: arith}\nalgorithm: {name: sft}\n"


# ----------------------------------------------------------------- config and command line
def test_log_level_defaults_to_quiet_and_takes_info_and_debug(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE)
    assert load_config(recipe).runtime.log_level == "quiet"
    assert load_config(recipe, ["runtime.log_level=debug"]).runtime.log_level == "debug"
    with pytest.raises(ConfigError, match="log_level"):
        load_config(recipe, ["runtime.log_level=loud"])


def test_verbose_flag_turns_quiet_into_info_and_keeps_debug():
    args = build_parser().parse_args(["train", "r.yaml", "train.lr=1", "--verbose"])
    assert args.verbose and args.overrides == ["train.lr=1"]
    assert not build_parser().parse_args(["train", "r.yaml"]).verbose
    assert train_log_level("quiet", True) == "info"
    assert train_log_level("debug", True) == "debug"
    assert train_log_level("quiet", False) == "quiet"


# ----------------------------------------------------------------- plans
def test_quiet_console_shows_rlft_warnings_and_any_error_only():
    quiet = plan("quiet")
    assert quiet.to_files and quiet.capture_warnings and quiet.level == logging.INFO
    assert console_shows("rlft.controller", logging.WARNING, quiet)
    assert not console_shows("rlft.controller", logging.INFO, quiet)
    assert not console_shows("rlftx", logging.WARNING, quiet)  # another package, not rlft's
    for library in ("vllm.engine", "ray", "DeepSpeed", "py.warnings", "torch.distributed"):
        assert not console_shows(library, logging.WARNING, quiet), library
        assert console_shows(library, logging.ERROR, quiet), library


def test_info_is_the_console_as_before_and_debug_adds_debug():
    info, debug = plan("info"), plan("debug")
    assert not info.to_files and not info.library_levels and not info.capture_warnings
    assert console_shows("rlft", logging.INFO, info) and not console_shows("ray", logging.INFO, info)
    assert console_shows("vllm", logging.WARNING, info)
    assert not debug.to_files and debug.level == logging.DEBUG and debug.library_levels
    assert console_shows("rlft.sync", logging.DEBUG, debug)
    with pytest.raises(ValueError, match="quiet, info, debug"):
        plan("loud")


def test_console_filter_follows_the_plan():
    quiet = ConsoleFilter(plan("quiet"))
    record = logging.LogRecord("vllm.v1.engine", logging.INFO, __file__, 1, "reset prefix cache", None, None)
    assert not quiet.filter(record)
    record.name, record.levelno = "rlft.faults", logging.WARNING
    assert quiet.filter(record)


def test_vllm_environment_for_each_level():
    assert library_env("quiet", engine_in_process=False, environ={}) == {"VLLM_LOGGING_LEVEL": "INFO"}
    # in this process: no handler of vLLM's own, its lines go through the root logger
    assert library_env("quiet", engine_in_process=True, environ={}) == {"VLLM_LOGGING_LEVEL": "INFO",
                                                                        "VLLM_CONFIGURE_LOGGING": "0"}
    assert library_env("info", engine_in_process=True, environ={}) == {}
    assert library_env("debug", engine_in_process=True, environ={}) == {"VLLM_LOGGING_LEVEL": "DEBUG"}
    # the user's own settings win; vLLM refuses a config file with its configuration off
    assert library_env("quiet", True, environ={"VLLM_LOGGING_LEVEL": "WARNING"}) == {"VLLM_CONFIGURE_LOGGING": "0"}
    assert library_env("quiet", True, environ={"VLLM_LOGGING_CONFIG_PATH": "/x.json"}) == {"VLLM_LOGGING_LEVEL": "INFO"}


def test_console_for_filters_the_console_and_puts_everything_back():
    root, rlft = logging.getLogger(), logging.getLogger("rlft")
    handler = logging.StreamHandler(sys.stderr)
    root.addHandler(handler)
    before = (root.level, rlft.level, list(handler.filters))
    try:
        with console_for("quiet") as quiet:
            assert quiet.to_files and root.level == logging.INFO and rlft.level == logging.INFO
            assert any(isinstance(f, ConsoleFilter) for f in handler.filters)
        assert (root.level, rlft.level, list(handler.filters)) == before
    finally:
        root.removeHandler(handler)


# ----------------------------------------------------------------- a member's output
def test_member_output_goes_to_its_file_and_rlft_warnings_to_the_console(tmp_path):
    """What a role member runs first (route_member_output), in a process of its own: prints, C-level
    writes and library INFO lines land in the file; rlft's warning and a library's error reach the stream
    Ray forwards to the driver (here: the subprocess's stderr), a library's warning does not."""
    path = member_log_path(tmp_path / "logs", "generator", 0)
    script = textwrap.dedent(f"""
        import logging, os, sys, warnings
        sys.path.insert(0, {str(ROOT)!r})
        from rlft.logs import route_member_output
        assert route_member_output(None, {str(path)!r}, "quiet") == {str(path)!r}
        print("a print")
        os.write(2, b"a C-level write\\n")
        logging.getLogger("vllm.engine").info("reset prefix cache")
        logging.getLogger("vllm.engine").warning("a library warning")
        logging.getLogger("ray").error("a library error")
        logging.getLogger("rlft.sync").warning("an rlft warning")
        logging.getLogger("rlft.sync").info("an rlft info line")
        warnings.warn("a deprecation", FutureWarning)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = path.read_text()
    for line in ("==== generator-0: pid", "a print", "a C-level write", "reset prefix cache", "a library warning",
                 "an rlft info line", "a deprecation"):
        assert line in written, line
    assert done.stdout == ""
    assert "WARNING rlft.sync: an rlft warning" in done.stderr and "ERROR ray: a library error" in done.stderr
    for line in ("a print", "reset prefix cache", "a library warning", "an rlft info line", "a deprecation"):
        assert line not in done.stderr, line


def test_tail_shows_the_last_lines_as_a_terminal_would(tmp_path):
    path = tmp_path / "learner-1.log"
    assert tail(path) is None  # no file
    path.write_text("")
    assert tail(path) is None and output_note("learner 1", path) == f"learner 1's output: {path} (empty)"
    path.write_text("".join(f"line {i}\n" for i in range(30)) + "Loading: 10%\rLoading: 100%\n" + "x" * 1000 + "\n\n")
    last = tail(path, lines=20)
    assert len(last) == 20 and last[0] == "line 12" and last[-2] == "Loading: 100%"
    assert last[-1] == "x" * 400 + " ..."
    # a big file: only its end is read, and a line cut by the start of that read is dropped
    path.write_text("y" * 200_000 + "\nend\n")
    assert tail(path, max_bytes=1000) == ["end"]
    path.write_text("z" * 5000)  # one line longer than what is read: its end
    assert tail(path, max_bytes=1000) == ["z" * 400 + " ..."]


class _Id:
    def __init__(self, value: str):
        self.value = value

    def hex(self) -> str:
        return self.value


class _Member:
    def __init__(self, actor_id: str):
        self._actor_id = _Id(actor_id)


class _Group:
    remote = True

    def __init__(self, name, ids, pids, logs):
        self.name, self.members, self.logs = name, [_Member(i) for i in ids], logs
        self.processes = [("node", pid) for pid in pids]


def _groups(tmp_path):
    logs = [member_log_path(tmp_path, "generator", i) for i in range(2)]
    for i, path in enumerate(logs):
        path.write_text("".join(f"generator {i} line {n}\n" for n in range(25)))
    return {"learner": _Group("learner", ["a" * 32], [100], None),
            "generator": _Group("generator", ["b" * 32, "c" * 32], [200, 300], logs)}


def test_the_member_an_error_names_and_its_output_note(tmp_path):
    groups = _groups(tmp_path)
    # a task's error: "(pid=..., ip=..., actor_id=..., repr=...)" in its message
    raised = ValueError(f"ray::GeneratorActor.generate() (pid=300, ip=1.2.3.4, actor_id={'c' * 32}, repr=x)\nboom")
    assert member_of(raised, groups) == ("generator", 1)
    # a dead actor: RayActorError.actor_id, and "\tpid: N" in the message
    died = RuntimeError("The actor died unexpectedly before finishing this task.\n\tpid: 200")
    assert member_of(died, groups) == ("generator", 0)
    died.actor_id = "A" * 32
    assert member_of(died, groups) == ("learner", 0)
    # wrapped: the innermost member an error names
    outer = RuntimeError(f"actor_id={'b' * 32}: an input could not be computed")
    outer.__cause__ = raised
    assert member_of(outer, groups) == ("generator", 1)
    assert member_of(RuntimeError("pid=999"), groups) is None

    note = note_member_output(raised, groups)
    assert note.startswith(f"generator 1's output: {groups['generator'].logs[1]}; its last 20 lines:")
    assert "generator 1 line 24" in note and "generator 1 line 4\n" not in note
    assert raised.__notes__ == [note]
    assert note_member_output(raised, groups) is None and raised.__notes__ == [note]  # once
    # a member without a log file (info level, or inline) adds nothing
    learner_died = RuntimeError(f"actor_id: {'a' * 32}")
    assert note_member_output(learner_died, groups) is None and not hasattr(learner_died, "__notes__")
    # the note can go on the error that explains the failure instead
    explained = RuntimeError("a learner rank died")
    note_member_output(RuntimeError("pid: 200"), groups, target=explained)
    assert explained.__notes__[0].startswith("generator 0's output")
