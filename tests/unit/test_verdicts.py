import pytest

from safeguard_flow.domain.policies import OutputFormat
from safeguard_flow.domain.verdicts import EMPTY, MALFORMED, OK, TRUNCATED, parse_output

B, J, R = OutputFormat.BINARY, OutputFormat.JSON, OutputFormat.JSON_RATIONALE


@pytest.mark.parametrize("text,label", [("1", 1), ("0", 0), (" 1\n", 1), ('{"violation": 1}', 1)])
def test_binary(text, label):
    out = parse_output(text, B)
    assert (out.label, out.parse_status) == (label, OK)


@pytest.mark.parametrize("text", ["yes", "10", "0 or 1", "The answer is 1 because"])
def test_binary_malformed_keeps_no_label(text):
    out = parse_output(text, B)
    assert out.label is None and out.parse_status == MALFORMED and out.error


def test_json_ok():
    out = parse_output('{"violation":1,"policy_category":"SH-2"}', J)
    assert (out.label, out.category, out.parse_status) == (1, "SH-2", OK)


def test_json_in_prose_and_fences():
    out = parse_output('Sure:\n```json\n{"violation": 0, "policy_category": null}\n```', J)
    assert (out.label, out.category) == (0, None)


def test_json_rationale_required():
    assert parse_output('{"violation":1,"policy_category":"H-1"}', R).parse_status == MALFORMED
    out = parse_output('{"violation":1,"policy_category":"H-1","rationale":"slur"}', R)
    assert out.rationale == "slur" and out.label == 1


def test_richer_fields():
    out = parse_output('{"violation":1,"policy_category":"x","confidence":0.7,"rule_ids":["R1",2]}', J)
    assert out.stated_confidence == 0.7 and out.rule_ids == ["R1", "2"]
    # The model's words about its confidence are not the verdict's confidence, and never cost the label.
    assert not hasattr(out, "confidence")
    bad = parse_output('{"violation":1,"confidence":7}', J)
    assert (bad.parse_status, bad.label, bad.stated_confidence) == ("ok", 1, None)


@pytest.mark.parametrize("text", ['{"violation": 2}', '{"violation": "maybe"}', "[1]", '{"label": 1}', "{not json"])
def test_json_malformed(text):
    out = parse_output(text, J)
    assert out.label is None and out.parse_status == MALFORMED


def test_label_outside_policy_labels():
    assert parse_output("1", B, labels=(0,)).parse_status == MALFORMED


@pytest.mark.parametrize("text", [None, "", "   \n"])
def test_empty(text):
    assert parse_output(text, J).parse_status == EMPTY


def test_truncated():
    out = parse_output('{"violation": 1, "policy_cat', J, finish_reason="length")
    assert out.parse_status == TRUNCATED and out.label is None
    assert parse_output("", J, finish_reason="length").parse_status == TRUNCATED


def test_safe_label_drops_category():
    out = parse_output('{"violation":0,"policy_category":"SH-1"}', J)
    assert (out.label, out.category) == (0, None)


@pytest.mark.parametrize("text", ["-1", "1.", "(0)", "**1**", "1!", "'0'", "01", "1 0", "+1"])
def test_binary_parser_reads_only_a_bare_digit(text):
    from safeguard_flow.domain.policies import OutputFormat
    from safeguard_flow.domain.verdicts import MALFORMED, parse_output

    parsed = parse_output(text, OutputFormat.BINARY)
    assert (parsed.label, parsed.parse_status) == (None, MALFORMED), text


@pytest.mark.parametrize("text,label", [("0", 0), ("1", 1), (" 1\n", 1), ('{"violation": 1}', 1)])
def test_binary_parser_still_reads_clean_answers(text, label):
    from safeguard_flow.domain.policies import OutputFormat
    from safeguard_flow.domain.verdicts import OK, parse_output

    assert (parse_output(text, OutputFormat.BINARY).label, parse_output(text, OutputFormat.BINARY).parse_status) == (label, OK)

def test_json_with_raw_control_characters_in_strings_parses():
    # xgrammar's JSON string rule allows raw tabs and other control characters; json's strict mode does not.
    p = parse_output('{"violation":1,"policy_category":"a\tb\x0bc"}', OutputFormat.JSON)
    assert p.parse_status == "ok" and p.label == 1 and p.category == "a\tb\x0bc"
