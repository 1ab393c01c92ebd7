"""One precedence for settings (defaults < YAML < env < overrides < connection), values parsed by the
field's type, paths in a YAML relative to the file, and no secret in anything shown."""

from __future__ import annotations

import json

import pytest
import yaml

from safeguard_flow.cli import main as cli
from safeguard_flow.redact import mask_url, mask_value
from safeguard_flow.settings import SettingsError, apply_connection, describe, load_settings

SECRET_URL = "postgresql+psycopg://bob:hunter2@db.example:5432/wh?sslmode=require&password=hunter2"


def test_env_values_are_parsed_by_the_fields_type():
    s = load_settings(environ={
        "SAFEGUARD_WAREHOUSE__DB_SCHEMA": "no",        # YAML would read a boolean
        "SAFEGUARD_MODEL__DTYPE": "16",                # YAML would read an integer
        "SAFEGUARD_MODEL__NAME": "1e3",
        "SAFEGUARD_ENGINE__API_KEY": "0123",
        "SAFEGUARD_RAY__NUM_REPLICAS": "4",
        "SAFEGUARD_WAREHOUSE__STORE_ANALYSIS": "true",
        "SAFEGUARD_QUALITY__MAX_ERROR_RATE": "0.5",
        "SAFEGUARD_RAY__RUNTIME_ENV": '{"env_vars": {"A": "1"}}',
        "SAFEGUARD_SOURCES": '[{"name": "posts", "table": "posts", "id_column": "post_id"}]',
        "SAFEGUARD_HOME": "/srv/sg",
        "SAFEGUARD_TEST_RAY_PORT": "24101",            # not a setting: ignored
    })
    assert s.warehouse.db_schema == "no" and s.model.dtype == "16" and s.model.name == "1e3"
    assert s.engine.api_key == "0123"
    assert s.ray.num_replicas == 4 and s.warehouse.store_analysis is True and s.quality.max_error_rate == 0.5
    assert s.ray.runtime_env == {"env_vars": {"A": "1"}}
    assert s.source("posts").id_column == "post_id" and s.home == "/srv/sg"


@pytest.mark.parametrize("env,needle", [
    ({"SAFEGUARD_RAY__NUM_REPLICAS": "four"}, "setting ray.num_replicas (set SAFEGUARD_RAY__NUM_REPLICAS)"),
    ({"SAFEGUARD_SOURCES": '[{"table": "a b"}]'}, "setting sources[0].table (set SAFEGUARD_SOURCES as a JSON list)"),
    ({"SAFEGUARD_SOURCES": "[not json"}, "SAFEGUARD_"),
])
def test_bad_env_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError) as err:
        load_settings(environ=env)
    assert needle in str(err.value)


def test_precedence_and_origins(tmp_path):
    cfg = tmp_path / "s.yaml"
    cfg.write_text(yaml.safe_dump({"ray": {"num_replicas": 2, "num_gpus_per_replica": 1},
                                   "model": {"max_tokens": 64}, "warehouse": {"chunk_size": 7}}))
    s = load_settings(cfg, environ={"SAFEGUARD_RAY__NUM_REPLICAS": "3", "SAFEGUARD_MODEL__MAX_TOKENS": "32"},
                      model={"max_tokens": 16})
    assert (s.ray.num_replicas, s.ray.num_gpus_per_replica, s.model.max_tokens, s.warehouse.chunk_size) == (3, 1, 16, 7)
    assert s.origin("ray.num_replicas") == "env SAFEGUARD_RAY__NUM_REPLICAS"
    assert s.origin("ray.num_gpus_per_replica") == s.origin("warehouse.chunk_size") == f"yaml {cfg.resolve()}"
    assert s.origin("model.max_tokens") == "override"
    assert s.origin("ray.max_restarts") == "default"
    # SAFEGUARD_CONFIG names the file when no config_file is given.
    assert load_settings(environ={"SAFEGUARD_CONFIG": str(cfg)}).ray.num_replicas == 2

    # A connection owns the warehouse URL: it wins over env, and says so.
    env = load_settings(environ={"SAFEGUARD_WAREHOUSE__URL": "sqlite:////tmp/env.db"})
    conn = apply_connection(env, "wh", "warehouse", {"url": SECRET_URL, "table_prefix": "bi_"})
    assert conn.warehouse_url == SECRET_URL and conn.origin("warehouse.url") == "connection wh"
    assert conn.origin("warehouse.table_prefix") == "connection wh" and conn.origin("model.name") == "default"
    with pytest.raises(SettingsError, match="chunk_size"):
        apply_connection(env, "wh", "warehouse", {"chunk_size": 3})  # not a field a connection owns
    with pytest.raises(SettingsError, match=r"setting warehouse.table_prefix \(in connection 'wh'\)"):
        apply_connection(env, "wh", "warehouse", {"table_prefix": "no-dash"})


def test_a_yaml_next_to_another_working_directory(tmp_path, monkeypatch):
    """Relative paths in a YAML file mean the file's folder, wherever the process runs; a
    safeguard.yaml in the working directory is not read unless named."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "safeguard.yaml").write_text(yaml.safe_dump({
        "home": "state", "policies_dir": "policies", "model": {"cache_dir": "models"},
        "warehouse": {"url": "sqlite:///data/wh.db"}, "ray": {"num_replicas": 5}}))

    monkeypatch.chdir(elsewhere)
    s = load_settings(project / "safeguard.yaml", environ={})
    assert s.home_path == project / "state" and s.policies_dir == str(project / "policies")
    assert s.model_cache_dir == project / "models"
    assert s.warehouse_url == f"sqlite:///{project / 'data' / 'wh.db'}"
    # SAFEGUARD_CONFIG itself is a path as typed in the shell: relative to the working directory.
    assert load_settings(environ={"SAFEGUARD_CONFIG": "../project/safeguard.yaml"}).home_path == project / "state"
    # Env paths are relative to the working directory.
    assert load_settings(environ={"SAFEGUARD_HOME": "here"}).home_path == elsewhere / "here"

    monkeypatch.chdir(project)
    implicit = load_settings(environ={})
    assert implicit.ray.num_replicas == 1 and implicit.home_path == project / ".safeguard"  # file not read


def test_config_show_notes_an_unread_local_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "safeguard.yaml").write_text("ray: {num_replicas: 5}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAFEGUARD_CONFIG", raising=False)
    assert cli.main(["config", "show"]) == 0
    assert "safeguard.yaml is not read" in capsys.readouterr().err
    assert cli.main(["--config", "safeguard.yaml", "config", "show"]) == 0
    captured = capsys.readouterr()
    assert "not read" not in captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("ray.num_replicas "))
    assert "5" in row and f"yaml {tmp_path / 'safeguard.yaml'}" in row


def test_config_show_masks_the_warehouse_password(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SAFEGUARD_WAREHOUSE__URL", SECRET_URL)
    monkeypatch.setenv("SAFEGUARD_ENGINE__API_KEY", "sk-hunter2")
    monkeypatch.setenv("SAFEGUARD_RAY__RUNTIME_ENV", json.dumps({"env_vars": {"DB_PASSWORD": "hunter2"}}))
    assert cli.main(["config", "show"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    row = next(line for line in out.splitlines() if line.startswith("warehouse.url "))
    assert "postgresql+psycopg://bob:***@db.example:5432/wh?sslmode=require&password=***" in row
    assert row.rstrip().endswith("env SAFEGUARD_WAREHOUSE__URL")

    assert cli.main(["config", "show", "--json"]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    rows = {r["setting"]: r for r in json.loads(out)}
    assert rows["engine.api_key"] == {"setting": "engine.api_key", "value": "***",
                                      "source": "env SAFEGUARD_ENGINE__API_KEY"}
    assert rows["model.max_tokens"]["value"] == 128 and rows["model.max_tokens"]["source"] == "default"


def test_repr_and_str_of_settings_never_show_a_secret():
    s = load_settings(environ={}, warehouse={"url": SECRET_URL}, engine={"api_key": "sk-hunter2"},
                      ray={"runtime_env": {"env_vars": {"SAFEGUARD_WAREHOUSE__URL": SECRET_URL}}})
    for text in (repr(s), str(s), repr(s.warehouse), repr(s.ray), str(describe(s))):
        assert "hunter2" not in text
    assert "bob:***@db.example" in repr(s)
    assert s.warehouse_url == SECRET_URL  # the value itself is intact
    assert load_settings(environ={}).engine.api_key == "EMPTY" and "EMPTY" in repr(load_settings(environ={}))


@pytest.mark.parametrize("url,shown", [
    ("postgresql+psycopg://u:pw@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
    ("postgresql://u:p@ss/w:rd@h/db", "postgresql://u:***@h/db"),  # unescaped '@' and '/' in the password
    ("postgresql://u@h/db?password=pw&sslmode=require", "postgresql://u@h/db?password=***&sslmode=require"),
    ("https://h/v1?api_key=k&token=t&secret=s&x=1", "https://h/v1?api_key=***&token=***&secret=***&x=1"),
    ("snowflake://u:pw@acct/db?private_key=k#frag", "snowflake://u:***@acct/db?private_key=***#frag"),
    ("host=db user=u password=pw dbname=x", "host=db user=u password=*** dbname=x"),
    ("sqlite:////tmp/w.db", "sqlite:////tmp/w.db"),
    ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
    ("", ""),
])
def test_mask_url(url, shown):
    assert mask_url(url) == shown


def test_mask_value_by_name():
    assert mask_value("api_key", "sk-1") == "***" and mask_value("api_key", "EMPTY") == "EMPTY"
    assert mask_value("dashboard_url", "http://u:t@h:8265") == "http://u:***@h:8265"
    assert mask_value("env_vars", {"PGPASSWORD": "x", "HF_TOKEN": "y", "N": "1"}) == {
        "PGPASSWORD": "***", "HF_TOKEN": "***", "N": "1"}
    assert mask_value("max_tokens", 5) == 5 and mask_value("auth_mode", "token") == "token"
