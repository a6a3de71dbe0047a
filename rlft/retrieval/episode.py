"""The text format of a multi-turn retrieval episode, and its pure scoring functions.

Each model turn ends in one action: `<search>query</search>` asks the environment for
documents, `<answer>text</answer>` ends the episode. After a search the environment appends
its observation, the refined documents between `<docs>` and `</docs>`, one per line:

    Bavo lives in which country?<search>Bavo lives</search><docs>Bavo lives in Tesk.
    Bavo visited Kern.</docs><search>Tesk city</search><docs>Tesk is a city in Orvan.</docs>
    <answer>Orvan</answer>

Observation tokens are the environment's, not the policy's: they carry no policy gradient and
no KL (docs/design.md#roles). Rewards (docs/algorithms.md#coverage-reward): coverage P_t is the
fraction of gold supporting documents retrieved by turn t, and turn t earns P_t - P_{t-1} - c.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
DOCS_OPEN, DOCS_CLOSE = "<docs>", "</docs>"
DOC_SEPARATOR = "\n"


@dataclass(frozen=True)
class Search:
    query: str


@dataclass(frozen=True)
class Answer:
    text: str


@dataclass(frozen=True)
class Malformed:
    reason: str


def parse_turn(text: str) -> Search | Answer | Malformed:
    """The action of one model turn: the first `<search>` or `<answer>` tag and its content
    (stripped). Anything else in the turn is free-form monologue. Never raises."""
    starts = {tag: text.find(tag) for tag in (SEARCH_OPEN, ANSWER_OPEN)}
    present = {tag: at for tag, at in starts.items() if at >= 0}
    if not present:
        return Malformed(f"no {SEARCH_OPEN} or {ANSWER_OPEN} tag")
    opening = min(present, key=present.get)
    closing = SEARCH_CLOSE if opening == SEARCH_OPEN else ANSWER_CLOSE
    content_start = present[opening] + len(opening)
    end = text.find(closing, content_start)
    if end < 0:
        return Malformed(f"unclosed {opening} tag")
    content = text[content_start:end].strip()
    if opening == SEARCH_OPEN:
        return Search(content) if content else Malformed("empty query")
    return Answer(content) if content else Malformed("empty answer")


def format_search(query: str) -> str:
    return f"{SEARCH_OPEN}{query}{SEARCH_CLOSE}"


def format_answer(text: str) -> str:
    return f"{ANSWER_OPEN}{text}{ANSWER_CLOSE}"


def format_observation(texts: list[str]) -> str:
    """The environment's reply to a search: the (refined) document texts, one per line."""
    return DOCS_OPEN + DOC_SEPARATOR.join(t.replace(DOC_SEPARATOR, " ") for t in texts) + DOCS_CLOSE


def coverage(retrieved_ids: set[int], supporting: tuple[int, ...]) -> float:
    """Fraction of the distinct gold supporting documents among `retrieved_ids` (exact id match).
    A question with no supporting documents is fully covered from the start."""
    gold = set(supporting)
    if not gold:
        return 1.0
    return len(gold & set(retrieved_ids)) / len(gold)


def turn_rewards(coverages: list[float], turn_cost: float = 0.0) -> list[float]:
    """Per-turn rewards r_t = P_t - P_{t-1} - turn_cost for t = 1..T, from `coverages` =
    [P_0, P_1, ..., P_T] where P_0 is the coverage before any turn. Potential-based, so the
    rewards sum to P_T - P_0 - T * turn_cost."""
    if not coverages:
        raise ValueError("coverages needs at least P_0")
    return [after - before - turn_cost for before, after in zip(coverages, coverages[1:])]


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised answers (1.0 if both are empty, 0.0 if one is)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)
