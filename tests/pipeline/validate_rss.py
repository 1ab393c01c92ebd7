"""A big labelled run for the validate step's memory test (and `python -m tests.pipeline.validate_rss`,
which prints the figure): N staged verdicts with long rationales, written straight into a migrated
warehouse in batches, then the validate step run in a child process whose peak RSS is read back.

    python -m tests.pipeline.validate_rss [N_VERDICTS] [RATIONALE_BYTES]
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BATCH = 5_000


def build_run(settings, n_verdicts: int, rationale_bytes: int = 2048) -> str:
    """A labelled run of the two test policies with n_verdicts staged verdicts (half per policy):
    ~5% positive, ~1% malformed, each with a `rationale_bytes` rationale. Returns its run id."""
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import db, policy_store, runs, schema
    from safeguard_flow.warehouse.db import bulk_insert, utcnow, write_tx
    from safeguard_flow.warehouse.runs import RunStatus as S

    engine = db.make_engine(settings)
    try:
        wanted = {"spam", "self-harm"}
        policies = [p for p in load_policy_set(settings.policies_dir) if p.name in wanted]
        policies = [r.policy for r in policy_store.publish_policies(engine, settings, policies, author="rss")]
        items = n_verdicts // len(policies)
        start = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
        run_id = runs.create_run(engine, settings, "nightly", policies, start, start + dt.timedelta(days=1))
        now = utcnow()
        runs.transition(engine, settings, run_id, S.EXTRACTING, extract_started_at=now)
        runs.transition(engine, settings, run_id, S.EXTRACTED, items=items, chunks=1, extract_finished_at=now)
        runs.transition(engine, settings, run_id, S.LABELLING, label_started_at=now)
        s = schema.tables(settings).verdict_staging
        filler = ("The post reads as an ordinary message; nothing in it matches the policy's violation "
                  "criteria. ") * (rationale_bytes // 90 + 1)
        for lo in range(0, items, BATCH):
            rows = []
            for i in range(lo, min(items, lo + BATCH)):
                for p in policies:
                    bad = i % 100 == 7
                    rows.append(dict(
                        run_id=run_id, source="posts", content_id=f"post-{i:09d}", policy=p.name,
                        policy_version=p.version, chunk_no=0, content_hash=f"{i:064x}",
                        label=None if bad else int(i % 20 == 3), category=None,
                        rationale=f"{i} {filler}"[:rationale_bytes], confidence=0.9, rule_ids=None,
                        parse_status="malformed" if bad else "ok", raw_output="??" if bad else None,
                        error="unparseable" if bad else None, model="rss-test", prompt_tokens=700,
                        completion_tokens=20, extra=None, labelled_at=now, extracted_at=now,
                        content_updated_at=now))
            with write_tx(engine) as conn:
                bulk_insert(conn, s, rows)
        runs.transition(engine, settings, run_id, S.LABELLED, label_finished_at=utcnow())
        return run_id
    finally:
        engine.dispose()


CHILD = """
import json, sys
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse import db
from safeguard_flow import pipeline
from safeguard_flow.pipeline.expectations import QualityGateFailed

settings = Settings.model_validate_json(sys.stdin.read())
engine = db.make_engine(settings)
try:
    report = pipeline.validate_run(engine, settings, sys.argv[1])
    ok, summary = report.success, report.summary
except QualityGateFailed as exc:
    ok, summary = False, exc.report.summary
# VmHWM, this process's own peak: ru_maxrss is carried over from the parent across fork+exec on
# Linux, so under a large pytest process it would report the parent's peak.
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"peak_mb": peak_kb / 1024, "success": ok, "summary": summary}))
"""


def measure_validate(settings, run_id: str, timeout: float = 900) -> dict:
    """Run the validate step of `run_id` in a fresh interpreter; its peak RSS (MB), success and summary."""
    proc = subprocess.run([sys.executable, "-c", CHILD, run_id], input=settings.model_dump_json(), text=True,
                          capture_output=True, timeout=timeout, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"validate child exited {proc.returncode}: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> int:
    from safeguard_flow.settings import load_settings
    from safeguard_flow.warehouse import schema

    n = int(argv[0]) if argv else 300_000
    size = int(argv[1]) if len(argv) > 1 else 2048
    with tempfile.TemporaryDirectory(prefix="sg-rss-") as tmp:
        settings = load_settings(environ={}, home=tmp, policies_dir=str(ROOT / "policies"),
                                 warehouse={"url": f"sqlite:///{tmp}/warehouse.db"})
        schema.upgrade(settings)
        t0 = dt.datetime.now()
        run_id = build_run(settings, n, size)
        print(f"staged {n:,} verdicts with {size:,}-byte rationales in {(dt.datetime.now() - t0).total_seconds():.0f}s")
        t0 = dt.datetime.now()
        result = measure_validate(settings, run_id)
        took = (dt.datetime.now() - t0).total_seconds()
        print(f"validate: peak RSS {result['peak_mb']:.0f} MB, {took:.0f}s, gate "
              f"{'passed' if result['success'] else 'failed'}")
        print(result["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
