"""Multi-hop questions over a document collection, answered by searching it (IM-RAG,
docs/algorithms.md#im-rag-episodes).

The task owns the collection and the retrieval settings, so the environment role
(rlft.roles.environment) and the worked episodes of the SFT warm start see the same documents
the same way. Questions come from the procedural corpus (rlft.retrieval.corpus) or a
HotpotQA-format JSONL file (`corpus: <path>`).

    prompt    "Q: Bavo lives in which country?\n"
    response  "<search>Bavo lives in</search><docs>...</docs><search>Tesk is a city in</search><docs>...</docs><answer>Orvan</answer>"

The worked response searches for each gold supporting document with the document's own text up
to its last word (the fact it states, without the answer), and answers with the gold answer;
its <docs> are what the environment actually returns. `Example.meta["supporting"]` holds the
gold document ids (the progress tracker's evidence). A completion is correct when its answer
matches the gold one exactly (after SQuAD normalisation).

Held out (`held_out`): by default whole entities, i.e. every question about a held-out person, so
the model cannot answer a held-out question from what a training episode showed about its
person; `questions` draws questions at random instead (the split of the first IM-RAG numbers).
"""

from __future__ import annotations

from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator

from rlft.data.tasks import TaskSpec
from rlft.schema import Section
from rlft.types import Example


class MultiHopConfig(Section):
    name: Literal["multihop"] = Field("multihop", description="Task name.")
    corpus: str = Field("procedural", description="'procedural' or the path of a HotpotQA-format JSONL file.")
    seed: int = Field(0, description="Seed of the procedural corpus and of the train/eval split.")
    num_entities: int = Field(120, ge=8, description="Procedural corpus: invented entities (2 questions each at most).")
    num_questions: int = Field(400, ge=2, description="Procedural corpus: questions.")
    distractors: int = Field(120, ge=0, description="Procedural corpus: distractor documents.")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Questions held out for evaluation.")
    held_out: Literal["entities", "questions"] = Field(
        "entities", description="What is held out: 'entities' (every question about a held-out person, so "
        "training never shows the model that person's questions; the documents stay shared) or 'questions' "
        "(questions drawn at random: other questions about the same person may be trained on).")
    train_part: tuple[float, float] = Field(
        (0.0, 1.0), description="The part [start, stop) of the training questions used, as fractions: a warm "
        "start and the RL run after it can take disjoint parts, so RL does not start on questions the warm "
        "start has memorised.")
    top_k: int = Field(2, ge=1, description="Documents the environment returns per search.")
    refine_chars: int | None = Field(
        48, ge=1, description="The refiner: each returned document cut to its first sentence and this many "
        "characters (null: whole documents).")

    @field_validator("train_part")
    @classmethod
    def _ordered_fractions(cls, part: tuple[float, float]) -> tuple[float, float]:
        start, stop = part
        if not 0.0 <= start < stop <= 1.0:
            raise ValueError(f"train_part must be [start, stop) with 0 <= start < stop <= 1, got {list(part)}")
        return part


class MultiHopTask:
    name = "multihop"

    def __init__(self, cfg: MultiHopConfig):
        self.cfg = cfg

    @cached_property
    def corpus(self):
        from rlft.retrieval.corpus import build_corpus
        from rlft.retrieval.hotpot import read_hotpot

        cfg = self.cfg
        if cfg.corpus == "procedural":
            return build_corpus(seed=cfg.seed, num_entities=cfg.num_entities, num_questions=cfg.num_questions,
                                distractors=cfg.distractors)
        return read_hotpot(cfg.corpus)

    @cached_property
    def index(self):
        from rlft.retrieval.index import BM25Index

        return BM25Index(self.corpus.documents)

    def search(self, queries: list[str]) -> list[list[dict]]:
        """Top-k refined documents per query: {"id", "title", "text"} (the environment role's answer)."""
        from rlft.retrieval.index import refine

        documents = self.corpus.documents
        limit = self.cfg.refine_chars
        return [[{"id": i, "title": documents[i].title,
                  "text": refine(documents[i].text, limit) if limit is not None else documents[i].text}
                 for i, _ in found] for found in self.index.search(queries, self.cfg.top_k)]

    def worked_response(self, question) -> str:
        from rlft.retrieval.episode import format_answer, format_observation, format_search

        parts = []
        for doc_id in question.supporting:
            query = self.corpus.documents[doc_id].text.rstrip(".").rsplit(" ", 1)[0]
            parts += [format_search(query), format_observation([d["text"] for d in self.search([query])[0]])]
        return "".join(parts) + format_answer(question.answer)

    @cached_property
    def _splits(self):
        from rlft.retrieval.corpus import split_corpus

        return split_corpus(self.corpus, self.cfg.eval_fraction, self.cfg.seed, self.cfg.held_out)

    def split(self, which: str) -> list[Example]:
        if which not in ("train", "eval"):
            raise ValueError(f"unknown split {which!r}; expected train or eval")
        train, held_out = self._splits
        chosen = held_out.questions
        if which == "train":
            start, stop = self.cfg.train_part
            chosen = train.questions[round(start * len(train.questions)):round(stop * len(train.questions))]
        return [Example(prompt=f"Q: {q.question}\n", response=self.worked_response(q), answer=q.answer,
                        meta={"supporting": list(q.supporting), "hops": q.hops}) for q in chosen]

    def score(self, example: Example, completion: str) -> float:
        from rlft.retrieval.episode import Answer, exact_match, parse_turn

        last = completion.rsplit("</docs>", 1)[-1]  # the final turn, after the last observation
        parsed = parse_turn(last)
        return exact_match(parsed.text, example.answer) if isinstance(parsed, Answer) else 0.0

    def step_scores(self, example: Example, completion: str) -> list[float]:
        return [self.score(example, completion)]


def build(cfg: MultiHopConfig) -> MultiHopTask:
    return MultiHopTask(cfg)


SPEC = TaskSpec("multihop", MultiHopConfig, build)
