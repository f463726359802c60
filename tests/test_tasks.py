"""Synthetic tasks: answers against brute-force evaluators written apart from the generators, determinism in
(seed, index) alone, the example layout, and the accuracy helpers."""

from __future__ import annotations

import itertools

import grain
import numpy as np
import pytest

from hybridlm.tasks import LENGTHS, TASKS, Lengths, accuracy, accuracy_by_length, length_buckets, make_task, s5
from hybridlm.tasks import mqar as mqar_lib

# Each task at training lengths and at longer test lengths, small enough to check quickly.
CONFIGS = {
    "parity": [dict(seq_len=40, min_len=3, max_len=40), dict(seq_len=256, min_len=40, max_len=256)],
    "modular": [dict(seq_len=40, min_len=3, max_len=40), dict(seq_len=128, min_len=40, max_len=128)],
    "modular_brackets": [dict(seq_len=40, min_len=1, max_len=40), dict(seq_len=128, min_len=40, max_len=128)],
    "s5": [dict(seq_len=40, min_len=3, max_len=40), dict(seq_len=256, min_len=40, max_len=256)],
    "mqar": [dict(seq_len=64, min_len=64, max_len=64), dict(seq_len=256, min_len=64, max_len=256, num_pairs=8)],
    "code": [
        dict(seq_len=4 * 40 + 3 * 4, min_len=1, max_len=40, num_variables=8),
        dict(seq_len=4 * 200 + 3 * 6, min_len=100, max_len=200, num_variables=24, num_queries=6),
    ],
}
CASES = [(name, config) for name, configs in CONFIGS.items() for config in configs]
CASE_IDS = [f"{name}-{config['min_len']}-{config['max_len']}" for name, config in CASES]


def _examples(task, count):
    return [task[i] for i in range(count)]


def _tokens(example):
    """The example's tokens (its inputs before the padding)."""
    return example["inputs"][example["inputs"] != 0]


def _answer_positions(example):
    return np.flatnonzero(example["loss_mask"])


# Brute-force evaluators, one per task: (task, example) -> (answer positions, answer tokens), both [A].


def _parity(task, example):
    bits = _tokens(example) - 1
    assert set(bits) <= {0, 1}
    return np.arange(len(bits)), np.cumsum(bits) % 2 + 1


def _modular(task, example):
    symbols = ["01234+-*()"[t - 1] for t in _tokens(example)]
    assert set(symbols) - set("01234()") <= set(task.operators)
    depths = np.cumsum([(s == "(") - (s == ")") for s in symbols])
    assert depths.min(initial=0) >= 0 and depths.max(initial=0) <= task.max_depth
    positions, answers = [], []
    for t in range(len(symbols)):
        try:
            value = eval(" ".join(symbols[: t + 1]))  # a complete expression, or a SyntaxError
        except SyntaxError:
            continue
        positions.append(t)
        answers.append(value % 5 + 1)
    assert positions[-1] == len(symbols) - 1 - (len(symbols) % 2 == 0)  # ends complete, or with one operator
    return np.array(positions), np.array(answers)


def _s5(task, example):
    def matrix(permutation):  # the permutation matrix sending e_i to e_{p(i)}
        m = np.zeros((5, 5), int)
        m[list(permutation), range(5)] = 1
        return m

    product = np.eye(5, dtype=int)
    answers = []
    for token in _tokens(example):
        product = matrix(s5.ELEMENTS[token - 1]) @ product
        answers.append(s5.ELEMENTS.index(tuple(np.argmax(product, axis=0))) + 1)
    return np.arange(len(answers)), np.array(answers)


def _mqar(task, example):
    tokens = _tokens(example)
    pairs = task.pairs(len(tokens))
    keys, values = tokens[: 2 * pairs : 2], tokens[1 : 2 * pairs : 2]
    assert len(set(keys)) == len(set(values)) == pairs
    assert keys.min() >= 1 and keys.max() < 4096 <= values.min() and values.max() < 8192
    value_of = dict(zip(keys.tolist(), values.tolist()))
    positions = [t for t in range(2 * pairs, len(tokens)) if tokens[t] in value_of]
    assert sorted(tokens[positions]) == sorted(keys)  # each key asked once
    assert all((t - 2 * pairs) % 2 == 0 for t in positions)
    return np.array(positions), np.array([value_of[tokens[t]] for t in positions])


def _word(token):
    """A token of `code` as a word of its program text: "=", "swap", "print", ";", a constant 0-9 or a variable."""
    if token < 5:
        return ["=", "swap", "print", ";"][token - 1]
    return str(token - 5) if token < 15 else f"v{token - 15}"


def _code(task, example):
    words = [_word(t) for t in _tokens(example)]
    text = " ".join(words)
    variables, printed, statements = {}, [], 0
    for statement in text.split(" ;")[:-1]:
        match statement.split():
            case ["swap", x, y]:
                assert x != y and x in variables and y in variables
                variables[x], variables[y] = variables[y], variables[x]
                statements += 1
            case ["print", x]:
                printed.append(x)
            case [x, "=", value] if value.isdigit():
                assert x not in variables  # a constant is given once, to a variable not yet defined
                variables[x] = int(value)
                statements += 1
            case [x, "=", y]:
                assert x != y and y in variables
                variables[x] = variables[y]
                statements += 1
    assert statements == example["length"] and text.endswith(" ;")
    assert len(set(printed)) == len(printed) == min(task.num_queries, len(variables))
    assert text.index("print") > text.rindex("=")  # the queries come after the program
    positions = [i + 1 for i, w in enumerate(words) if w == "print"]
    return np.array(positions), np.array([variables[x] + 5 for x in printed])


EVALUATORS = {
    "parity": _parity,
    "modular": _modular,
    "modular_brackets": _modular,
    "s5": _s5,
    "mqar": _mqar,
    "code": _code,
}


@pytest.mark.parametrize("name,config", CASES, ids=CASE_IDS)
def test_answers_equal_brute_force(name, config):
    task = make_task(name, **config)
    for example in _examples(task, 12):
        positions, answers = EVALUATORS[name](task, example)
        np.testing.assert_array_equal(_answer_positions(example), positions)
        np.testing.assert_array_equal(example["targets"][positions], answers)


@pytest.mark.parametrize("name,config", CASES, ids=CASE_IDS)
def test_examples_are_padded_and_in_vocabulary(name, config):
    task = make_task(name, **config)
    seq_len = config["seq_len"]
    for example in _examples(task, 12):
        assert {key: (value.dtype, value.shape) for key, value in example.items()} == {
            "inputs": (np.int32, (seq_len,)),
            "targets": (np.int32, (seq_len,)),
            "loss_mask": (np.float32, (seq_len,)),
            "length": (np.int32, ()),
        }
        length, size = example["length"], np.count_nonzero(example["inputs"])
        assert config["min_len"] <= length <= config["max_len"]
        assert size == length if name != "code" else size <= task.max_tokens(length)  # code: length in statements
        assert np.all(example["inputs"][:size] > 0) and not np.any(example["inputs"][size:])
        assert not np.any(example["targets"][example["loss_mask"] == 0])
        assert set(np.unique(example["loss_mask"])) <= {0.0, 1.0}
        assert example["loss_mask"][:size].any() and not example["loss_mask"][size:].any()
        for key in ("inputs", "targets"):
            assert example[key].min() >= 0 and example[key].max() < task.vocab_size


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_lengths_span_the_range(name):
    low = 64 if name == "mqar" else 5
    task = make_task(name, **{**CONFIGS[name][0], "seq_len": 256, "min_len": low, "max_len": low + 4})
    lengths = [example["length"] for example in _examples(task, 100)]
    assert min(lengths) == low and max(lengths) == low + 4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_examples_depend_on_seed_and_index_alone(name):
    config = CONFIGS[name][0]
    reference = _examples(make_task(name, **config, seed=3), 6)
    task = make_task(name, **config, seed=3)
    np.random.seed(0)  # the global generator plays no part
    shuffled = {i: task[i] for i in (5, 0, 3, 1, 4, 2)}
    for i, example in enumerate(reference):
        for key, value in example.items():
            np.testing.assert_array_equal(value, shuffled[i][key])
    other_seed = _examples(make_task(name, **config, seed=4), 6)
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(reference, other_seed))
    assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in itertools.pairwise(reference))


def test_modular_brackets_nest_to_the_limit():
    task = make_task("modular_brackets", seq_len=128, min_len=100, max_len=128, max_depth=3)
    depths = [np.cumsum(_tokens(e) == 9) - np.cumsum(_tokens(e) == 10) for e in _examples(task, 20)]
    assert max(d.max() for d in depths) == 3
    running_sum = make_task("modular", seq_len=40, min_len=3, max_len=40)
    assert all(set(_tokens(e)) <= {1, 2, 3, 4, 5, 6} for e in _examples(running_sum, 20))


@pytest.mark.parametrize("length,pairs", mqar_lib.CONFIGS)
def test_mqar_zoology_configurations(length, pairs):
    task = make_task("mqar", seq_len=length, min_len=length, max_len=length, num_pairs=pairs)
    example = task[0]
    positions, answers = _mqar(task, example)
    assert len(positions) == pairs
    np.testing.assert_array_equal(_answer_positions(example), positions)
    np.testing.assert_array_equal(example["targets"][positions], answers)
    assert make_task("mqar", seq_len=length, min_len=length, max_len=length).pairs(length) == length // 16


@pytest.mark.parametrize(
    "name,vocab_size",
    [("parity", 3), ("modular", 11), ("modular_brackets", 11), ("s5", 121), ("mqar", 8192), ("code", 15 + 8)],
)
def test_vocabulary_sizes_are_as_documented(name, vocab_size):
    assert make_task(name, **CONFIGS[name][0]).vocab_size == vocab_size


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="seq_len=39 is too short"):
        make_task("parity", seq_len=39, min_len=3, max_len=40)
    with pytest.raises(ValueError, match="min_len <= max_len"):
        make_task("s5", seq_len=40, min_len=5, max_len=4)
    with pytest.raises(ValueError, match="key-value pairs"):
        make_task("mqar", seq_len=64, min_len=64, max_len=64, num_pairs=17)
    with pytest.raises(ValueError, match="operators"):
        make_task("modular", seq_len=40, min_len=3, max_len=40, operators="+/")
    with pytest.raises(KeyError, match="unknown task 'sorting'"):
        make_task("sorting", seq_len=40, min_len=3, max_len=40)
    with pytest.raises(IndexError):
        make_task("parity", seq_len=40, min_len=3, max_len=40, num_examples=10)[10]
    assert sorted(TASKS) == ["code", "modular", "modular_brackets", "mqar", "parity", "s5"]


def test_suite_lengths_are_the_issues_and_build_every_task():
    assert sorted(LENGTHS) == sorted(TASKS)
    for name in ("parity", "modular", "modular_brackets", "s5"):
        assert LENGTHS[name] == Lengths(3, 40, 256) and LENGTHS[name].buckets() == [40, 64, 128, 256]
    mqar = make_task("mqar", seq_len=1024, min_len=LENGTHS["mqar"].train_min, max_len=LENGTHS["mqar"].test_max)
    trained = range(LENGTHS["mqar"].train_min, LENGTHS["mqar"].train_max + 1)
    assert {(n, mqar.pairs(n)) for n in (64, 128, 256)} <= {(n, mqar.pairs(n)) for n in trained}
    assert mqar.pairs(LENGTHS["mqar"].test_max) == 64 and LENGTHS["code"].buckets() == [16, 32, 64]
    assert Lengths(2, 5, 5).buckets() == [5] and Lengths(2, 5, 9).buckets() == [5, 8, 9]
    with pytest.raises(ValueError, match="train_max <= test_max"):
        Lengths(3, 40, 39)


def test_settings_are_a_tasks_own_fields():
    assert make_task("parity", seq_len=8, min_len=1, max_len=8).settings() == {}
    brackets = make_task("modular_brackets", seq_len=8, min_len=1, max_len=8, max_depth=2)
    assert brackets.settings() == {"operators": "+-*", "max_depth": 2}


def test_grain_batches_examples():
    task = make_task("s5", seq_len=40, min_len=3, max_len=40)
    batch = grain.MapDataset.source(task).batch(4)[1]
    for key in ("inputs", "targets", "loss_mask", "length"):
        np.testing.assert_array_equal(batch[key], np.stack([task[i][key] for i in range(4, 8)]))


# Scoring.


def _batch(examples):
    return {key: np.stack([e[key] for e in examples]) for key in examples[0]}


def test_accuracy_counts_answer_positions_only():
    examples = _batch(_examples(make_task("modular_brackets", seq_len=40, min_len=9, max_len=40), 8))
    answers = int(examples["loss_mask"].sum())
    perfect = np.where(examples["loss_mask"] > 0, examples["targets"], 7)  # wrong everywhere else
    assert accuracy(perfect, examples) == accuracy(examples["targets"], examples)
    assert (accuracy(perfect, examples).token, accuracy(perfect, examples).sequence) == (1.0, 1.0)
    wrong = perfect.copy()
    first = np.argmax(examples["loss_mask"][2])
    wrong[2, first] = examples["targets"][2, first] % 5 + 1
    score = accuracy(wrong, examples)
    assert (score.sequence, score.examples, score.answers) == (7 / 8, 8, answers)
    assert score.token == pytest.approx(1 - 1 / answers)


def test_length_buckets():
    np.testing.assert_array_equal(length_buckets(np.array([1, 2, 3, 4, 5, 40, 64, 65])), [1, 2, 4, 4, 8, 64, 64, 128])
    np.testing.assert_array_equal(length_buckets(np.array([3, 40, 41, 256]), edges=[40, 256]), [40, 40, 256, 256])
    with pytest.raises(ValueError, match="reach the longest length"):
        length_buckets(np.array([257]), edges=[40, 256])


def test_accuracy_by_length():
    examples = _batch(_examples(make_task("parity", seq_len=64, min_len=3, max_len=64), 32))
    predictions = examples["targets"].copy()
    long = examples["length"] > 32
    predictions[long, 0] = 3 - predictions[long, 0]  # first answer of every long example wrong
    scores = accuracy_by_length(predictions, examples, edges=[32, 64])
    assert scores.keys() == {32, 64}
    assert scores[32].sequence == 1.0 and scores[64].sequence == 0.0
    assert scores[32].examples + scores[64].examples == 32 and scores[64].examples == long.sum()
    assert scores[64].token == pytest.approx(1 - long.sum() / examples["length"][long].sum())
