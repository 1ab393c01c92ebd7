"""The warehouse tables as SQLAlchemy Core objects, named with the configured prefix and schema.

The migrations in sql/migrations create exactly these (a test compares them); this module is what
the code queries. Column meanings for analysts are in README ("Warehouse tables and views").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sqlalchemy as sa

from safeguard_flow.warehouse.db import UTCDateTime

TABLE_NAMES = ("policies", "policy_versions", "runs", "work_items", "run_chunks", "verdict_staging", "verdicts",
               "verdict_analysis", "policy_changes", "evals", "eval_scores", "eval_predictions", "policy_promotions",
               "review_queue", "review_decisions", "review_estimates", "run_gates", "cascades", "cascade_chunks")
VIEW_NAMES = ("current_verdicts", "daily_policy_rates", "daily_labelling", "verdict_flips", "run_errors",
              "policy_version_diff")

# Work items carry a bucket taken from their content hash; a run's chunks are bucket ranges, so every
# copy of one text lands in the same chunk (and is labelled once there by labelling.label_items).
BUCKET_BITS = 28
BUCKETS = 1 << BUCKET_BITS


def bucket_of(content_hash: str) -> int:
    return int(content_hash[: BUCKET_BITS // 4], 16)


@dataclass(frozen=True)
class WarehouseTables:
    metadata: sa.MetaData
    policies: sa.Table
    policy_versions: sa.Table
    runs: sa.Table
    work_items: sa.Table
    run_chunks: sa.Table
    verdict_staging: sa.Table
    verdicts: sa.Table
    verdict_analysis: sa.Table
    policy_changes: sa.Table
    evals: sa.Table
    eval_scores: sa.Table
    eval_predictions: sa.Table
    policy_promotions: sa.Table
    review_queue: sa.Table  # migration 0009: human review (safeguard_flow.review)
    review_decisions: sa.Table
    review_estimates: sa.Table
    run_gates: sa.Table  # migration 0007: the quality gate per (run, policy version)
    cascades: sa.Table  # migration 0010: trained cascades (engines/cascade.py)
    cascade_chunks: sa.Table  # migration 0010: what the cascade did per run, chunk and policy version


def _verdict_columns() -> list[sa.Column]:
    """What a verdict holds, shared by staging and the published table."""
    return [
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("label", sa.Integer),  # NULL exactly when parse_status != 'ok'
        sa.Column("category", sa.Text),
        sa.Column("rationale", sa.Text),
        sa.Column("confidence", sa.Float),
        sa.Column("rule_ids", sa.JSON),
        sa.Column("parse_status", sa.String(20), nullable=False),
        sa.Column("raw_output", sa.Text),  # kept for error rows only
        sa.Column("error", sa.Text),
        sa.Column("model", sa.String(200), nullable=False, server_default=""),
        sa.Column("prompt_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer, nullable=False, server_default="0"),
        sa.Column("extra", sa.JSON),
        sa.Column("labelled_at", UTCDateTime, nullable=False),
        sa.Column("extracted_at", UTCDateTime, nullable=False),  # when the labelled text was read
        sa.Column("content_updated_at", UTCDateTime),  # the source row's own updated_at (migration 0004)
        # 'model' or 'cascade' (migration 0006); the BI view shows 'human' where a review decision wins.
        sa.Column("decided_by", sa.String(16), nullable=False, server_default="model"),
        # The UTC day sg_daily_policy_rates charts the verdict on (content_updated_at, else the run's
        # interval start, else labelled_at), stored when staged so the view needs no join (0012).
        sa.Column("content_day", sa.Date),
    ]


@lru_cache(maxsize=32)
def build_tables(prefix: str, schema: str | None) -> WarehouseTables:
    md = sa.MetaData(schema=schema)
    p = prefix

    policies = sa.Table(
        f"{p}policies", md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("current_version", sa.Integer),  # the most recently published text
        sa.Column("pinned_version", sa.Integer),  # set: labelling and BI use this version instead
        sa.Column("owner", sa.String(200), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        # A version published as shadow: it labels, but the BI views keep current_version until promoted.
        sa.Column("shadow_version", sa.Integer),
    )
    policy_versions = sa.Table(
        f"{p}policy_versions", md,
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("output_format", sa.String(20), nullable=False),
        sa.Column("reasoning_effort", sa.String(10), nullable=False),
        sa.Column("owner", sa.String(200), nullable=False, server_default=""),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("name", "sha256", name=f"{p}uq_policy_versions_sha256"),
    )
    runs = sa.Table(
        f"{p}runs", md,
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("kind", sa.String(20), nullable=False),  # nightly | backfill | relabel | manual
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("interval_start", UTCDateTime),
        sa.Column("interval_end", UTCDateTime),
        sa.Column("policy_refs", sa.JSON, nullable=False),  # [[name, version], ...]
        sa.Column("params", sa.JSON),
        sa.Column("sources", sa.JSON),
        sa.Column("items", sa.Integer),  # work items extracted
        sa.Column("unique_texts", sa.Integer),
        sa.Column("skipped_unchanged", sa.Integer),
        sa.Column("duplicate_ids", sa.Integer),
        sa.Column("chunks", sa.Integer),
        sa.Column("verdicts", sa.Integer),
        sa.Column("errors", sa.Integer),
        sa.Column("positives", sa.Integer),
        sa.Column("inserted", sa.Integer),
        sa.Column("updated", sa.Integer),
        sa.Column("unchanged", sa.Integer),
        sa.Column("prompt_tokens", sa.BigInteger),
        sa.Column("completion_tokens", sa.BigInteger),
        sa.Column("model", sa.String(200)),
        sa.Column("engine", sa.String(50)),
        sa.Column("validation", sa.JSON),
        sa.Column("warnings", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("extract_started_at", UTCDateTime),
        sa.Column("extract_finished_at", UTCDateTime),
        sa.Column("label_started_at", UTCDateTime),
        sa.Column("label_finished_at", UTCDateTime),
        sa.Column("validated_at", UTCDateTime),
        sa.Column("published_at", UTCDateTime),
        sa.Column("purged_at", UTCDateTime),  # migration 0007: retention deleted its text copies and staging
        # migration 0008: the label attempt's fencing token, writes refused by it, the working step's heartbeat
        sa.Column("label_attempt", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refused_writes", sa.Integer, nullable=False, server_default="0"),
        sa.Column("heartbeat_at", UTCDateTime),
        sa.Index(f"{p}ix_runs_created_at", "created_at"),
    )
    work_items = sa.Table(
        f"{p}work_items", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("item_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bucket", sa.Integer, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("content_id", sa.String(200), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("text", sa.Text),
        sa.Column("problem", sa.Text),
        sa.Column("content_updated_at", UTCDateTime),  # the source row's updated_at, kept on its verdicts
        sa.Index(f"{p}ix_work_items_bucket", "run_id", "bucket"),
    )
    run_chunks = sa.Table(
        f"{p}run_chunks", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("bucket_lo", sa.Integer, nullable=False),
        sa.Column("bucket_hi", sa.BigInteger, nullable=False),  # exclusive; may be 2**28
        sa.Column("items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("verdicts", sa.Integer),
        sa.Column("errors", sa.Integer),
        sa.Column("positives", sa.Integer),
        sa.Column("prompt_tokens", sa.BigInteger),  # copies of a text in the chunk counted once
        sa.Column("completion_tokens", sa.BigInteger),
        sa.Column("finished_at", UTCDateTime),
    )
    verdict_staging = sa.Table(
        f"{p}verdict_staging", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("chunk_no", sa.Integer, nullable=False),
        *_verdict_columns(),
        sa.Index(f"{p}ix_verdict_staging_chunk", "run_id", "chunk_no"),
    )
    verdicts = sa.Table(
        f"{p}verdicts", md,
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        *_verdict_columns(),
        sa.Column("run_id", sa.String(200), nullable=False),
        sa.Column("published_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_verdicts_policy_labelled", "policy", "policy_version", "labelled_at"),
        # BI at scale (0012): daily rates read only the index; "one policy, last N days" by labelled_at.
        sa.Index(f"{p}ix_verdicts_policy_day", "policy", "content_day", "policy_version", "parse_status", "label"),
        sa.Index(f"{p}ix_verdicts_policy_time", "policy", "labelled_at"),
        sa.Index(f"{p}ix_verdicts_run", "run_id"),
    )
    verdict_analysis = sa.Table(  # audit only, written when settings.warehouse.store_analysis is on
        f"{p}verdict_analysis", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("source", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("analysis", sa.Text),
        sa.Column("raw_output", sa.Text),
        sa.Column("labelled_at", UTCDateTime, nullable=False),
    )
    policy_changes = sa.Table(  # every move of a policy's current version, with the one it replaced
        f"{p}policy_changes", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("previous_version", sa.Integer),  # NULL: the policy's first version
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("created", sa.Boolean, nullable=False),
        sa.Column("author", sa.String(200), nullable=False, server_default=""),
        sa.Column("changed_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_policy_changes_name", "name", "id"),
    )
    evals = sa.Table(  # one row per `safeguard-flow eval`
        f"{p}evals", md,
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("dataset", sa.String(500), nullable=False),  # absolute file path, or table:<name>
        sa.Column("dataset_sha256", sa.String(64), nullable=False),  # over the rows scored (ids, texts, gold)
        sa.Column("rows_scored", sa.Integer, nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("engine", sa.String(50), nullable=False),
        sa.Column("policy_refs", sa.JSON, nullable=False),  # {name: {"version", "sha256"}}
        sa.Column("label_map", sa.JSON, nullable=False),  # {policy: gold column}
        sa.Column("metrics", sa.JSON, nullable=False),  # metrics.json as written
        sa.Column("output_dir", sa.Text),
        sa.Column("created_by", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_evals_dataset", "dataset", "created_at"),
    )
    eval_scores = sa.Table(  # per eval and policy: what the gate and the diff compare
        f"{p}eval_scores", md,
        sa.Column("eval_id", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer),  # NULL: the evaluated text was not published
        sa.Column("policy_sha256", sa.String(64), nullable=False),
        *(sa.Column(c, sa.Integer, nullable=False) for c in ("tp", "fp", "fn", "tn", "errors", "skipped")),
        *(sa.Column(c, sa.Float, nullable=False) for c in ("precision", "recall", "f1", "f1_low", "f1_high")),
        sa.Index(f"{p}ix_eval_scores_sha", "policy", "policy_sha256"),
    )
    eval_predictions = sa.Table(  # paired predictions for McNemar's test between two evals
        f"{p}eval_predictions", md,
        sa.Column("eval_id", sa.String(64), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("content_id", sa.String(200), primary_key=True),
        sa.Column("gold", sa.Integer, nullable=False),
        sa.Column("label", sa.Integer),  # NULL: error verdict
        sa.Column("parse_status", sa.String(20), nullable=False),
    )
    policy_promotions = sa.Table(  # every promotion, refusal and forced promotion
        f"{p}policy_promotions", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("from_version", sa.Integer),
        sa.Column("to_version", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(20), nullable=False),  # promoted | refused | forced
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("figures", sa.JSON, nullable=False),
        sa.Column("problems", sa.JSON, nullable=False),  # why the gate failed ([] when it passed)
        sa.Column("reason", sa.Text),  # required for a forced promotion
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_policy_promotions_policy", "policy", "created_at"),
    )
    review_queue, review_decisions, review_estimates = _review_tables(md, p)
    return WarehouseTables(md, policies, policy_versions, runs, work_items, run_chunks, verdict_staging, verdicts,
                           verdict_analysis, policy_changes, evals, eval_scores, eval_predictions, policy_promotions,
                           review_queue, review_decisions, review_estimates, _run_gates_table(md, p),
                           *_cascade_tables(md, p))


def _review_tables(md: sa.MetaData, p: str) -> tuple[sa.Table, sa.Table, sa.Table]:
    """Human review (migration 0009): the queue, the append-only decisions, the refreshed estimates."""
    def item() -> list[sa.Column]:  # the verdict an entry is about
        return [sa.Column("source", sa.String(64), nullable=False),
                sa.Column("content_id", sa.String(200), nullable=False),
                sa.Column("policy", sa.String(64), nullable=False),
                sa.Column("policy_version", sa.Integer, nullable=False),
                sa.Column("content_hash", sa.String(64), nullable=False)]

    queue = sa.Table(  # one entry per routed verdict (and text); leased to one reviewer at a time
        f"{p}review_queue", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        *item(),
        sa.Column("run_id", sa.String(200), nullable=False),  # the run whose published verdict was routed
        sa.Column("text", sa.Text),  # the content as labelled (NULL: its work item was gone when routed)
        sa.Column("model_label", sa.Integer),  # the verdict when routed (NULL: an error verdict)
        sa.Column("confidence", sa.Float),
        sa.Column("parse_status", sa.String(20), nullable=False),
        sa.Column("decided_by", sa.String(16), nullable=False, server_default="model"),
        sa.Column("reason", sa.String(32), nullable=False),  # the first of reasons, by priority
        sa.Column("reasons", sa.JSON, nullable=False),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("audit", sa.Boolean, nullable=False, server_default=sa.false()),  # in the random audit sample
        sa.Column("sampling_prob", sa.Float, nullable=False),  # P(in the audit sample) of this verdict
        sa.Column("stratum", sa.String(16), nullable=False),  # doubtful | confident (the audit's strata)
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),  # open | decided
        sa.Column("leased_by", sa.String(200)),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("decided_at", UTCDateTime),
        sa.UniqueConstraint("source", "content_id", "policy", "policy_version", "content_hash",
                            name=f"{p}uq_review_queue_item"),
        sa.Index(f"{p}ix_review_queue_next", "policy", "status", "priority"),
        sa.Index(f"{p}ix_review_queue_audit", "policy", "policy_version", "audit"),
    )
    decisions = sa.Table(  # append-only: a reviewer's decision (or skip, decision NULL) on a text
        f"{p}review_decisions", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("queue_id", sa.Integer),  # NULL: imported for an item that was never queued
        *item(),
        sa.Column("decision", sa.Integer),  # the label; NULL: skipped
        sa.Column("model_label", sa.Integer),  # the model's label the reviewer saw
        sa.Column("reviewer", sa.String(200), nullable=False),
        sa.Column("note", sa.Text),
        sa.Column("origin", sa.String(20), nullable=False),  # ui | labelstudio | argilla
        sa.Column("decided_at", UTCDateTime, nullable=False),
        # sg_current_verdicts finds the newest decision per (policy, version, text) through this index.
        sa.Index(f"{p}ix_review_decisions_text", "policy", "policy_version", "content_hash", "id"),
        sa.Index(f"{p}ix_review_decisions_queue", "queue_id"),
    )
    estimates = sa.Table(  # per policy version, refreshed by `review route`/`import` and each decision
        f"{p}review_estimates", md,
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("decisions", sa.Integer, nullable=False),  # texts with a reviewer's decision
        sa.Column("agreement", sa.Float),  # share of those where the model said the same
        sa.Column("audit_items", sa.Integer, nullable=False),  # the random audit sample
        sa.Column("audit_decided", sa.Integer, nullable=False),
        *(sa.Column(f"{m}{s}", sa.Float) for m in ("prevalence", "precision", "recall") for s in ("", "_low", "_high")),
        sa.Column("computed_at", UTCDateTime, nullable=False),
    )
    return queue, decisions, estimates


def _run_gates_table(md: sa.MetaData, p: str) -> sa.Table:
    """The quality gate per (run, policy version) (migration 0007): passed or quarantined, and why."""
    return sa.Table(
        f"{p}run_gates", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("outcome", sa.String(20), nullable=False),  # passed | quarantined
        sa.Column("shadow", sa.Boolean, nullable=False, server_default=sa.false()),  # a shadow version then
        sa.Column("reason", sa.Text),  # the failed checks, in words (NULL when it passed)
        sa.Column("checks", sa.Integer, nullable=False, server_default="0"),
        sa.Column("failed", sa.Integer, nullable=False, server_default="0"),
        sa.Column("verdicts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("errors", sa.Integer, nullable=False, server_default="0"),
        sa.Column("positives", sa.Integer, nullable=False, server_default="0"),
        sa.Column("retry_run_id", sa.String(200)),  # the run relabelling a quarantined version
        sa.Column("validated_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_run_gates_outcome", "outcome", "validated_at"),
    )


def _cascade_tables(md: sa.MetaData, p: str) -> tuple[sa.Table, sa.Table]:
    """Cascades (migration 0010): each trained cascade, and what it did per run chunk and policy version."""
    cascades = sa.Table(
        f"{p}cascades", md,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("policy", sa.String(64), nullable=False),
        sa.Column("policy_version", sa.Integer, nullable=False),  # a cascade serves this version only
        sa.Column("encoder", sa.String(64), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),  # verdicts | the labelled file
        sa.Column("training_size", sa.Integer, nullable=False),
        sa.Column("training_sha256", sa.String(64), nullable=False),
        sa.Column("low", sa.Float, nullable=False),  # probability <= low decides 0
        sa.Column("high", sa.Float, nullable=False),  # probability >= high decides 1
        sa.Column("min_agreement", sa.Float, nullable=False),
        sa.Column("share_decided", sa.Float),  # held-out (cross-fitted) figures
        sa.Column("agreement", sa.Float),
        sa.Column("agreement_low", sa.Float),
        sa.Column("heldout", sa.JSON, nullable=False),
        sa.Column("model", sa.JSON, nullable=False),  # the classifier's numbers (no pickle)
        sa.Column("actor", sa.String(200), nullable=False, server_default=""),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Index(f"{p}ix_cascades_policy", "policy", "policy_version", "id"),
    )
    chunks = sa.Table(
        f"{p}cascade_chunks", md,
        sa.Column("run_id", sa.String(200), primary_key=True),
        sa.Column("chunk_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("policy", sa.String(64), primary_key=True),
        sa.Column("policy_version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("cascade_id", sa.Integer),
        sa.Column("items", sa.Integer, nullable=False, server_default="0"),
        sa.Column("decided", sa.Integer, nullable=False, server_default="0"),
        sa.Column("audited", sa.Integer, nullable=False, server_default="0"),  # decided and still sent to the model
        sa.Column("audit_agree", sa.Integer, nullable=False, server_default="0"),
        sa.Column("calls_avoided", sa.Integer, nullable=False, server_default="0"),
        sa.Column("cascade_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("model_s", sa.Float, nullable=False, server_default="0"),
        sa.Column("off", sa.Boolean, nullable=False, server_default=sa.false()),  # audit agreement switched it off
        sa.Column("note", sa.Text),
        sa.Column("recorded_at", UTCDateTime, nullable=False),
    )
    return cascades, chunks
