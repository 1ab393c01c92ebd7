"""Issue 18.5/18.8 on real local Ray heads: the head we start has token auth and a private temp dir;
a job's secret environment variables (HF_TOKEN) never show in the Jobs API, and reach the job."""

from __future__ import annotations

import json
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BASE = int(os.environ.get("SAFEGUARD_TEST_PORT_BASE", "18000"))
AUTH_PORT, AUTH_DASHBOARD_PORT = BASE + 240, BASE + 235  # its ports: 240..299 and 235

# The job reads its one-off secrets like the label job does and says what it got, never the value.
PROBE = ("import hashlib, os, sys, ray; ray.init(address='auto'); "
         "from safeguard_flow.raylib.shipping import job_secrets as js; "
         "values = js.fetch(sys.argv[1]); print('env-secrets', sorted(js.env_secrets(values))); "
         "import safeguard_flow.settings as s; js.apply_env(s.load_settings(environ={}), values); "
         "print('HF_TOKEN matches', hashlib.sha256(os.environ.get('HF_TOKEN', '').encode()).hexdigest() == sys.argv[2])")


def _status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _wait(client, job_id: str, timeout_s: float = 180) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(job_id)


def test_a_job_secret_env_var_stays_out_of_the_jobs_api(ray_head, settings_factory):
    import hashlib

    from ray.job_submission import JobSubmissionClient

    from safeguard_flow.raylib.shipping import job_secrets
    from safeguard_flow.raylib.shipping.submission import label_job_runtime_env

    token = "hf_" + hashlib.sha256(os.urandom(16)).hexdigest()[:30]
    settings = settings_factory(ray={"runtime_env": {"env_vars": {"HF_TOKEN": token, "HF_HUB_OFFLINE": "1"}}})
    env, secrets = label_job_runtime_env(settings, local=True)
    client = JobSubmissionClient(ray_head.dashboard_url)
    uri = job_secrets.upload(client, secrets, pin_s=0)
    digest = hashlib.sha256(token.encode()).hexdigest()
    job_id = client.submit_job(entrypoint=f"python -c \"{PROBE}\" {uri} {digest}", runtime_env=env)
    status = _wait(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    assert "env-secrets ['HF_TOKEN']" in logs and "HF_TOKEN matches True" in logs
    with urllib.request.urlopen(f"{ray_head.dashboard_url}/api/jobs/", timeout=30) as resp:
        listing = resp.read().decode()
    assert job_id in listing and "HF_HUB_OFFLINE" in listing  # the job is listed, with its other variables
    assert token not in listing
    info = json.loads(listing)
    job = next(j for j in info if j.get("submission_id") == job_id or j.get("job_id") == job_id)
    assert token not in json.dumps(job["runtime_env"]) and "HF_TOKEN" not in job["runtime_env"].get("env_vars", {})


def test_the_local_head_starts_with_token_auth_and_a_private_temp_dir(tmp_path):
    import hashlib

    from ray.job_submission import JobSubmissionClient

    from safeguard_flow.raylib.cluster import local_head
    from safeguard_flow.raylib.shipping import job_secrets
    from safeguard_flow.settings import load_settings

    settings = load_settings(environ={}, home=str(tmp_path / "home"), ray={
        "local_port": AUTH_PORT, "local_dashboard_port": AUTH_DASHBOARD_PORT, "local_num_cpus": 1,
        "auth_mode": "token"})
    head = local_head.start_head(settings)
    try:
        root = local_head.private_root(head)  # Ray's own temp dir is world-writable: its parent is not
        info = os.lstat(root)
        assert stat.S_IMODE(info.st_mode) == 0o700 and info.st_uid == os.getuid()
        assert os.path.dirname(head.token_file) == root and (Path(head.temp_dir) / "session_latest").exists()
        other = local_head._private_temp_dir(AUTH_PORT)  # a fresh random name each time
        assert os.path.dirname(other) != root
        shutil.rmtree(os.path.dirname(other))
        assert stat.S_IMODE(os.stat(head.token_file).st_mode) == 0o600
        url = f"{head.dashboard_url}/api/jobs/"
        assert _status(url) == 401
        assert _status(url, {"Authorization": "Bearer not-the-token"}) == 403
        assert _status(url, head.auth_headers()) == 200
        assert local_head.load_head(settings) == head  # found again (its liveness probe sends the token)
        assert local_head.auth_headers_for(settings, head.dashboard_url) == head.auth_headers()

        # A job's driver joins the cluster with the head's token; the one-off secret is pinned (checked).
        client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers())
        uri = job_secrets.upload(client, {'["env","HF_TOKEN"]': "hf_x"}, pin_s=0)
        digest = hashlib.sha256(b"hf_x").hexdigest()
        job_id = client.submit_job(entrypoint=f"python -c \"{PROBE}\" {uri} {digest}")
        status = _wait(client, job_id)
        assert status == "SUCCEEDED", client.get_job_logs(job_id)[-3000:]
        with pytest.raises(Exception, match="did not pin"):
            job_secrets.pin(JobSubmissionClient(head.dashboard_url, headers=head.auth_headers()),
                            "gcs://_sg_secret_never_uploaded.zip")
    finally:
        local_head.stop_head(head, remove_temp_dir=True)
    assert not os.path.exists(head.temp_dir) and not os.path.exists(root)
