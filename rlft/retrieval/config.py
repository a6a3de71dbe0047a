"""Config section of the retrieval environment (rlft.roles.environment)."""

from __future__ import annotations

from pydantic import Field

from rlft.schema import Section


class RetrievalConfig(Section):
    corpus: str = Field("procedural", description="'procedural' (rlft.retrieval.corpus) or the path of a HotpotQA-format JSONL file.")
    seed: int = Field(0, description="Seed of the procedural corpus.")
    top_k: int = Field(3, ge=1, description="Documents returned per search.")
    refine_chars: int | None = Field(120, ge=1, description="Cut each returned document to its first sentence and at most this many characters (null: full text).")
    num_entities: int = Field(40, ge=8, description="Procedural corpus: number of invented entities.")
    num_questions: int = Field(64, ge=1, description="Procedural corpus: number of questions.")
    distractors: int = Field(40, ge=0, description="Procedural corpus: number of distractor documents.")
