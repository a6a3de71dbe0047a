"""Reader for HotpotQA-format JSONL into a retrieval `Corpus`.

One JSON object per line (blank lines skipped):

    {"question": str, "answer": str,
     "supporting_facts": [[title, sentence_index], ...],
     "context": [[title, [sentence, ...]], ...],
     optional "_id", "type", "level" (ignored, like any other key)}

Every context paragraph becomes one `Document` (its title, and its sentences joined by single
spaces). Paragraphs are shared across questions by title: the first paragraph read under a
title is kept and later ones with the same title reuse its id (HotpotQA repeats the same
Wikipedia paragraph across questions). A question's `supporting` holds the ids of the distinct
titles named in its supporting facts, in the order they first appear there; `hops` is their
number. Problems raise `DataError` starting with "<path>:<line>: ", as rlft.data.jsonl does.
"""

from __future__ import annotations

import os
from typing import Any

from rlft.data.jsonl import DataError, _json_type, _objects, _required, _required_str
from rlft.retrieval.corpus import Corpus, Document, MultiHopQuestion


def read_hotpot(path: str | os.PathLike) -> Corpus:
    """The corpus of every paragraph and question in a HotpotQA-format JSONL file."""
    documents: list[Document] = []
    id_by_title: dict[str, int] = {}
    questions = []
    for where, obj in _objects(path):
        question = _required_str(obj, "question", where)
        answer = _required_str(obj, "answer", where)
        paragraphs = _context(obj, where)
        supporting_titles = _supporting_titles(obj, where)
        for title in supporting_titles:
            if title not in paragraphs:
                raise DataError(f"{where}: supporting title {title!r} is not in 'context'")
        for title, text in paragraphs.items():
            if title not in id_by_title:
                id_by_title[title] = len(documents)
                documents.append(Document(id=id_by_title[title], title=title, text=text))
        supporting = tuple(id_by_title[title] for title in supporting_titles)
        questions.append(MultiHopQuestion(question=question, answer=answer,
                                          supporting=supporting, hops=len(supporting)))
    return Corpus(documents=documents, questions=questions)


def _context(obj: dict[str, Any], where: str) -> dict[str, str]:
    """Title -> paragraph text of the row's 'context' (the first paragraph wins a repeated title)."""
    context = _required(obj, "context", where)
    if not isinstance(context, list):
        raise DataError(f"{where}: 'context' must be a list, got {_json_type(context)}")
    paragraphs: dict[str, str] = {}
    for index, entry in enumerate(context):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and isinstance(entry[1], list) and all(isinstance(s, str) for s in entry[1])):
            raise DataError(f"{where}: 'context'[{index}] must be [title, [sentence, ...]], "
                            f"got {_json_type(entry)}")
        title, sentences = entry
        # HotpotQA sentences after the first carry a leading space; normalise to one.
        paragraphs.setdefault(title, " ".join(s.strip() for s in sentences if s.strip()))
    return paragraphs


def _supporting_titles(obj: dict[str, Any], where: str) -> list[str]:
    """Distinct titles named in 'supporting_facts', in first-appearance order."""
    facts = _required(obj, "supporting_facts", where)
    if not isinstance(facts, list):
        raise DataError(f"{where}: 'supporting_facts' must be a list, got {_json_type(facts)}")
    if not facts:
        raise DataError(f"{where}: 'supporting_facts' is empty")
    titles: list[str] = []
    for index, fact in enumerate(facts):
        # bool is an int in Python, but `true` is not a sentence index.
        if not (isinstance(fact, list) and len(fact) == 2 and isinstance(fact[0], str)
                and isinstance(fact[1], int) and not isinstance(fact[1], bool)):
            raise DataError(f"{where}: 'supporting_facts'[{index}] must be [title, sentence_index], "
                            f"got {_json_type(fact)}")
        if fact[0] not in titles:
            titles.append(fact[0])
    return titles
