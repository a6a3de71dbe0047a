"""BM25 retrieval over a document list (the `bm25s` library), and a simple refiner.

Documents are indexed by title and text together, tokenised by bm25s's own tokenizer
(lowercase, words of two or more characters, English stop words removed, no stemming).
"""

from __future__ import annotations

import re
from typing import Sequence

import bm25s
import numpy as np

from rlft.retrieval.corpus import Document

_STOPWORDS = "en"
SCORE_DECIMALS = 5  # scores equal to this many decimals tie (broken by document position)


def _tokenize(texts: list[str]) -> list[list[str]]:
    # Strings rather than bm25s's id form: ids from a second call would not match the index's vocabulary.
    return bm25s.tokenize(texts, stopwords=_STOPWORDS, return_ids=False, show_progress=False)


class BM25Index:
    """Top-k BM25 search over `documents`; results name documents by `Document.id`."""

    def __init__(self, documents: Sequence[Document], k1: float = 1.5, b: float = 0.75):
        if not documents:
            raise ValueError("BM25Index needs at least one document")
        self.documents = list(documents)
        self._retriever = bm25s.BM25(k1=k1, b=b)
        self._retriever.index(_tokenize([f"{d.title} {d.text}" for d in self.documents]), show_progress=False)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to k (document id, score) pairs, best first. Documents sharing no
        term with the query (score 0) are left out, so an empty, whitespace-only, all-stop-word or
        all-unknown-word query gets [].

        Ties are broken by document position, never by a sorting kernel: numpy's argpartition
        orders equal scores differently on CPUs with and without AVX-512, and most queries of the
        procedural corpus tie at the cut (every fact about an entity scores alike), so the
        documents returned - and the worked episodes a warm start trains on - differed between
        machines. Scores are compared at SCORE_DECIMALS, so last-bit differences tie too."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        results: list[list[tuple[int, float]]] = [[] for _ in queries]
        for query_index, query_tokens in enumerate(_tokenize(list(queries)) if queries else []):
            known = self._retriever.get_tokens_ids(query_tokens)  # unknown words score nothing
            if not known:
                continue
            scores = self._retriever.get_scores(known)  # [num_documents]
            ranked = sorted(np.flatnonzero(scores > 0.0).tolist(),
                            key=lambda position: (-round(float(scores[position]), SCORE_DECIMALS), position))
            results[query_index] = [(self.documents[p].id, float(scores[p])) for p in ranked[:k]]
        return results


_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def refine(text: str, max_chars: int) -> str:
    """The first sentence of `text`, cut to at most `max_chars` characters (at a word boundary
    when there is one). A stand-in for IM-RAG's Refiner: it keeps observations short."""
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, got {max_chars}")
    first = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    if len(first) <= max_chars:
        return first
    cut = first[:max_chars]
    space = cut.rfind(" ")
    return cut[:space] if space > 0 else cut
