"""The documentation a maintainer needs lives in the repository (docs/design.md, docs/algorithms.md).

Pure file reading: no rlft import, no torch. Two checks over the source, test, benchmark, launch,
recipe and documentation files and README.md:

* nothing cites a design or algorithm document that is not in the repository (the notes outside
  it that early docstrings pointed at by section number);
* every reference to `docs/<name>.md`, with or without `#anchor`, names a file that exists and,
  with an anchor, a heading of that file that produces it (GitHub's heading slugs); relative links
  inside docs/*.md are checked the same way.

The patterns below spell one letter of each name as a character class, so this file does not match
its own patterns; code that uses the algorithm registry (`ALGORITHMS[name]`) matches none of them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED_DIRS = ("rlft", "tests", "bench", "launch", "configs", "docs")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".txt", ".toml", ".cfg", ".ini"}

OUTSIDE_DOCUMENT = [
    re.compile(r"\bDESIG[N](?:\.md\b|,|\s+section\b|\s*§)"),       # the design notes, by name or section
    re.compile(r"\bALGORITHM[S](?:\.md\b|\s+section\b|\s*§)"),       # the algorithm notes (not the registry)
    re.compile(r"\bspe[c]/"),                                        # their folder
    re.compile(r"\bspe[c](?:\s+section)?\s+\d"),                     # their section numbers
    re.compile(r"\b(?:STYL[E]|PLATFOR[M])\.md\b"),                   # style and platform notes
    re.compile(r"/work/share[d]\b"),                                 # where they live
]

DOC_REFERENCE = re.compile(r"\bdocs/([A-Za-z0-9_.-]+?)\.md(?:#([A-Za-z0-9_-]+))?")
RELATIVE_LINK = re.compile(r"\]\((?!https?:|mailto:)([A-Za-z0-9_./-]*?\.md)?(?:#([A-Za-z0-9_-]+))?\)")
MARKDOWN_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED_DIRS:
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                files.append(path)
    return files


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text only, lowercase, punctuation other than '-' and '_'
    dropped, spaces to '-'."""
    text = MARKDOWN_LINK.sub(r"\1", heading).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Every anchor the headings of a markdown text produce (repeated slugs get -1, -2, ...)."""
    found: dict[str, int] = {}
    out: set[str] = set()
    in_fence = False
    for line in markdown.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        match = None if in_fence else re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = slug(match.group(1))
            count = found.get(base, 0)
            out.add(base if count == 0 else f"{base}-{count}")
            found[base] = count + 1
    return out


def test_slugs_follow_github():
    assert slug("GPPO") == "gppo"
    assert slug("PPO, GRPO, DAPO and Dr.GRPO") == "ppo-grpo-dapo-and-drgrpo"
    assert slug("Rollout-training mismatch") == "rollout-training-mismatch"
    assert slug("DPO (`rlft/algorithms/dpo.py`, [math](docs/algorithms.md#dpo))") == "dpo-rlftalgorithmsdpopy-math"
    assert anchors("# A\n```\n# not a heading\n```\n## A\n") == {"a", "a-1"}


def test_nothing_cites_a_document_outside_the_repository():
    offending = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(pattern.search(line) for pattern in OUTSIDE_DOCUMENT):
                offending.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offending, "cite docs/design.md or docs/algorithms.md instead:\n" + "\n".join(offending)


@pytest.mark.parametrize("name", ["design", "algorithms"])
def test_the_maintainer_documents_exist(name):
    assert (ROOT / "docs" / f"{name}.md").is_file()


def test_every_docs_reference_resolves_to_a_file_and_a_heading():
    headings: dict[Path, set[str]] = {}

    def check(target: Path, anchor: str | None, where: str, problems: list[str]) -> None:
        if not target.is_file():
            problems.append(f"{where}: no file {target.relative_to(ROOT)}")
        elif anchor is not None:
            if target not in headings:
                headings[target] = anchors(target.read_text(encoding="utf-8"))
            if anchor not in headings[target]:
                problems.append(f"{where}: {target.relative_to(ROOT)} has no heading with anchor #{anchor}")

    problems: list[str] = []
    checked = 0
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{path.relative_to(ROOT)}:{number}"
            for match in DOC_REFERENCE.finditer(line):
                check(ROOT / "docs" / f"{match.group(1)}.md", match.group(2), where, problems)
                checked += 1
            if path.suffix == ".md" and path.parent == ROOT / "docs":
                for match in RELATIVE_LINK.finditer(line):
                    target = path.parent / match.group(1) if match.group(1) else path
                    if match.group(1) or match.group(2):
                        check(target.resolve(), match.group(2), where, problems)
                        checked += 1
    assert checked > 50, f"only {checked} references found: is the pattern still right?"
    assert not problems, "\n".join(problems)
