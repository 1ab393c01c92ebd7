"""Fast checks of the Ray job's plumbing (no Ray, no model). The same paths run for real in
test_label_job.py (real Ray, real vLLM): a scripted engine here only pins down the row isolation
rules, which the real engine can trigger only with one kind of bad row."""

from __future__ import annotations

import pytest

from safeguard_flow.content import ContentItem
from safeguard_flow.engines.base import Completion
from safeguard_flow.labelling import LabelStats
from safeguard_flow.raylib.chunk_labelling import EngineUnhealthy, label_chunk
from safeguard_flow.verdicts import ENGINE_ERROR, INPUT_ERROR, OK


class BatchRaisingEngine:
    """Raises for a whole batch when any request contains `poison` (like vLLM with an over-long prompt)."""

    model_name = "scripted"

    def __init__(self, poison: str = "POISON", broken: bool = False):
        self.poison = poison
        self.broken = broken
        self.calls = 0

    def complete(self, requests):
        self.calls += 1
        if self.broken or any(self.poison in r.content for r in requests):
            raise ValueError("prompt is longer than max_model_len")
        return [Completion(text=_answer(r), prompt_tokens=7, completion_tokens=1) for r in requests]

    def close(self):
        pass


def _answer(request):
    label = 1 if "buy" in request.content else 0
    if request.policy.output_format.value == "binary":
        return str(label)
    return f'{{"violation": {label}, "policy_category": "x", "rationale": "scripted"}}'


def _items(texts):
    return [ContentItem.from_raw(f"id{i}", t) for i, t in enumerate(texts)]


def test_a_row_that_makes_the_engine_raise_becomes_an_error_verdict(small_policies):
    items = _items(["buy now", "hello", "POISON " * 3, "buy cheap", b"\xff\xfe", "fine"])
    stats = LabelStats()
    verdicts = label_chunk(BatchRaisingEngine(), items, small_policies, max_content_chars=1000, stats=stats)
    assert [(v.content_id, v.policy) for v in verdicts] == [(i.content_id, p.name) for i in items for p in small_policies]
    by_id = {}
    for v in verdicts:
        by_id.setdefault(v.content_id, []).append(v)
    assert all(v.parse_status == ENGINE_ERROR and "max_model_len" in v.error for v in by_id["id2"])
    assert all(v.parse_status == INPUT_ERROR for v in by_id["id4"])  # undecodable bytes never reach the engine
    for cid in ("id0", "id1", "id3", "id5"):
        assert all(v.parse_status == OK for v in by_id[cid])
    assert stats.items == len(items) and stats.verdicts == len(verdicts)
    assert stats.errors == 2 * len(small_policies)


def test_an_engine_that_fails_even_a_canary_is_reported_unhealthy(small_policies):
    with pytest.raises(EngineUnhealthy):
        label_chunk(BatchRaisingEngine(broken=True), _items(["a", "b", "c"]), small_policies, max_content_chars=1000)


def test_settings_travel_to_a_job_as_environment(settings_factory):
    from safeguard_flow.raylib.settings_env import resolve_paths, settings_to_env
    from safeguard_flow.settings import load_settings

    s = settings_factory(model={"engine_kwargs": {"enforce_eager": True}, "dtype": "123"},
                         ray={"num_replicas": 3, "runtime_env": {"env_vars": {"A": "b: c"}}},
                         sources=[{"table": "posts", "filters": [{"column": "lang", "value": "en"}]}])
    env = settings_to_env(s)
    assert env["SAFEGUARD_RAY__NUM_REPLICAS"] == "3"
    assert load_settings(environ=env) == resolve_paths(s)


def test_label_job_submission_shape(settings_factory, tmp_path):
    from safeguard_flow.raylib.submission import label_job_entrypoint, label_job_runtime_env, repo_root

    assert label_job_entrypoint("run 1; rm -rf /") == "python ray_jobs/label_job.py --run-id 'run 1; rm -rf /'"
    s = settings_factory(ray={"runtime_env": {"env_vars": {"FROM_SETTINGS": "1"}, "pip": ["x"]}})
    env = label_job_runtime_env(s, local=True, extra={"env_vars": {"FROM_OPERATOR": "2"}})
    assert env["working_dir"] == str(repo_root()) and ".venv/" in env["excludes"]
    assert env["pip"] == ["x"]
    assert env["env_vars"]["FROM_SETTINGS"] == "1" and env["env_vars"]["FROM_OPERATOR"] == "2"
    assert env["env_vars"]["RAY_AUTH_MODE"] == "disabled"
    assert env["env_vars"]["SAFEGUARD_WAREHOUSE__URL"] == s.warehouse_url
    from safeguard_flow.settings import SettingsError

    with pytest.raises(SettingsError, match="working_dir"):
        repo_root(tmp_path)


def test_log_follower_emits_each_line_once():
    from safeguard_flow.airflow.ray_hook import LogFollower

    got: list[str] = []
    f = LogFollower()
    f.feed("a\nb\npart", got.append)
    f.feed("a\nb\npartial\nc\n", got.append)
    f.feed("a\nb\npartial\nc\n", got.append)
    f.flush("a\nb\npartial\nc\nend", got.append)
    assert got == ["a", "b", "partial", "c", "end"]


def test_summary_marker_round_trip():
    from safeguard_flow.raylib.summary import LabelJobSummary, parse_marker

    s = LabelJobSummary(run_id="r1")
    s.add_row({"chunk_no": 0, "skipped": False, "items": 10, "verdicts": 20, "errors": 1, "requests": 20,
               "prompt_tokens": 1000, "completion_tokens": 40, "pid": 7, "engine_load_s": 3.0,
               "started": 100.0, "finished": 104.0})
    s.add_row({"chunk_no": 1, "skipped": True, "items": 0, "verdicts": 0, "errors": 0, "requests": 0,
               "prompt_tokens": 0, "completion_tokens": 0, "pid": 7, "engine_load_s": 0.0,
               "started": 0.0, "finished": 0.0})
    parsed = parse_marker("noise\n" + s.marker_line() + "\n")
    assert parsed["items"] == 10 and parsed["chunks_skipped"] == 1 and parsed["items_per_s"] == 2.5
    assert parsed["tokens_per_item"] == 104.0
    assert "2.50 items/s" in s.format()
