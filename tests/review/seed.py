"""Published runs with verdicts the test chooses (label, confidence, extra), written through the real
extract -> staging -> validate -> publish path, so routing runs as it does after a nightly run."""

from __future__ import annotations

import datetime as dt
from typing import Callable

from safeguard_flow import pipeline
from safeguard_flow.domain.policies import load_policy
from safeguard_flow.domain.verdicts import MALFORMED, OK, Verdict
from safeguard_flow.warehouse import extract, policy_store, runs, staging
from safeguard_flow.warehouse.sample_data import load_sample, read_sample
from safeguard_flow.warehouse.staging import finish_labelling

DAY = "2026-11-20"
# (label or None for an error verdict, confidence, extra) for the i-th item of the run, per policy
Chooser = Callable[[int, str, int], tuple[int | None, float | None, dict]]


def relax_gate(settings) -> None:
    """The tests choose odd label mixes on purpose: the quality gate is not under test here."""
    settings.quality.max_error_rate = 1.0
    settings.quality.max_positive_rate = 1.0
    settings.quality.drift_tolerance = None
    settings.quality.min_sample = 1


def load_posts(engine, per_day: int = 40) -> list[dict]:
    rows = read_sample(per_day=per_day, days=(DAY,))
    load_sample(engine, rows)
    return rows


def publish_versions(engine, settings, names=("spam",)):
    policies = [load_policy(f"{settings.policies_dir}/{n}.md") for n in names]
    return [r.policy for r in policy_store.publish_policies(engine, settings, policies, author="test")]


def labelled_run(engine, settings, policies, choose: Chooser, kind: str = "nightly", relabel_of=None) -> tuple[str, dict]:
    """Extract (the day, or a relabel of `relabel_of`), stage chosen verdicts, validate, publish (which routes)."""
    if relabel_of is None:
        start = dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.timezone.utc)
        run_id = runs.create_run(engine, settings, kind, policies, start, start + dt.timedelta(days=1))
        extract.extract_interval(engine, settings, run_id, start, start + dt.timedelta(days=1))
    else:
        run_id = runs.create_run(engine, settings, "relabel", [relabel_of], params={"scope": "all"})
        extract.extract_relabel(engine, settings, run_id, relabel_of.name, relabel_of.version)
    run = runs.get_run(engine, settings, run_id)
    for chunk in staging.pending_chunks(engine, settings, run_id):
        verdicts = []
        for item in staging.read_chunk(engine, settings, run_id, chunk):
            i = int(item.content_id.rsplit("-", 1)[-1]) if item.content_id.rsplit("-", 1)[-1].isdigit() else hash(item.content_id)
            for name, version in run.policy_refs:
                label, confidence, extra = choose(i, name, version)
                verdicts.append(Verdict(
                    content_id=item.content_id, policy=name, policy_version=version, source=item.source,
                    content_hash=item.content_hash, label=label, confidence=confidence,
                    parse_status=OK if label is not None else MALFORMED, error=None if label is not None else "not JSON",
                    rationale=f"rationale {item.content_id}", model="chosen", extra=extra))
        staging.write_chunk(engine, settings, run_id, chunk, verdicts)
    finish_labelling(engine, settings, run_id)
    pipeline.validate_run(engine, settings, run_id)
    return run_id, pipeline.publish_run(engine, settings, run_id)
