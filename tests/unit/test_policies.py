from pathlib import Path

import pytest

from safeguard_flow.domain.policies import OutputFormat, PolicyError, load_policy, load_policy_set, parse_policy

ROOT = Path(__file__).resolve().parents[2]

GOOD = """---
name: demo
labels: [0, 1]
output_format: binary
reasoning_effort: medium
owner: me
description: d
---
# Demo
## INSTRUCTIONS
Answer 0 or 1.
## DEFINITIONS
x
## VIOLATES (1)
y
## SAFE (0)
z
## EXAMPLES
w
"""


def write(tmp_path, text, name="p.md"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_policies_load_in_recommended_shape():
    policies = load_policy_set(ROOT / "policies")
    names = {p.name for p in policies}
    assert names == {"sexual", "hate", "violence", "harassment", "self-harm", "sexual/minors",
                     "hate/threatening", "violence/graphic", "spam"}
    for p in policies:
        words = len(p.text.split())
        assert 230 <= words <= 600, (p.name, words)  # ~400-600 tokens
        # the output format is stated near the top: in the INSTRUCTIONS section, before DEFINITIONS
        instructions = p.text.split("## DEFINITIONS")[0]
        assert "Answer" in instructions, p.name


def test_parse_good_policy():
    p = parse_policy(GOOD)
    assert p.name == "demo" and p.output_format is OutputFormat.BINARY and p.labels == (0, 1)
    assert len(p.sha256) == 64


def test_whitespace_only_edit_keeps_sha():
    a = parse_policy(GOOD)
    b = parse_policy(GOOD.replace("Answer 0 or 1.", "Answer   0 or 1.   \r\n\n\n").replace("\n", "\r\n"))
    assert a.sha256 == b.sha256
    c = parse_policy(GOOD.replace("Answer 0 or 1.", "Answer 1 or 0."))
    assert c.sha256 != a.sha256


def test_format_change_changes_sha():
    assert parse_policy(GOOD).sha256 != parse_policy(GOOD.replace("output_format: binary", "output_format: json")).sha256


@pytest.mark.parametrize("section", ["INSTRUCTIONS", "DEFINITIONS", "VIOLATES", "SAFE", "EXAMPLES"])
def test_missing_section_names_file_and_section(tmp_path, section):
    text = GOOD.replace(f"## {section}", "## OTHER")
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and section in str(err.value)


@pytest.mark.parametrize(
    "old,new,field",
    [
        ("output_format: binary", "output_format: xml", "output_format"),
        ("reasoning_effort: medium", "reasoning_effort: max", "reasoning_effort"),
        ("labels: [0, 1]", "labels: yes", "labels"),
        ("name: demo", "name: Bad Name!", "name"),
        ("owner: me", "owner: me\ncolour: red", "colour"),
        ("name: demo", "name: [unclosed", "front matter"),
    ],
)
def test_bad_front_matter_names_file_and_field(tmp_path, old, new, field):
    path = write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    assert str(path) in str(err.value) and field in str(err.value)


def test_no_front_matter(tmp_path):
    path = write(tmp_path, GOOD.split("---\n", 2)[2])
    with pytest.raises(PolicyError, match="front matter"):
        load_policy(path)


def test_duplicate_names_in_a_set(tmp_path):
    write(tmp_path, GOOD, "a.md")
    write(tmp_path, GOOD, "b.md")
    with pytest.raises(PolicyError, match="also used by"):
        load_policy_set(tmp_path)


def test_empty_set(tmp_path):
    with pytest.raises(PolicyError, match="no \\*.md"):
        load_policy_set(tmp_path)


@pytest.mark.parametrize("labels", ["[0, 2]", "[1]", "99999999999", "[0, 99999999999]", "[0, -1]"])
def test_binary_policies_need_labels_0_and_1(labels):
    with pytest.raises(PolicyError, match="labels"):
        parse_policy(GOOD.replace("labels: [0, 1]", f"labels: {labels}"))


@pytest.mark.parametrize("labels", ["[1, 2]", "[0]", "[0, 3000000000]"])
def test_any_policy_needs_safe_0_and_a_violation_label_in_range(labels):
    with pytest.raises(PolicyError, match="labels"):
        parse_policy(GOOD.replace("labels: [0, 1]", f"labels: {labels}").replace("output_format: binary", "output_format: json"))
    parse_policy(GOOD.replace("labels: [0, 1]", "labels: [0, 1, 2]").replace("output_format: binary", "output_format: json"))


def test_sections_inside_code_fences_do_not_count():
    fenced = GOOD.replace("## EXAMPLES\nw\n", "```\n## EXAMPLES\nw\n```\n")
    with pytest.raises(PolicyError, match="section EXAMPLES"):
        parse_policy(fenced)
    tilde = GOOD.replace("## SAFE (0)\nz\n", "~~~markdown\n## SAFE (0)\n~~~\n")
    with pytest.raises(PolicyError, match="section SAFE"):
        parse_policy(tilde)
    # A fence elsewhere leaves real headings alone.
    assert parse_policy(GOOD.replace("w\n", "w\n```\n{\"violation\": 1}\n```\n")).name == "demo"


def test_duplicate_front_matter_keys_are_refused():
    with pytest.raises(PolicyError, match="duplicate key 'name'"):
        parse_policy(GOOD.replace("name: demo\n", "name: demo\nname: other\n"))
    with pytest.raises(PolicyError, match="front matter"):
        parse_policy(GOOD.replace("owner: me", "owner: !!python/object/apply:os.system ['true']"))


def test_policy_names_give_distinct_run_id_parts():
    from safeguard_flow.domain.policies import policy_id_part

    names = ["a/b", "a_b", "a-b", "a/b_c", "a_b/c", "ab"]
    parts = {policy_id_part(n) for n in names}
    assert len(parts) == len(names)
    assert all(set(p) <= set("abcdefghijklmnopqrstuvwxyz0123456789_-.") for p in parts)
