import pytest

from safeguard_flow.domain import prompts
from safeguard_flow.domain.policies import OutputFormat
from safeguard_flow.settings import SettingsError, load_settings


def test_env_overrides_and_yaml(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text("ray:\n  num_replicas: 2\nsources:\n  - {name: posts, table: posts, id_column: post_id}\n")
    s = load_settings(cfg, environ={"SAFEGUARD_RAY__NUM_REPLICAS": "4", "SAFEGUARD_WAREHOUSE__URL": "postgresql://x/y"})
    assert s.ray.num_replicas == 4 and s.warehouse_url == "postgresql://x/y"
    assert s.source("posts").id_column == "post_id"
    with pytest.raises(SettingsError, match="no source named"):
        s.source("nope")


@pytest.mark.parametrize(
    "env,needle",
    [
        ({"SAFEGUARD_RAY__NUM_REPLICAS": "0"}, "SAFEGUARD_RAY__NUM_REPLICAS"),
        ({"SAFEGUARD_ENGINE__KIND": "tgi"}, "engine.kind"),
        ({"SAFEGUARD_WAREHOUSE__TABLE_PREFIX": "x; drop"}, "warehouse.table_prefix"),
        ({"SAFEGUARD_QUALITY__MIN_POSITIVE_RATE": "0.9", "SAFEGUARD_QUALITY__MAX_POSITIVE_RATE": "0.1"}, "quality"),
        ({"SAFEGUARD_MODEL__TYPO": "1"}, "model.typo"),
    ],
)
def test_errors_name_the_setting(env, needle):
    with pytest.raises(SettingsError, match=needle.replace(".", r"\.")):
        load_settings(environ=env)


def test_source_identifiers_are_validated():
    with pytest.raises(SettingsError, match=r"sources\[0\]\.table") as err:
        load_settings(environ={}, sources=[{"table": "posts; drop table x"}])
    # An environment variable cannot address a list entry: the hint points at the YAML instead.
    assert "SAFEGUARD_SOURCES__" not in str(err.value)


@pytest.mark.parametrize("source,needle", [
    ({"table": "t", "filters": [{"column": "a", "value": {"x": 1}}]}, r"sources\[0\]\.filters\[0\]\.value.*dict"),
    ({"table": "t", "filters": [{"column": "a", "value": [1, 2]}]}, r"sources\[0\]\.filters\[0\]\.value.*list"),
    ({"table": "t", "filters": [{"column": "a", "op": "in", "value": [{"a": 1}]}]}, r"filters\[0\]\.value"),
    ({"table": "t", "name": "s" * 65}, r"sources\[0\]\.name.*1 to 64 characters"),
])
def test_bad_filter_values_and_long_source_names_fail_at_load(source, needle):
    with pytest.raises(SettingsError, match=needle) as err:
        load_settings(environ={}, sources=[source])
    assert "SAFEGUARD_SOURCES__" not in str(err.value)
    load_settings(environ={}, sources=[{"table": "t", "name": "s" * 64,
                                        "filters": [{"column": "a", "op": "in", "value": [1, "x"]}]}])


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(SettingsError, match="SAFEGUARD_CONFIG"):
        load_settings(environ={"SAFEGUARD_CONFIG": str(tmp_path / "nope.yaml")})


def test_chat_messages_policy_is_system(small_policies):
    p = small_policies[0]
    msgs = prompts.chat_messages(p, "hello")
    assert msgs[0]["role"] == "system" and p.text in msgs[0]["content"]
    assert msgs[1] == {"role": "user", "content": "hello"}


def test_schemas(small_policies):
    for p in small_policies:
        if p.output_format is OutputFormat.BINARY:
            assert prompts.json_schema(p) is None and prompts.choices(p) == ["0", "1"]
        else:
            assert prompts.json_schema(p)["properties"]["violation"]["enum"] == [0, 1]


def test_harmony_render_and_parse(small_policies):
    p = small_policies[0]
    tokens = prompts.harmony_prompt_tokens(p, "is this spam?")
    text = prompts._harmony_encoding().decode(tokens)
    assert "Reasoning: low" in text.split("<|start|>developer")[0]  # effort in the system message
    assert p.text.splitlines()[0] in text.split("<|start|>developer")[1].split("<|start|>user")[0]
    assert text.rstrip().endswith("<|start|>assistant")
    enc = prompts._harmony_encoding()
    done = enc.encode("<|channel|>analysis<|message|>looks like an ad<|end|><|start|>assistant<|channel|>final"
                      "<|message|>1<|return|>", allowed_special="all")
    assert prompts.parse_harmony_completion(done) == ("1", "looks like an ad")
    cut = enc.encode("<|channel|>analysis<|message|>still thinking", allowed_special="all")
    final, analysis = prompts.parse_harmony_completion(cut)
    assert final is None


def test_is_harmony_model():
    assert prompts.is_harmony_model("openai/gpt-oss-safeguard-20b")
    assert not prompts.is_harmony_model("/cache/qwen2.5-0.5b-instruct")
    assert prompts.is_harmony_model("x", "harmony")
