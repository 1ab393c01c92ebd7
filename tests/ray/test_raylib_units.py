"""Fast checks of the Ray job's plumbing (no Ray, no model). The same paths run for real in
test_label_job.py (real Ray, real vLLM): a scripted engine here only pins down the row isolation
rules, which the real engine can trigger only with one kind of bad row."""

from __future__ import annotations

import pytest

from safeguard_flow.domain.content import ContentItem
from safeguard_flow.engines.base import Completion
from safeguard_flow.labelling.loop import LabelStats
from safeguard_flow.labelling.chunk import EngineSlot, EngineUnhealthy, label_chunk
from safeguard_flow.domain.verdicts import ENGINE_ERROR, INPUT_ERROR, OK


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


class DyingEngine(BatchRaisingEngine):
    """Dies (EngineDied, and stays dead) when a batch holds `KILLER`, as vLLM's engine core does."""

    def __init__(self):
        super().__init__(poison="\0never")
        self.dead = False

    def complete(self, requests):
        from safeguard_flow.engines.base import EngineDied

        if self.dead or any("KILLER" in r.content for r in requests):
            self.dead = True
            raise EngineDied("EngineDeadError: RuntimeError: CPU Generator does not use offset")
        return super().complete(requests)


def test_an_input_that_kills_the_engine_is_found_in_halves_on_fresh_engines(small_policies):
    from safeguard_flow.labelling.chunk import label_isolating

    built: list[DyingEngine] = []
    slot = EngineSlot(lambda: built.append(DyingEngine()) or built[-1])
    items = _items([f"post {i}" for i in range(5)] + ["KILLER post"] + [f"buy {i}" for i in range(2)])
    stats = LabelStats()
    verdicts = label_isolating(slot, items, small_policies, max_content_chars=1000, stats=stats)
    assert [(v.content_id, v.policy) for v in verdicts] == [(i.content_id, p.name) for i in items for p in small_policies]
    bad = {v.content_id for v in verdicts if v.is_error}
    assert bad == {"id5"}  # the killer alone, under each policy
    assert all("the engine died labelling this item" in v.error and "does not use offset" in v.error
               for v in verdicts if v.is_error)
    # deaths: all 8, items 4-7, items 4-5, the killer with both policies, then under each alone: a fresh engine each
    assert slot.restarts == len(built) - 1 == 6 and slot.in_a_row == 0
    assert stats.verdicts == len(verdicts) and stats.errors == len(small_policies)


def test_an_engine_that_dies_on_everything_is_given_up(small_policies):
    from safeguard_flow.labelling.chunk import label_isolating

    class AlwaysDead(DyingEngine):
        def complete(self, requests):
            self.dead = True
            return super().complete(requests)

    slot = EngineSlot(AlwaysDead, max_restarts=3)
    with pytest.raises(EngineUnhealthy, match="died 4 times in a row"):
        label_isolating(slot, _items(["a", "b", "c", "d"]), small_policies, max_content_chars=1000)


def test_settings_travel_to_a_job_as_one_document_without_secrets(settings_factory):
    from safeguard_flow.raylib.shipping.settings_env import resolve_paths, settings_document, settings_from_document
    from safeguard_flow.settings import SettingsError

    url = "postgresql+psycopg://labeller:s3cr3t-pw@db.example:5432/wh?sslpassword=k3y-pw&sslmode=require"
    s = settings_factory(url, model={"engine_kwargs": {"enforce_eager": True}, "dtype": "123"},
                         engine={"api_key": "sk-live-abc"},
                         ray={"num_replicas": 3, "runtime_env": {"env_vars": {"A": "b: c"}}},
                         sources=[{"table": "posts", "filters": [{"column": "lang", "value": "en"}]}])
    doc, secrets = settings_document(s)
    for secret in ("s3cr3t-pw", "k3y-pw", "sk-live-abc"):
        assert secret not in doc
    assert set(secrets) == {'["warehouse", "url"]', '["engine", "api_key"]'} and secrets['["warehouse", "url"]'] == url
    assert "db.example" in doc and "sslmode=require" in doc  # the rest of the URL stays readable
    assert settings_from_document(doc, secrets) == resolve_paths(s)
    with pytest.raises(SettingsError, match="warehouse.url"):
        settings_from_document(doc, {})  # never a silent fall-back to a masked URL

    plain, none = settings_document(settings_factory())  # SQLite: nothing secret, nothing to hand over
    assert none == {} and settings_from_document(plain) == resolve_paths(settings_factory())

    # Unset model fields stay unset on the Ray side, so the model's preset fills them there too.
    shipped = settings_from_document(*settings_document(s))
    assert "max_tokens" not in shipped.model.model_fields_set and "dtype" in shipped.model.model_fields_set


def test_label_job_submission_ships_the_package_not_the_working_folder(settings_factory, tmp_path, monkeypatch):
    import safeguard_flow.settings
    from safeguard_flow.raylib.shipping.settings_env import SETTINGS_DOC_ENV
    from safeguard_flow.raylib.shipping.submission import label_job_entrypoint, label_job_runtime_env, package_dir

    assert label_job_entrypoint("run 1; rm -rf /") == \
        "python -m safeguard_flow.raylib.batch.job label --run-id 'run 1; rm -rf /'"
    assert label_job_entrypoint("r", 2, "gcs://_sg_secret_x.zip").endswith("--replicas 2 --secrets gcs://_sg_secret_x.zip")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    s = settings_factory(ray={"runtime_env": {"env_vars": {"FROM_SETTINGS": "1"}, "pip": ["x"]}})
    env, secrets = label_job_runtime_env(s, local=True, extra={"env_vars": {"FROM_OPERATOR": "2"}})
    assert "working_dir" not in env and secrets == {}
    assert env["py_modules"] == [str(package_dir())]
    assert (package_dir() / "settings.py").samefile(safeguard_flow.settings.__file__)
    assert env["pip"] == ["x"]
    assert env["env_vars"]["FROM_SETTINGS"] == "1" and env["env_vars"]["FROM_OPERATOR"] == "2"
    assert env["env_vars"]["VLLM_CPU_KVCACHE_SPACE"] == "1" and "HF_TOKEN" not in env["env_vars"]
    assert "RAY_AUTH_MODE" not in env["env_vars"]  # the cluster's own auth mode applies
    assert not any(k.startswith("SAFEGUARD_") for k in env["env_vars"])  # one document, not N variables
    assert SETTINGS_DOC_ENV in env["env_vars"]


def test_the_job_parser_matches_the_cli_style():
    from safeguard_flow.raylib.batch.job import build_parser

    args = build_parser().parse_args(["--config", "x.yaml", "label", "--run-id", "r1", "--replicas", "2"])
    assert (args.command, args.run_id, args.replicas, args.config, args.secrets) == ("label", "r1", 2, "x.yaml", None)
    args = build_parser().parse_args(["label", "--run-id", "r1", "--config", "y.yaml"])  # the shim's order
    assert args.config == "y.yaml"


def test_a_token_with_auth_disabled_is_refused_naming_both_settings(settings_factory):
    from safeguard_flow.airflow.ray_hook import RayTarget, check_auth
    from safeguard_flow.settings import SettingsError

    target = RayTarget(dashboard_url="http://head:8265", headers={"Authorization": "Bearer t"})
    with pytest.raises(SettingsError, match=r"ray\.auth_mode.*SAFEGUARD_RAY__AUTH_MODE.*password") as err:
        check_auth(settings_factory(ray={"auth_mode": "disabled"}), target, "safeguard_ray_default")
    assert "safeguard_ray_default" in str(err.value)
    check_auth(settings_factory(ray={"auth_mode": "token"}), target, "c")  # consistent: fine
    check_auth(settings_factory(), RayTarget(dashboard_url="http://head:8265"), "c")


def test_gpu_replicas_take_max_of_gpus_and_tp_and_zero_is_refused(settings_factory):
    from safeguard_flow.raylib.batch.dataflow import replica_resources
    from safeguard_flow.settings import SettingsError

    tp2 = settings_factory(model={"tensor_parallel_size": 2}, ray={"num_gpus_per_replica": 1})
    assert replica_resources(tp2, cuda=True)["num_gpus"] == 2
    assert replica_resources(settings_factory(ray={"num_gpus_per_replica": 1}), cuda=True)["num_gpus"] == 1
    with pytest.raises(SettingsError, match="num_gpus_per_replica"):
        replica_resources(settings_factory(), cuda=True)
    cpu = replica_resources(settings_factory(ray={"resources_per_replica": {"sg_node": 1}}), cuda=False)
    assert cpu == {"num_cpus": 1.0, "num_gpus": 0.0, "resources": {"sg_node": 1.0}}


def test_an_unhealthy_replica_closes_its_engine_before_it_exits(small_policies, monkeypatch, settings_factory):
    """No bare os._exit with a live engine: its EngineCore / TP workers would keep the GPU."""
    from safeguard_flow.raylib.batch import replica as labeller
    from safeguard_flow.warehouse import staging

    events: list[str] = []

    class Broken(BatchRaisingEngine):
        def close(self):
            events.append("close")

    replica = object.__new__(labeller.ChunkLabeller)
    replica.settings, replica.run_id, replica.policies = settings_factory(), "r", list(small_policies)
    replica.share, replica.last = replica.policies, True
    replica.db, replica.engine, replica.engine_load_s, replica._first_call = None, Broken(broken=True), 0.0, False
    # An engine that cannot be restarted in the replica (issue 18 restarts a dead one there first).
    replica.attempt, replica.slot = None, EngineSlot(lambda: Broken(broken=True), max_restarts=0, engine=replica.engine)
    monkeypatch.setattr(staging, "pending_chunks", lambda *a: [0])
    monkeypatch.setattr(staging, "read_chunk", lambda *a: _items(["a", "b"]))

    def exit_(code):
        events.append(f"exit {code}")
        raise SystemExit(code)

    monkeypatch.setattr(labeller.os, "_exit", exit_)
    # This test process's own children (a Ray head, servers of other tests) are not an engine's.
    monkeypatch.setattr(labeller, "_engine_processes", lambda: [])
    with pytest.raises(SystemExit):
        replica.label(0)
    assert events == ["close", "exit 1"] and replica.engine is None


def test_engine_processes_are_this_sessions_children_only():
    """A child started in a session of its own (the local Ray head) is never killed with an engine."""
    import subprocess
    import sys

    from safeguard_flow.raylib.batch import replica as labeller

    same = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    own = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        pids = {p.pid for p in labeller._engine_processes()}
        assert same.pid in pids and own.pid not in pids
    finally:
        same.kill()
        own.kill()


def test_chunk_progress_lines_name_items_and_rate(capsys):
    from safeguard_flow.raylib.batch.replica import _Progress

    with _Progress("run r chunk 3", 500, every_s=0.05) as progress:
        progress.done = 120
        import time

        time.sleep(0.2)
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(line.startswith("run r chunk 3: ") for line in lines)
    assert "120/500 items" in lines[-1] and "items/s" in lines[-1]


def test_log_follower_emits_each_line_once():
    from safeguard_flow.airflow.ray_hook import LogFollower

    got: list[str] = []
    f = LogFollower()
    f.feed("a\nb\npart", got.append)
    f.feed("a\nb\npartial\nc\n", got.append)
    f.feed("a\nb\npartial\nc\n", got.append)
    f.flush("a\nb\npartial\nc\nend \x1b[36m(pid=1)\x1b[0m x", got.append)
    assert got == ["a", "b", "partial", "c", "end (pid=1) x"]  # no terminal colour codes in task logs


def test_policy_affinity_deals_policies_into_balanced_shares(settings_factory):
    from safeguard_flow.domain.policies import Policy
    from safeguard_flow.raylib.batch.dataflow import policy_shards, stage_plan

    policies = [Policy(name=f"p{i}", text="x" * n) for i, n in enumerate([800, 700, 600, 500, 400, 300, 200, 100])]
    shares = policy_shards(policies, 2)
    assert sorted(p.name for s in shares for p in s) == sorted(p.name for p in policies)  # each policy once
    sizes = [sum(len(p.text) for p in s) for s in shares]
    assert max(sizes) - min(sizes) <= 100, sizes
    assert len(policy_shards(policies[:1], 4)) == 1  # never an empty share

    def on(replicas: int):
        return settings_factory(ray={"policy_affinity": True, "num_replicas": replicas})

    assert [n for _, n in stage_plan(on(2), policies, 10)] == [1, 1]
    assert [n for _, n in stage_plan(on(5), policies[:3], 10)] == [2, 2, 1]  # more replicas than policies
    assert [n for _, n in stage_plan(on(5), policies[:3], 1)] == [1, 1, 1]  # never more than the chunks
    assert len(stage_plan(on(1), policies, 10)) == 1 and len(stage_plan(on(2), policies[:1], 10)) == 1
    off = settings_factory(ray={"num_replicas": 2})
    assert stage_plan(off, policies, 10) == [(policies, 2)]  # round robin: one stage, every policy
    assert stage_plan(off, policies, 1) == [(policies, 1)]


def _replica(settings, policies, share, last=True):
    """A ChunkLabeller as Ray Data builds it, holding a scripted engine (no Ray, no model)."""
    from safeguard_flow.raylib.batch import replica as labeller

    r = object.__new__(labeller.ChunkLabeller)
    r.settings, r.run_id, r.policies, r.attempt = settings, "r", list(policies), 5
    r.share, r.last = [p for p in r.policies if p.name in share], last
    r.db, r.engine, r.engine_load_s, r._first_call = None, BatchRaisingEngine(), 1.5, True
    r.slot = EngineSlot(lambda: BatchRaisingEngine(), engine=r.engine)
    return r


def test_a_refused_chunk_write_counts_nothing(small_policies, monkeypatch, settings_factory):
    """A newer label attempt owns the run: the chunk is reported skipped, and its work is not summed."""
    from safeguard_flow.raylib.batch.summary import LabelJobSummary
    from safeguard_flow.warehouse import staging

    monkeypatch.setattr(staging, "pending_chunks", lambda *a: [0])
    monkeypatch.setattr(staging, "read_chunk", lambda *a: _items(["buy now", "hello"]))

    def refuse(*a, **k):
        raise staging.StaleWrite("label attempt 5 is stale: attempt 6 owns the run")

    monkeypatch.setattr(staging, "write_chunk", refuse)
    row = _replica(settings_factory(), small_policies, {"spam", "self-harm"}).label(0)
    summary = LabelJobSummary(run_id="r")
    summary.add_row(row)
    assert row["skipped"] and summary.chunks_skipped == 1
    assert summary.items == summary.requests == summary.prompt_tokens == 0


def test_policy_affinity_stages_hand_their_verdicts_on_and_the_last_stages_the_chunk(small_policies, monkeypatch,
                                                                                     settings_factory):
    """Two ChunkLabeller stages as Ray Data chains them (pandas batches in, columns out): the first labels
    its share and carries it, the second labels the rest and writes one complete chunk."""
    import json

    import pandas as pd

    from safeguard_flow.raylib.batch import replica as labeller
    from safeguard_flow.warehouse import staging

    written: dict = {}
    monkeypatch.setattr(staging, "pending_chunks", lambda *a: [0])
    monkeypatch.setattr(staging, "read_chunk", lambda *a: _items(["buy now", "hello", "\u041a\u0443\u043f\u0438\u0442\u0435 buy"]))
    monkeypatch.setattr(staging, "write_chunk", lambda db, st, run, chunk, verdicts, attempt=None:
                        written.update(chunk=chunk, verdicts=list(verdicts), attempt=attempt))

    first = _replica(settings_factory(), small_policies, {"spam"}, last=False)
    second = _replica(settings_factory(), small_policies, {"self-harm"}, last=True)
    handed = first(pd.DataFrame({"chunk_no": [0]}))
    assert set(handed) == {"chunk_no", labeller.CARRY_COLUMN}  # nothing staged yet
    assert written == {}
    out = second(pd.DataFrame(handed))
    assert set(out) == set(labeller.RESULT_COLUMNS) and out["verdicts"] == [6] and out["items"] == [3]
    assert written["attempt"] == 5 and {(v.content_id, v.policy) for v in written["verdicts"]} == {
        (f"id{i}", p.name) for i in range(3) for p in small_policies}
    assert out["requests"] == [6]  # both stages' requests, summed
    assert [s["policies"] for s in json.loads(out["stages"][0])] == [["spam"], ["self-harm"]]


def test_summary_counts_every_stage_of_a_chunk():
    import json

    from safeguard_flow.raylib.batch.summary import LabelJobSummary

    s = LabelJobSummary(run_id="r")
    stages = json.dumps([{"pid": 1, "policies": ["b", "a"]}, {"pid": 2, "policies": ["c"]}])
    s.add_row({"chunk_no": 0, "skipped": False, "items": 4, "verdicts": 12, "errors": 0, "requests": 12,
               "prompt_tokens": 600, "cached_prompt_tokens": 500, "completion_tokens": 30, "pid": 2,
               "engine_load_s": 1.0, "started": 1.0, "finished": 2.0, "stages": stages})
    assert s.replica_pids == [1, 2] and s.policy_shares == {"1": ["a", "b"], "2": ["c"]}
    assert s.cached_prompt_tokens == 500 and "replica 1 labels a, b" in s.format()


def test_summary_marker_round_trip():
    from safeguard_flow.raylib.batch.summary import LabelJobSummary, parse_marker

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


def test_ray_packaging_lines_keep_their_level_in_a_task_log(caplog):
    """Ray's own logger writes INFO to stderr, which a task log shows as errors; routed, it stays INFO."""
    import logging

    import ray  # noqa: F401 - importing ray installs its stderr handler

    from safeguard_flow.airflow.ray_hook import route_ray_logs

    route_ray_logs()
    with caplog.at_level(logging.INFO):
        logging.getLogger("ray.dashboard.modules.dashboard_sdk").info("Uploading package gcs://_ray_pkg_x.zip.")
    record = next(r for r in caplog.records if "Uploading package" in r.message)
    assert record.levelno == logging.INFO
    assert not logging.getLogger("ray").handlers and logging.getLogger("ray").propagate
