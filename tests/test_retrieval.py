"""Offline pieces of multi-turn retrieval (IM-RAG): corpus, HotpotQA reader, BM25, episode format."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rlft.data.jsonl import DataError
from rlft.retrieval.corpus import build_corpus, question_subject, split_corpus
from rlft.retrieval.episode import (Answer, Malformed, Search, coverage, exact_match, f1,
                                    format_observation, parse_turn, turn_rewards)
from rlft.retrieval.hotpot import read_hotpot
from rlft.retrieval.index import BM25Index, refine
from rlft.roles import ROLES
from rlft.roles.environment import RetrievalEnvironmentActor


def _fact(text: str) -> tuple[str, str]:
    """(subject, object) of a procedural fact sentence "S ... O."."""
    words = text.rstrip(".").split()
    return words[0], words[-1]


def test_corpus_is_deterministic_by_seed():
    assert build_corpus(seed=3) == build_corpus(seed=3)
    assert build_corpus(seed=3) != build_corpus(seed=4)


def test_every_answer_is_reached_by_following_the_supporting_documents():
    corpus = build_corpus(seed=1, num_entities=30, num_questions=60, distractors=30)
    assert len(corpus.questions) == 60 and {q.hops for q in corpus.questions} == {2, 3}
    assert [d.id for d in corpus.documents] == list(range(len(corpus.documents)))
    assert all(4 <= len(d.title) <= 6 for d in corpus.documents)
    for question in corpus.questions:
        assert len(question.supporting) == question.hops
        entity = question.question.split()[0]  # every template starts with the person asked about
        for doc_id in question.supporting:
            subject, obj = _fact(corpus.documents[doc_id].text)
            assert subject == entity
            entity = obj
        assert entity == question.answer


def test_question_split_is_disjoint_by_question():
    corpus = build_corpus(seed=0, num_questions=20)
    train, held_out = split_corpus(corpus, eval_fraction=0.25, seed=0, held_out="questions")
    assert len(held_out.questions) == 5 and len(train.questions) == 15
    assert not {q.question for q in train.questions} & {q.question for q in held_out.questions}
    assert train.documents is corpus.documents is held_out.documents


def test_entity_split_holds_out_whole_people():
    corpus = build_corpus(seed=0, num_entities=120, num_questions=200)
    train, held_out = split_corpus(corpus, eval_fraction=0.2, seed=0)  # held_out="entities" is the default
    people = lambda part: {question_subject(corpus, q) for q in part.questions}  # noqa: E731
    assert not people(train) & people(held_out)
    # Every question about a held-out person is held out, and the split covers the corpus.
    assert sorted(map(id, train.questions + held_out.questions)) == sorted(map(id, corpus.questions))
    # Whole groups of at most 4 questions are added until eval reaches 20% (40 of 200).
    assert 40 <= len(held_out.questions) <= 43
    # The question split of the same corpus shares people between the sides (what the default avoids).
    q_train, q_held = split_corpus(corpus, eval_fraction=0.2, seed=0, held_out="questions")
    assert people(q_train) & people(q_held)
    with pytest.raises(ValueError, match="held_out"):
        split_corpus(corpus, held_out="people")


def test_first_hop_query_finds_the_first_supporting_document():
    corpus = build_corpus(seed=2)
    index = BM25Index(corpus.documents)
    two_hop = [q for q in corpus.questions if q.hops == 2]
    assert two_hop
    for question in two_hop:
        # The natural first-hop query: the question up to "which" ("Bavo lives in", "Bavo works for a firm in").
        query = question.question.split(" which ")[0]
        top3 = [doc_id for doc_id, _ in index.search([query], k=3)[0]]
        assert question.supporting[0] in top3, (question, [corpus.documents[i].text for i in top3])


def test_search_orders_results_and_skips_empty_queries():
    corpus = build_corpus(seed=0)
    index = BM25Index(corpus.documents)
    found, empty, blank = index.search(["Tesk city " + corpus.documents[0].title, "", "   "], k=4)
    scores = [score for _, score in found]
    assert 0 < len(found) <= 4 and scores == sorted(scores, reverse=True)
    assert empty == [] and blank == []
    assert refine("First one. Second one.", 100) == "First one."
    assert refine("alpha beta gamma", 12) == "alpha beta"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


_GOOD = {"_id": "a1", "type": "bridge", "level": "easy", "question": "Who?", "answer": "Ann",
         "supporting_facts": [["Bob", 0], ["Ann", 1], ["Bob", 1]],
         "context": [["Ann", ["Ann is a cook.", " She lives in Rome."]], ["Bob", ["Bob knows Ann."]],
                     ["Cat", ["Cat is a cat."]]]}


def test_hotpot_reader_builds_a_shared_document_list(tmp_path):
    second = {"question": "Where?", "answer": "Rome", "supporting_facts": [["Ann", 1]],
              "context": [["Ann", ["Ann is a cook.", " She lives in Rome."]], ["Dan", ["Dan."]]]}
    corpus = read_hotpot(_write(tmp_path / "h.jsonl", [_GOOD, "", second]))
    assert [(d.id, d.title) for d in corpus.documents] == [(0, "Ann"), (1, "Bob"), (2, "Cat"), (3, "Dan")]
    assert corpus.documents[0].text == "Ann is a cook. She lives in Rome."
    first, again = corpus.questions
    assert (first.answer, first.supporting, first.hops) == ("Ann", (1, 0), 2)
    assert (again.supporting, again.hops) == ((0,), 1)


@pytest.mark.parametrize("bad, message", [
    ("{not json", "invalid JSON"),
    ({k: v for k, v in _GOOD.items() if k != "answer"}, "missing key 'answer'"),
    ({**_GOOD, "supporting_facts": [["Zed", 0]]}, "supporting title 'Zed' is not in 'context'"),
    ({**_GOOD, "context": [["Ann", "not a list"]]}, "'context'[0] must be [title, [sentence, ...]]"),
    ({**_GOOD, "supporting_facts": [["Ann", "0"]]}, "'supporting_facts'[0] must be [title, sentence_index]"),
    ({**_GOOD, "supporting_facts": []}, "'supporting_facts' is empty"),
])
def test_hotpot_reader_errors_name_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [_GOOD, bad])
    with pytest.raises(DataError) as error:
        read_hotpot(path)
    assert str(error.value).startswith(f"{path}:2: ") and message in str(error.value)


@pytest.mark.parametrize("text, action", [
    ("I need Bavo's city.<search> Bavo lives </search>", Search("Bavo lives")),
    ("<answer>Orvan</answer><search>x</search>", Answer("Orvan")),
    ("<search>a</search> then <answer>b</answer>", Search("a")),
    ("I think it is Orvan.", Malformed("no <search> or <answer> tag")),
    ("<search>Bavo lives", Malformed("unclosed <search> tag")),
    ("<answer>Orvan", Malformed("unclosed <answer> tag")),
    ("<search>  </search>", Malformed("empty query")),
    ("<answer></answer>", Malformed("empty answer")),
    ("</search>", Malformed("no <search> or <answer> tag")),
    ("", Malformed("no <search> or <answer> tag")),
])
def test_parse_turn(text, action):
    assert parse_turn(text) == action


def test_observation_format():
    assert format_observation(["A b.", "C\nd."]) == "<docs>A b.\nC d.</docs>"


def test_turn_rewards_telescope_and_repeated_evidence_earns_nothing():
    supporting = (4, 9, 2)
    retrieved_by_turn = [{7}, {4, 7}, {4}, {9, 2, 4}]  # turn 3 finds only already-covered doc 4
    seen: set[int] = set()
    coverages = [coverage(seen, supporting)]
    for found in retrieved_by_turn:
        seen |= found
        coverages.append(coverage(seen, supporting))
    rewards = turn_rewards(coverages)
    assert coverages == pytest.approx([0, 0, 1 / 3, 1 / 3, 1])
    assert sum(rewards) == pytest.approx(coverages[-1] - coverages[0])
    assert rewards[2] == 0.0
    costly = turn_rewards(coverages, turn_cost=0.1)
    assert sum(costly) == pytest.approx(coverages[-1] - coverages[0] - 4 * 0.1)
    assert coverage(set(), ()) == 1.0


def test_exact_match_and_f1():
    assert exact_match("The Orvan!", "orvan") == 1.0
    assert exact_match("Orvan city", "Orvan") == 0.0
    assert f1("Orvan city", "Orvan") == pytest.approx(2 / 3)  # precision 1/2, recall 1
    assert f1("x b c", "b c d") == pytest.approx(2 / 3)
    assert f1("a b c", "b c d") == pytest.approx(0.8)  # "a" is an article: precision 1, recall 2/3
    assert f1("the", "") == 1.0 and f1("x", "") == 0.0


def test_environment_actor_returns_top_k_refined_documents():
    from rlft.data.multihop import MultiHopConfig

    assert ROLES["environment"].get("bm25") is RetrievalEnvironmentActor
    cfg = SimpleNamespace(task=MultiHopConfig(seed=5, top_k=2, refine_chars=12))
    actor = RetrievalEnvironmentActor(cfg, index=0)
    info = actor.setup()
    assert info["documents"] > 0 and info["top_k"] == 2
    question = actor.task.corpus.questions[0]
    first, empty = actor.search([question.question.split(" which ")[0], ""])
    assert len(first) == 2 and empty == []
    assert all(set(doc) == {"id", "title", "text"} and len(doc["text"]) <= 12 for doc in first)
    full = actor.task.corpus.documents[first[0]["id"]].text
    assert full.startswith(first[0]["text"])
    actor.close()


def test_multihop_worked_episodes_find_every_supporting_document_and_score_correct():
    from rlft.data.multihop import MultiHopConfig, MultiHopTask
    from rlft.retrieval.episode import DOCS_CLOSE

    task = MultiHopTask(MultiHopConfig(num_entities=24, distractors=24))
    train, held_out = task.split("train"), task.split("eval")
    assert train and held_out and not {e.prompt for e in train} & {e.prompt for e in held_out}
    for example in train + held_out:
        assert task.score(example, example.response) == 1.0
        assert task.score(example, example.response.rsplit(DOCS_CLOSE, 1)[0] + DOCS_CLOSE + "<answer>x</answer>") == 0.0
        assert example.response.count("<search>") == example.meta["hops"] == len(example.meta["supporting"])


def test_train_part_splits_the_training_questions_into_disjoint_parts():
    from rlft.data.multihop import MultiHopConfig, MultiHopTask

    def prompts(part):
        return [ex.prompt for ex in MultiHopTask(MultiHopConfig(num_entities=24, train_part=part)).split("train")]

    whole, first, second = prompts((0.0, 1.0)), prompts((0.0, 0.5)), prompts((0.5, 1.0))
    assert first + second == whole and first and second
    held_out = MultiHopTask(MultiHopConfig(num_entities=24, train_part=(0.5, 1.0))).split("eval")
    assert held_out == MultiHopTask(MultiHopConfig(num_entities=24)).split("eval")  # eval is never cut
    with pytest.raises(ValueError, match="train_part"):
        MultiHopConfig(train_part=(0.5, 0.5))


def _digest(lines) -> str:
    import hashlib

    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@pytest.mark.parametrize("recipe", ["configs/imrag_sft_tiny.yaml", "configs/imrag_tiny.yaml"])
def test_imrag_recipe_corpus_and_splits_are_pinned(recipe):
    """The README's IM-RAG numbers were measured on exactly these documents and splits: a change
    to the corpus generator, the split or the recipe's task section shows here first (update the
    digests only together with a rerun of the recipe's numbers)."""
    from rlft.config import load_config
    from rlft.data.multihop import MultiHopTask

    task = MultiHopTask(load_config(recipe).task)
    corpus = task.corpus
    position = {id(q): i for i, q in enumerate(corpus.questions)}
    train, held_out = task._splits
    start, stop = task.cfg.train_part
    used = train.questions[round(start * len(train.questions)):round(stop * len(train.questions))]
    assert (len(corpus.documents), len(corpus.questions), len(held_out.questions)) == (2500, 2000, 400)
    assert _digest(d.text for d in corpus.documents) == PINNED["documents"]
    assert _digest(f"{q.question}|{q.answer}|{q.supporting}" for q in corpus.questions) == PINNED["questions"]
    assert _digest(str(position[id(q)]) for q in held_out.questions) == PINNED["held_out"]
    assert _digest(str(position[id(q)]) for q in used) == PINNED[recipe]
    # The worked episodes hold the documents BM25 returns: pinned, so tie order cannot vary by CPU.
    assert _digest(e.response for e in task.split("train") + task.split("eval")) == PINNED["worked " + recipe]
    assert [e.prompt for e in task.split("eval")] == [f"Q: {q.question}\n" for q in held_out.questions]


# Recipe corpus (seed 0, 1000 entities, 2000 questions, 600 distractors), entity-disjoint held-out split.
PINNED = {"documents": "8967db6f78dafafe", "questions": "86814c92c35d65ad", "held_out": "ad6664066bd1e930",
          "configs/imrag_sft_tiny.yaml": "bd6f8afef751f6cc", "configs/imrag_tiny.yaml": "ed89afeb7dc6943f",
          "worked configs/imrag_sft_tiny.yaml": "eddaa9752866e660", "worked configs/imrag_tiny.yaml": "dcaed46cbfa0e124"}


def test_equal_scores_come_in_document_order_whatever_the_cpu():
    """Facts about one entity score alike for a query naming it; the cut between them is made by
    document position (a sorting kernel's tie order differs between CPUs with and without AVX-512)."""
    from rlft.retrieval.corpus import Document

    texts = ["Kemo knows Bife.", "Kemo knows Rano.", "Kemo knows Tavu.", "Lumi knows Pado.", "Kemo knows Sibe."]
    index = BM25Index([Document(id=10 + i, title=t.split()[0], text=t) for i, t in enumerate(texts)])
    found = index.search(["Kemo", "Kemo Tavu"], k=3)
    assert [doc for doc, _ in found[0]] == [10, 11, 12] and len({score for _, score in found[0]}) == 1
    assert [doc for doc, _ in found[1]][0] == 12  # a better score still comes first
