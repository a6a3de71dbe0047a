"""RetrievalEnvironmentActor: the retriever a generator queries between turns of an episode.

It holds a corpus (procedural or HotpotQA-format) and its BM25 index; what `search` returns
enters the rollout as observation tokens (rlft.retrieval.episode.format_observation).
`cfg.retrieval` is a `rlft.retrieval.config.RetrievalConfig`.
"""

from __future__ import annotations

from typing import Any

from rlft.retrieval.corpus import Corpus, Document, build_corpus
from rlft.retrieval.hotpot import read_hotpot
from rlft.retrieval.index import BM25Index, refine


class RetrievalEnvironmentActor:
    def __init__(self, cfg, index: int = 0):
        self.cfg = cfg
        self.index = index
        self.corpus: Corpus | None = None
        self.bm25: BM25Index | None = None
        self._by_id: dict[int, Document] = {}

    def setup(self) -> dict[str, Any]:
        settings = self.cfg.retrieval
        if settings.corpus == "procedural":
            self.corpus = build_corpus(seed=settings.seed, num_entities=settings.num_entities,
                                       num_questions=settings.num_questions, distractors=settings.distractors)
        else:
            self.corpus = read_hotpot(settings.corpus)
        self.bm25 = BM25Index(self.corpus.documents)
        self._by_id = {d.id: d for d in self.corpus.documents}
        return {"index": self.index, "corpus": settings.corpus, "documents": len(self.corpus.documents),
                "questions": len(self.corpus.questions), "top_k": settings.top_k}

    def search(self, queries: list[str]) -> list[list[dict]]:
        """For each query, its top_k documents as {"id", "title", "text"}, best first, each text
        refined (first sentence, at most refine_chars) unless refine_chars is None."""
        if self.bm25 is None:
            raise RuntimeError("RetrievalEnvironmentActor.search called before setup()")
        hits = self.bm25.search(queries, k=self.cfg.retrieval.top_k)
        return [[self._as_dict(self._by_id[doc_id], refined=True) for doc_id, _ in found] for found in hits]

    def documents(self, ids: list[int]) -> list[dict]:
        """The full (unrefined) documents with these ids; an unknown id raises KeyError."""
        return [self._as_dict(self._by_id[doc_id], refined=False) for doc_id in ids]

    def _as_dict(self, document: Document, refined: bool) -> dict:
        limit = self.cfg.retrieval.refine_chars
        text = refine(document.text, limit) if refined and limit is not None else document.text
        return {"id": document.id, "title": document.title, "text": text}

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        self.corpus, self.bm25, self._by_id = None, None, {}
