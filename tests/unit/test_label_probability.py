"""Reading the chosen label's probability from token logprobs (domain/label_probability.py)."""

from __future__ import annotations

import math

import pytest

from safeguard_flow.domain.label_probability import TokenStep, label_probabilities

L = math.log


def steps(*tokens):
    """(text, {candidate: p}) pairs; the generated token's own p must be among the candidates."""
    return [TokenStep(text, {t: L(p) for t, p in cands.items()}) for text, cands in tokens]


def test_binary_normalises_over_the_labels_only():
    # Raw logprobs: 'yes' and ' 1' are no labels and do not count.
    probs = label_probabilities(steps(("1", {"1": 0.6, "0": 0.2, "yes": 0.1, " 1": 0.05})), (0, 1),
                                json_answer=False, harmony=False, exhaustive=True)
    assert probs == pytest.approx({1: 0.75, 0: 0.25})


def test_json_label_inside_the_object_and_a_token_that_joins_it():
    answer = steps(('{"', {'{"': 1.0}), ("violation", {"violation": 1.0}), ('":', {'":': 0.9}),
                   ("0", {"0": 0.3, "1": 0.1}), (',"', {',"': 1.0}))
    assert label_probabilities(answer, (0, 1), json_answer=True, harmony=False, exhaustive=True)[0] == \
        pytest.approx(0.75)
    # A tokenizer that merges ':' and the digit: candidates must share the prefix.
    joined = steps(('{"violation"', {'{"violation"': 1.0}), (":1", {":1": 0.2, ":0": 0.6, "0": 0.1}), ("}", {"}": 1.0}))
    assert label_probabilities(joined, (0, 1), json_answer=True, harmony=False, exhaustive=True)[1] == \
        pytest.approx(0.25)


def test_harmony_reads_the_final_channel_not_the_analysis():
    toks = steps(("<|channel|>", {"<|channel|>": 1.0}), ("analysis", {"analysis": 1.0}), ("<|message|>", {}),
                 ("1", {"1": 0.9, "0": 0.1}),  # a digit in the analysis: not the answer
                 ("<|end|>", {}), ("<|start|>", {}), ("assistant", {}), ("<|channel|>", {}), ("final", {}),
                 ("<|message|>", {}), ("0", {"0": 0.2, "1": 0.2}), ("<|return|>", {}))
    assert label_probabilities(toks, (0, 1), json_answer=False, harmony=True, exhaustive=True)[0] == pytest.approx(0.5)
    assert label_probabilities(toks[:5], (0, 1), json_answer=False, harmony=True, exhaustive=True) is None


def test_multi_token_labels_part_where_their_tokens_differ():
    labels = (0, 1, 10)
    # '1' then the number ends (','): p(first '1' among labels) x p(end vs '0' continuing to 10).
    one = steps(("1", {"1": 0.8, "0": 0.2}), (",", {",": 0.6, "0": 0.2}))
    probs = label_probabilities(one, labels, json_answer=False, harmony=False, exhaustive=True)
    assert probs[1] == pytest.approx(0.8 * 0.75) and probs[0] == pytest.approx(0.2)
    assert probs[10] == pytest.approx(0.8 * 0.25)
    ten = steps(("1", {"1": 0.8, "0": 0.2}), ("0", {",": 0.6, "0": 0.2}))
    assert label_probabilities(ten, labels, json_answer=False, harmony=False, exhaustive=True)[10] == \
        pytest.approx(0.8 * 0.25)


def test_a_label_missing_from_the_top_k_is_bounded_by_the_smallest_candidate():
    top = steps(("1", {"1": 0.5, "a": 0.3, "b": 0.1}))  # '0' not in the top-3: at most 0.1
    assert label_probabilities(top, (0, 1), json_answer=False, harmony=False, exhaustive=False)[1] == \
        pytest.approx(0.5 / 0.6)
    assert label_probabilities(top, (0, 1), json_answer=False, harmony=False, exhaustive=True)[1] == 1.0


def test_no_label_no_probability():
    assert label_probabilities(steps(("yes", {"yes": 1.0})), (0, 1), json_answer=False, harmony=False,
                               exhaustive=True) is None
    assert label_probabilities(steps(("7", {"7": 1.0})), (0, 1), json_answer=False, harmony=False,
                               exhaustive=True) is None
    assert label_probabilities([], (0, 1), json_answer=True, harmony=False, exhaustive=True) is None
