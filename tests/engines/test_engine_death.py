"""An input that kills the engine (issue 18), through `safeguard-flow label` with gpt-oss-tiny on vLLM's CPU:
an input made to kill it (the per-request seed turned back on, a prompt longer than the prefill budget)
is isolated: the engine is restarted, that item alone gets an error verdict with the engine's reason,
the others are labelled, and the command exits non-zero with the count.

That the same long and hostile posts no longer kill it with the defaults (no per-request seed on CPU):
test_gpt_oss_tiny.py's probe, on that module's engine.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from safeguard_flow.domain.verdicts import ENGINE_ERROR, OK
from tests.engines.hostile_posts import LONG, ordinary

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _label(tmp_path, monkeypatch, texts: list[str], name: str, **env: str) -> tuple[int, list[dict], str]:
    from safeguard_flow.cli import main as cli

    monkeypatch.setenv("SAFEGUARD_MODEL__NAME", "gpt-oss-tiny")
    monkeypatch.setenv("SAFEGUARD_HOME", str(tmp_path / "home"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    src, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-verdicts.jsonl"
    src.write_text("".join(json.dumps({"id": f"{name}-{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    code = cli.main(["label", "--policies", str(ROOT / "policies"), "--input", str(src), "--output", str(out),
                     "--policy", "spam", "--log-file", str(tmp_path / f"{name}.log")])
    return code, [json.loads(line) for line in out.read_text().splitlines()], (tmp_path / f"{name}.log").read_text()


def test_an_input_that_kills_the_engine_is_isolated_and_the_rest_is_labelled(tmp_path, monkeypatch, capsys):
    """The crash of the issue, on purpose: a per-request seed (model.request_seed=true), one sequence at a
    time, a prefill budget of 1,024 tokens. A short prompt fits the budget and is labelled; the long one
    is split by chunked prefill and kills vLLM's engine core. First in the file, so it takes two restarts:
    all three die, the killer alone dies (its error verdict), the two others are labelled."""
    texts = [LONG, *ordinary(2)]
    code, rows, log = _label(
        tmp_path, monkeypatch, texts, "killer", SAFEGUARD_MODEL__REQUEST_SEED="true", SAFEGUARD_MODEL__MAX_NUM_SEQS="1",
        SAFEGUARD_MODEL__ENGINE_KWARGS='{"max_num_batched_tokens": 1024}')
    out = capsys.readouterr()
    by_id = {r["content_id"]: r for r in rows}
    assert len(rows) == 3
    killer = by_id["killer-0"]
    assert killer["parse_status"] == ENGINE_ERROR and "the engine died labelling this item" in killer["error"]
    assert "EngineDead" in killer["error"]  # the engine's own reason
    assert all(by_id[f"killer-{i}"]["parse_status"] == OK for i in (1, 2)), rows
    assert "CPU Generator does not use offset" in log  # vLLM's root cause, in the command's log
    assert "the engine died 2 time(s) and was restarted" in out.out
    assert code == 3 and "1 of 3 verdicts are errors" in out.err
