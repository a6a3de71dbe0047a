"""Reasoning steps of a response: the text between step delimiters (one step per line for arith).

A delimiter belongs to the step it ends. Tokens are assigned by their first character, so a token
that holds a delimiter and more (a BPE merge such as ".\n\n") ends its step.
"""

from __future__ import annotations

from bisect import bisect_right

from rlft.types import Segment


def step_of_tokens(text: str, offsets: list[tuple[int, int]], delimiter: str) -> list[int]:
    """Step index of each token from its character span (start, end) in `text`."""
    ends, start = [], text.find(delimiter)
    while start != -1:
        ends.append(start + len(delimiter))
        start = text.find(delimiter, start + len(delimiter))
    return [bisect_right(ends, first) for first, _ in offsets]


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """The text of each token on its own ("" for special tokens)."""
    return [tokenizer.decode([token], skip_special_tokens=True) for token in ids]


def token_steps(tokenizer, ids: list[int], delimiter: str, pieces: list[str] | None = None) -> list[int]:
    """Step index of each generated token, from the text of each token on its own. Tokens without
    text (EOS and other special tokens) join the step of the token before them."""
    pieces = token_pieces(tokenizer, ids) if pieces is None else pieces
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    steps = step_of_tokens("".join(pieces), offsets, delimiter)
    for t in range(len(steps)):
        if not pieces[t]:
            steps[t] = steps[t - 1] if t else 0
    return steps


def step_segments(steps: list[int]) -> list[Segment]:
    """Per-token step indices (non-decreasing) -> one step Segment per run of equal indices."""
    segments, start = [], 0
    for t in range(1, len(steps) + 1):
        if t == len(steps) or steps[t] != steps[start]:
            segments.append(Segment(start, t, "step"))
            start = t
    return segments


def completion_steps(tokenizer, ids: list[int], delimiter: str) -> list[Segment]:
    """Step segments of a completion, each with the text of its tokens (what progress trackers read)."""
    pieces = token_pieces(tokenizer, ids)
    return [Segment(s.start, s.end, "step", "".join(pieces[s.start:s.end]))
            for s in step_segments(token_steps(tokenizer, ids, delimiter, pieces))]


def segment_steps(segments: list[Segment], length: int) -> list[int]:
    """The inverse: per-token step index [length] from step segments (0 where none covers a token)."""
    steps = [0] * length
    for k, segment in enumerate(s for s in segments if s.kind == "step"):
        steps[segment.start:segment.end] = [k] * (segment.end - segment.start)
    return steps
