"""Issue 18.8: one secret rule (redact.py) for what is shown and what a Ray job's public document carries."""

from __future__ import annotations

import json

import pytest

from safeguard_flow.redact import is_secret_name, mask_url, mask_value
from safeguard_flow.settings import describe, load_settings


@pytest.mark.parametrize("url,shown", [
    # '@' in the user name (Azure style) and in the password
    ("postgresql://app@srv:s3cret@host/db", "postgresql://app@srv:***@host/db"),
    ("postgresql+psycopg://app@srv:p@ss:w/rd@host:5432/db?sslmode=require",
     "postgresql+psycopg://app@srv:***@host:5432/db?sslmode=require"),
    ("postgresql://app@host/db", "postgresql://app@host/db"),  # a user name alone is no secret
    # ODBC strings, bare and URL-encoded in a SQLAlchemy query parameter; braces may hold ';'
    ("Driver={ODBC Driver 18};Server=tcp:h,1433;UID=app;PWD=s3cret;Encrypt=yes",
     "Driver={ODBC Driver 18};Server=tcp:h,1433;UID=app;PWD=***;Encrypt=yes"),
    ("DRIVER={x};Password={s3;cr}}et};UID=u", "DRIVER={x};Password=***;UID=u"),
    ("mssql+pyodbc:///?odbc_connect=DRIVER%3D%7Bx%7D%3BUID%3Dapp%3BPWD%3Ds3cret",
     "mssql+pyodbc:///?odbc_connect=DRIVER%3D%7Bx%7D%3BUID%3Dapp%3BPWD%3D***"),
    # libpq DSN pairs, quoted values included
    ("host=db user=u password=s3cret dbname=x", "host=db user=u password=*** dbname=x"),
    ("host=db password='s3 cret' dbname=x", "host=db password=*** dbname=x"),
    # userinfo of web URLs (engine.base_url, ray.dashboard_url, a pip git URL with a token as user)
    ("http://u:s3cret@llm:8000/v1", "http://u:***@llm:8000/v1"),
    ("https://ghp_s3cret@github.com/o/r", "https://***@github.com/o/r"),
    ("git+https://s3cret@github.com/o/r.git", "git+https://***@github.com/o/r.git"),
    ("https://h/v1?api_key=s3cret&x=1", "https://h/v1?api_key=***&x=1"),
    ("http://127.0.0.1:8265", "http://127.0.0.1:8265"),
])
def test_mask_url_covers_every_form(url, shown):
    assert mask_url(url) == shown
    assert "s3cret" not in mask_url(url) and "s3 cret" not in mask_url(url)


def test_secret_names():
    for name in ("password", "PWD", "HF_TOKEN", "SAFEGUARD_ENGINE__API_KEY", "serve_api_keys", "aws_secret_access_key",
                 "GOOGLE_APPLICATION_CREDENTIALS", "hf_token"):
        assert is_secret_name(name), name
    for name in ("max_tokens", "auth_mode", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "num_replicas"):
        assert not is_secret_name(name), name


def _secret_settings():
    return load_settings(
        environ={},
        warehouse={"url": "postgresql://app@srv:wh-s3cret@db.example/wh"},
        engine={"base_url": "http://llm:base-s3cret@llm.example:8000/v1", "api_key": "sk-s3cret"},
        model={"engine_kwargs": {"hf_token": "hf-kw-s3cret", "enforce_eager": True}},
        ray={"dashboard_url": "https://ray:dash-s3cret@ray.example:8265", "serve_api_keys": ["serve-s3cret"],
             "runtime_env": {"env_vars": {"HF_TOKEN": "hf-env-s3cret", "ODBC": "DRIVER={x};PWD=odbc-s3cret",
                                          "HF_HUB_OFFLINE": "1"}}},
    )


SECRETS = ("wh-s3cret", "base-s3cret", "sk-s3cret", "hf-kw-s3cret", "dash-s3cret", "serve-s3cret", "hf-env-s3cret",
           "odbc-s3cret")


def test_repr_and_config_show_mask_every_form():
    s = _secret_settings()
    shown = repr(s) + str(s) + json.dumps(describe(s), default=str)
    for secret in SECRETS:
        assert secret not in shown, secret
    assert "app@srv:***@db.example" in shown and "HF_HUB_OFFLINE" in shown
    assert mask_value("env_vars", {"HF_TOKEN": "x", "N": "1"}) == {"HF_TOKEN": "***", "N": "1"}


def test_the_job_document_and_runtime_env_carry_no_secret(monkeypatch):
    import os

    from safeguard_flow.raylib.shipping import job_secrets
    from safeguard_flow.raylib.shipping.settings_env import resolve_paths, settings_from_document
    from safeguard_flow.raylib.shipping.submission import label_job_runtime_env

    s = _secret_settings()
    env, secrets = label_job_runtime_env(s, extra={"env_vars": {"OP_API_KEY": "op-s3cret", "OP_N": "2"}})
    public = json.dumps(env)
    for secret in (*SECRETS, "op-s3cret"):
        assert secret not in public, secret
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1" and env["env_vars"]["OP_N"] == "2"
    assert "HF_TOKEN" not in env["env_vars"] and "OP_API_KEY" not in env["env_vars"]
    assert set(secrets.values()) >= {"postgresql://app@srv:wh-s3cret@db.example/wh", "sk-s3cret", "hf-kw-s3cret",
                                     "serve-s3cret", "hf-env-s3cret", "op-s3cret"}
    # The job rebuilds the same settings, and its secret variables come back into its environment.
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("OP_API_KEY", raising=False)
    rebuilt = job_secrets.apply_env(settings_from_document(env["env_vars"]["SGFLOW_JOB_SETTINGS"], secrets), secrets)
    assert rebuilt.model_dump(exclude={"ray"}) == resolve_paths(s).model_dump(exclude={"ray"})
    assert rebuilt.ray.serve_api_keys == ["serve-s3cret"] and rebuilt.ray.dashboard_url == s.ray.dashboard_url
    assert os.environ["HF_TOKEN"] == "hf-env-s3cret" and os.environ["OP_API_KEY"] == "op-s3cret"
    monkeypatch.delenv("HF_TOKEN")
    job_secrets.export_env(rebuilt)  # what a replica does with the settings it is given
    assert os.environ["HF_TOKEN"] == "hf-env-s3cret"
