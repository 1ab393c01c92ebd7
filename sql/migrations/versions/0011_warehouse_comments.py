"""Comments on the BI views and every one of their columns, so a BI tool (Superset, DBeaver, psql's
``\\d+``) shows what each column means. The texts are the column meanings of sql/README.md.

Where they go, by dialect:
- PostgreSQL: ``COMMENT ON VIEW`` and ``COMMENT ON COLUMN`` (stored in pg_description; a later
  ``CREATE OR REPLACE VIEW`` keeps them, a ``DROP VIEW`` + ``CREATE VIEW`` loses them, so a revision
  that recreates a view must comment it again).
- MySQL / MariaDB: nothing. Neither has comments on views or on view columns (``CREATE VIEW`` takes
  no COMMENT clause, ``information_schema.COLUMNS.COLUMN_COMMENT`` of a view column is always empty,
  and the stored view text drops SQL comments): sql/README.md is the reference there.
- SQLite: nothing (no comments in its catalogue); other dialects: nothing here.

Only columns a view really has are commented (read from the database), so this revision applies to
the views as revisions 0002-0010 and 0012 left them (0012 runs before this one: it recreates views,
which would drop their comments). Downgrade removes the comments (``IS NULL``).
Self-contained: nothing is imported from safeguard_flow.

Revision ID: 0011
Revises: 0012
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0011"
down_revision = "0012"
branch_labels = None
depends_on = None

_DAY = ("the content's own UTC day: the day of the source row's updated_at the verdict labelled; verdicts "
        "without it count on their run's data-interval day, else on their labelling day")

# view (without prefix) -> (comment on the view, {column: meaning})
COMMENTS: dict[str, tuple[str, dict[str, str]]] = {
    "current_verdicts": (
        "The verdict BI should show today: one row per (source, content_id, policy), from the newest policy "
        "version up to the active one (pinned_version if pinned, else current_version); a reviewer's decision "
        "for the same text and version wins. Filter is_active_version = 1 for the active version only.",
        {
            "source": "name of the source (the configured content table) the item comes from",
            "content_id": "id of the item in its source table (as text)",
            "policy": "policy name",
            "policy_version": "policy version this verdict was labelled with (<= active_version)",
            "active_version": "the policy's active version: pinned_version if pinned, else current_version",
            "is_active_version": "1 if policy_version is the active version, 0 while a relabel has not reached "
                                 "this item yet (the previous version's verdict is shown)",
            "content_hash": "sha256 of the normalised text the label is for",
            "label": "the label (0 = SAFE); a reviewer's decision when there is one; NULL for error rows",
            "is_positive": "1 if label >= 1 (a violation), 0 if label = 0, NULL for error rows",
            "category": "category the model named, if the policy's output format has one",
            "rationale": "the model's short rationale, if the policy's output format has one",
            "confidence": "engine-measured probability of the chosen label (the cascade's for a cascade verdict)",
            "parse_status": "ok, or why there is no label: empty, truncated, malformed, engine_error, input_error",
            "error": "the reason when parse_status is not ok",
            "model": "the model that labelled the item",
            "run_id": "the labelling run that produced the verdict (sg_runs.id)",
            "labelled_at": "when the item was labelled (UTC)",
            "decided_by": "who decided the label: model, cascade, or human (a reviewer's decision)",
            "model_label": "what the model (or cascade) said, whatever a reviewer decided",
            "reviewer": "the reviewer whose decision is shown, NULL if none",
            "reviewed_at": "when that reviewer decided (UTC), NULL if no decision",
        },
    ),
    "daily_policy_rates": (
        "Verdicts per policy version and UTC day: counts, positives, errors and rates. day is " + _DAY + ". "
        "How much was labelled on which day is in daily_labelling.",
        {
            "policy": "policy name",
            "policy_version": "policy version",
            "day": _DAY,
            "verdicts": "verdicts whose content is of this day (error rows included)",
            "labelled": "of those, verdicts with a label (parse_status = ok)",
            "positives": "of those, verdicts with label >= 1",
            "errors": "of those, verdicts without a label (parse_status not ok)",
            "positive_rate": "positives / labelled (error rows excluded); NULL when nothing was labelled",
            "error_rate": "errors / verdicts",
            "labelling_day_verdicts": "verdicts labelled on this UTC day, whatever their content's day",
            "labelling_day_positives": "of those, verdicts with label >= 1",
            "labelling_day_positive_rate": "labelling_day_positives / those labelled without error on this day",
        },
    ),
    "daily_labelling": (
        "Verdicts per policy version and the UTC day they were labelled, whatever their content's day: how "
        "much labelling happened when (a relabel of old content counts on the night it ran).",
        {
            "policy": "policy name",
            "policy_version": "policy version",
            "day": "the UTC day the verdicts were labelled",
            "verdicts": "verdicts labelled on this day (error rows included)",
            "labelled": "of those, verdicts with a label (parse_status = ok)",
            "positives": "of those, verdicts with label >= 1",
            "errors": "of those, verdicts without a label (parse_status not ok)",
            "positive_rate": "positives / labelled (error rows excluded); NULL when nothing was labelled",
        },
    ),
    "verdict_flips": (
        "Items whose verdict differs between two versions of a policy: every pair old_version < new_version "
        "that both labelled the item and disagree (an error on one side counts as a change). Pick a pair "
        "with WHERE policy = ... AND old_version = ... AND new_version = ...",
        {
            "source": "name of the source the item comes from",
            "content_id": "id of the item in its source table",
            "policy": "policy name",
            "old_version": "the older policy version",
            "new_version": "the newer policy version",
            "old_label": "label under old_version (NULL for an error row)",
            "new_label": "label under new_version (NULL for an error row)",
            "old_status": "parse_status under old_version",
            "new_status": "parse_status under new_version",
            "same_content": "1 if both versions labelled the same text, 0 if the text was edited in between "
                            "(the flip may be the content's doing)",
            "old_category": "category under old_version",
            "new_category": "category under new_version",
            "new_rationale": "the model's rationale under new_version",
            "old_labelled_at": "when old_version labelled the item (UTC)",
            "new_labelled_at": "when new_version labelled the item (UTC)",
            "new_run_id": "the run that labelled the item with new_version",
        },
    ),
    "run_errors": (
        "Error verdicts per labelling run, policy version and kind of error, from the run's staged verdicts: "
        "quarantined runs (never published) show up too; purged runs do not.",
        {
            "run_id": "the labelling run (sg_runs.id)",
            "run_kind": "nightly, backfill, relabel or manual",
            "run_status": "the run's status (published, quarantined, failed, ...)",
            "run_created_at": "when the run was created (UTC)",
            "policy": "policy name",
            "policy_version": "policy version",
            "parse_status": "the kind of error: empty, truncated, malformed, engine_error, input_error",
            "errors": "error verdicts of this kind in the run",
            "sample_error": "one of their error messages",
        },
    ),
    "policy_version_diff": (
        "What a new policy version changes, per policy and pair of versions (old < new), over the content "
        "both labelled: flips 0 -> 1 and 1 -> 0, errors, edited content and the flip rate.",
        {
            "policy": "policy name",
            "old_version": "the older policy version",
            "new_version": "the newer policy version",
            "compared": "items both versions labelled (same source and content_id)",
            "both_labelled": "of those, items both labelled without error",
            "to_positive": "items that went from 0 to a positive label",
            "to_safe": "items that went from a positive label to 0",
            "with_error": "items with an error row on either side",
            "content_edited": "items whose text changed between the two labels",
            "flip_rate": "(to_positive + to_safe) / both_labelled",
        },
    ),
}


def _names() -> tuple[str, str | None]:
    warehouse = context.config.attributes["settings"].warehouse
    return warehouse.table_prefix, warehouse.db_schema


def _literal(text: str | None) -> str:
    return "NULL" if text is None else "'" + text.replace("'", "''") + "'"


def _comment(remove: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # see the docstring: MySQL/MariaDB and SQLite have no comments on views
    prefix, schema = _names()
    quote = bind.dialect.identifier_preparer.quote
    inspector = sa.inspect(bind)
    existing = set(inspector.get_view_names(schema=schema))
    for view, (about, columns) in COMMENTS.items():
        name = prefix + view
        if name not in existing:
            continue
        qualified = (quote(schema) + "." if schema else "") + quote(name)
        op.execute(f"COMMENT ON VIEW {qualified} IS {_literal(None if remove else about)}")
        for col in inspector.get_columns(name, schema=schema):
            meaning = columns.get(col["name"])
            if meaning is not None:
                op.execute(f"COMMENT ON COLUMN {qualified}.{quote(col['name'])} IS {_literal(None if remove else meaning)}")


def upgrade() -> None:
    _comment(remove=False)


def downgrade() -> None:
    _comment(remove=True)
