"""A procedurally generated multi-hop fact corpus, deterministic by seed.

Sized for a small character-level model, so every string is short. The world has four kinds of
invented entities (4-6 letter names, unique across kinds): people, firms, cities and countries.
Facts link them, one fact per document; the document's title is the fact's subject:

    "Bavo lives in Tesk."          person -> city      (every person has one)
    "Bavo was born in Mirl."       person -> city      (every person has one)
    "Bavo works for Zanta."        person -> firm      (every person has one)
    "Zanta is based in Tesk."      firm   -> city      (every firm has one)
    "Tesk is a city in Orvan."     city   -> country   (every city has one)

Distractor documents mention the same entities through relations no question asks about
("Bavo visited Kern.", "Bavo knows Lumi.", "Zanta has an office in Mirl."), so retrieval has
hard negatives. Questions repeat the first hop's relation words so that a natural query for
each hop finds its document with plain BM25 (there is no stemmer):

    "Bavo lives in which country?"        2 hops: lives in -> city in country
    "Bavo was born in which country?"     2 hops: born in -> city in country
    "Bavo works for a firm in which city?"     2 hops: works for -> based in
    "Bavo works for a firm in which country?"  3 hops: works for -> based in -> city in country

`MultiHopQuestion.supporting` holds the gold document ids in hop order; the object of each
supporting fact is the subject of the next, and the last one's object is the answer.
Document ids are positions in `Corpus.documents` (shuffled, so ids carry no hint).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from bm25s.stopwords import STOPWORDS_EN


@dataclass(frozen=True)
class Document:
    id: int
    title: str
    text: str


@dataclass(frozen=True)
class MultiHopQuestion:
    question: str
    answer: str
    supporting: tuple[int, ...]  # gold document ids, one per hop, in hop order
    hops: int


@dataclass
class Corpus:
    documents: list[Document]
    questions: list[MultiHopQuestion] = field(default_factory=list)


_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"
# Names must not collide with words of the templates or stop words, or BM25 would mix them up.
_TEMPLATE_WORDS = {"lives", "born", "works", "for", "firm", "based", "city", "country", "which",
                   "visited", "knows", "has", "office", "was", "in", "is", "a"}
_RESERVED = _TEMPLATE_WORDS | set(STOPWORDS_EN)

# (relation, fact template). Subject and object fill "{s}" and "{o}".
_FACTS = {
    "lives": "{s} lives in {o}.",
    "born": "{s} was born in {o}.",
    "works": "{s} works for {o}.",
    "based": "{s} is based in {o}.",
    "located": "{s} is a city in {o}.",
}
_DISTRACTORS = {
    "visited": ("people", "cities", "{s} visited {o}."),
    "knows": ("people", "people", "{s} knows {o}."),
    "office": ("firms", "cities", "{s} has an office in {o}."),
}
# (question template, relation chain followed from a person)
_QUESTIONS = [
    ("{s} lives in which country?", ("lives", "located")),
    ("{s} was born in which country?", ("born", "located")),
    ("{s} works for a firm in which city?", ("works", "based")),
    ("{s} works for a firm in which country?", ("works", "based", "located")),
]


def _invent_names(rng: random.Random, count: int) -> list[str]:
    """`count` distinct pronounceable names of 4-6 letters (two or three syllables)."""
    names: set[str] = set()
    ordered = []
    while len(ordered) < count:
        syllables = rng.choice((2, 2, 3))
        name = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(syllables))
        if syllables == 2 and rng.random() < 0.5:
            name += rng.choice(_CONSONANTS)  # a closed last syllable: 5 letters
        if name in names or name in _RESERVED:
            continue
        names.add(name)
        ordered.append(name.capitalize())
    return ordered


def _entity_counts(num_entities: int) -> dict[str, int]:
    """Split the entity budget: half people, then firms, cities and countries (at least 2 each)."""
    if num_entities < 8:
        raise ValueError(f"num_entities must be at least 8, got {num_entities}")
    countries = max(2, num_entities // 10)
    cities = max(2, num_entities // 5)
    firms = max(2, num_entities // 5)
    return {"people": num_entities - countries - cities - firms, "firms": firms,
            "cities": cities, "countries": countries}


def _world(rng: random.Random, num_entities: int) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Entities by kind, and each relation as a map subject -> object."""
    counts = _entity_counts(num_entities)
    names = _invent_names(rng, sum(counts.values()))
    kinds, start = {}, 0
    for kind, count in counts.items():
        kinds[kind], start = names[start:start + count], start + count
    relations = {
        "lives": {p: rng.choice(kinds["cities"]) for p in kinds["people"]},
        "born": {p: rng.choice(kinds["cities"]) for p in kinds["people"]},
        "works": {p: rng.choice(kinds["firms"]) for p in kinds["people"]},
        "based": {f: rng.choice(kinds["cities"]) for f in kinds["firms"]},
        "located": {c: rng.choice(kinds["countries"]) for c in kinds["cities"]},
    }
    return kinds, relations


def _distractor_facts(rng: random.Random, kinds: dict[str, list[str]], count: int,
                      taken: set[tuple[str, str]]) -> list[tuple[str, str]]:
    """Up to `count` new (subject, text) distractor facts, none repeating a fact or pair in `taken`."""
    facts: list[tuple[str, str]] = []
    for _ in range(count * 20):  # bounded: a tiny world may have fewer distinct distractors
        if len(facts) == count:
            break
        subject_kind, object_kind, template = _DISTRACTORS[rng.choice(sorted(_DISTRACTORS))]
        subject, obj = rng.choice(kinds[subject_kind]), rng.choice(kinds[object_kind])
        text = template.format(s=subject, o=obj)
        if subject == obj or (subject, text) in taken:
            continue
        taken.add((subject, text))
        facts.append((subject, text))
    return facts


def build_corpus(seed: int = 0, num_entities: int = 40, num_questions: int = 64,
                 distractors: int = 40) -> Corpus:
    """The corpus for `seed`: one document per fact, `distractors` distractor documents (fewer if
    the world is too small to hold that many distinct ones) and up to `num_questions` distinct
    questions (at most four per person)."""
    rng = random.Random(seed)
    kinds, relations = _world(rng, num_entities)
    facts = [(subject, relation, _FACTS[relation].format(s=subject, o=obj))
             for relation, pairs in relations.items() for subject, obj in pairs.items()]
    taken = {(subject, text) for subject, _, text in facts}
    facts += [(subject, None, text) for subject, text in _distractor_facts(rng, kinds, distractors, taken)]
    rng.shuffle(facts)
    documents = [Document(id=i, title=subject, text=text) for i, (subject, _, text) in enumerate(facts)]
    fact_ids = {(subject, relation): i for i, (subject, relation, _) in enumerate(facts) if relation}

    pairs = [(person, q) for person in kinds["people"] for q in range(len(_QUESTIONS))]
    rng.shuffle(pairs)
    questions = [_question(person, _QUESTIONS[q], relations, fact_ids) for person, q in pairs[:num_questions]]
    return Corpus(documents=documents, questions=questions)


def _question(person: str, template: tuple[str, tuple[str, ...]], relations: dict[str, dict[str, str]],
              fact_ids: dict[tuple[str, str], int]) -> MultiHopQuestion:
    """Follow the template's relation chain from `person`, collecting one document per hop."""
    text, chain = template
    entity, supporting = person, []
    for relation in chain:
        supporting.append(fact_ids[(entity, relation)])
        entity = relations[relation][entity]
    return MultiHopQuestion(question=text.format(s=person), answer=entity,
                            supporting=tuple(supporting), hops=len(chain))


def question_subject(corpus: Corpus, question: MultiHopQuestion) -> str:
    """The entity a question asks about: the title (subject) of its first supporting document."""
    return corpus.documents[question.supporting[0]].title


def split_corpus(corpus: Corpus, eval_fraction: float = 0.2, seed: int = 0,
                 held_out: str = "entities") -> tuple[Corpus, Corpus]:
    """(train, eval) corpora over the same documents, with disjoint questions.

    held_out="questions": eval gets round(eval_fraction * n) questions drawn at random (at least
    one when there are two or more); a held-out question may ask about a person whose other
    questions (and their facts, in the worked episodes) are trained on.
    held_out="entities": whole subjects are held out (every question about a held-out person is in
    eval, none in train), drawn at random until eval holds at least round(eval_fraction * n)
    questions, so held-out questions cannot be answered from what training episodes showed about
    their person. The documents stay shared: retrieval over the same collection is what is tested.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    if held_out not in ("entities", "questions"):
        raise ValueError(f"held_out must be 'entities' or 'questions', got {held_out!r}")
    target = round(eval_fraction * len(corpus.questions))
    if len(corpus.questions) >= 2:
        target = min(max(target, 1), len(corpus.questions) - 1)
    # Groups of question indices that go to one side together: one per question, or one per subject.
    groups: dict[object, list[int]] = {}
    for i, question in enumerate(corpus.questions):
        key = question_subject(corpus, question) if held_out == "entities" else i
        groups.setdefault(key, []).append(i)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    eval_ids: set[int] = set()
    for group in order:
        if len(eval_ids) >= target:
            break
        eval_ids.update(group)
    if held_out == "entities" and len(eval_ids) == len(corpus.questions):
        raise ValueError("held_out=entities: every question is about one subject, nothing is left to train on")
    train = [q for i, q in enumerate(corpus.questions) if i not in eval_ids]
    held = [q for i, q in enumerate(corpus.questions) if i in eval_ids]
    return Corpus(corpus.documents, train), Corpus(corpus.documents, held)
