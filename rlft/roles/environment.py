"""RetrievalEnvironmentActor: the retriever a generator's episodes query between turns.

It builds the run's task (rlft.data.multihop), whose document collection and BM25 index
(rlft.retrieval.index, bm25s) it serves; what `search` returns enters the rollout as observation
tokens (rlft.retrieval.episode.format_observation). Another retriever is another class
registered under ROLES["environment"] with the same `search` (runtime.roles.environment).
"""

from __future__ import annotations

from typing import Any

from rlft.data.tasks import build_task


class RetrievalEnvironmentActor:
    def __init__(self, cfg, index: int = 0):
        self.cfg = cfg
        self.index = index
        self.task = None

    def setup(self) -> dict[str, Any]:
        self.task = build_task(self.cfg.task)
        if not hasattr(self.task, "search"):
            raise ValueError(f"task {self.task.name!r} has no document collection to search; the retrieval "
                             "environment serves tasks like 'multihop'")
        self.task.index  # built now, not on the first search
        return {"index": self.index, "task": self.task.name, "documents": len(self.task.corpus.documents),
                "top_k": self.task.cfg.top_k}

    def search(self, queries: list[str]) -> list[list[dict]]:
        """For each query, its top_k documents as {"id", "title", "text"}, best first (refined)."""
        if self.task is None:
            raise RuntimeError("RetrievalEnvironmentActor.search called before setup()")
        return self.task.search(queries)

    def memory(self) -> dict[str, float]:
        from rlft.memory import process_memory

        return process_memory()

    def close(self) -> None:
        self.task = None
