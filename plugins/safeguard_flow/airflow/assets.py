"""The Airflow assets safeguard-flow produces and consumes, named in one place.

- one asset per policy, ``safeguard://policies/<name>``: an event means "a new version of this policy
  replaced the policy's current one"; its extra holds ``{"policy", "version", "sha256",
  "previous_version", "created", "change_id"}`` (change_id: the row of the warehouse's policy change
  log). The policy sync task emits them through the alias below, so only changed policies get events.
- the verdict table, ``safeguard://warehouse/<schema.><prefix>verdicts``: an event per published run,
  extra ``{"run_id", "inserted", "updated", ...}``. The URI is formed when the publish task runs, from
  the settings that publish writes with (the warehouse connection's ``table_prefix`` / ``db_schema``
  over the settings'), and emitted through the ``safeguard_verdicts`` alias: a DAG file reads no
  settings when it is parsed, so the asset can never name another table than the one written.
  Schedule a downstream DAG on ``AssetAlias("safeguard_verdicts")``, or on the URI itself
  (``safeguard://warehouse/sg_verdicts`` with the default prefix, no schema).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from airflow.sdk import Asset, AssetAlias, AssetAny

from safeguard_flow.settings import Settings

POLICY_URI_PREFIX = "safeguard://policies/"
POLICY_CHANGES_ALIAS = "safeguard_policy_changes"
VERDICTS_ALIAS = "safeguard_verdicts"


def policy_asset(name: str) -> Asset:
    return Asset(uri=POLICY_URI_PREFIX + name, group="safeguard-policy")


def policy_changes_alias() -> AssetAlias:
    return AssetAlias(name=POLICY_CHANGES_ALIAS, group="safeguard-policy")


def verdicts_alias() -> AssetAlias:
    return AssetAlias(name=VERDICTS_ALIAS, group="safeguard-verdicts")


def policy_name_of(uri: str) -> str | None:
    return uri[len(POLICY_URI_PREFIX):] if uri.startswith(POLICY_URI_PREFIX) else None


def policy_schedule(names: Iterable[str]) -> AssetAny | Asset | None:
    """Schedule on a change of any of the named policies (None when there are none)."""
    assets = [policy_asset(n) for n in sorted(set(names))]
    if not assets:
        return None
    return assets[0] if len(assets) == 1 else AssetAny(*assets)


def verdicts_asset(settings: Settings) -> Asset:
    """The verdict table's asset for the settings a run publishes with (call it at run time)."""
    table = f"{settings.warehouse.table_prefix}verdicts"
    if settings.warehouse.db_schema:
        table = f"{settings.warehouse.db_schema}.{table}"
    return Asset(uri=f"safeguard://warehouse/{table}", group="safeguard-verdicts")


def policy_change_extra(change: Any) -> dict[str, Any]:
    """The event extra for one stored policy change (policy_store.PolicyChange)."""
    return {
        "policy": change.name,
        "version": int(change.version),
        "sha256": change.sha256,
        "previous_version": change.previous_version,
        "created": bool(change.created),
        "change_id": int(change.id),
        "shadow": bool(getattr(change, "shadow", False)),  # labels in shadow; BI keeps the promoted version
    }


def changed_policies_from_events(events: Mapping[Any, Iterable[Any]]) -> dict[str, int]:
    """{policy name: newest version} from a run's triggering asset events (policy assets only)."""
    out: dict[str, int] = {}
    for key, evts in events.items():
        uri = getattr(key, "uri", None) or str(key)
        for event in evts:
            extra = getattr(event, "extra", None) or {}
            name = extra.get("policy") or policy_name_of(getattr(getattr(event, "asset", None), "uri", "") or uri)
            version = extra.get("version")
            if not name or version is None:
                continue
            out[name] = max(int(version), out.get(name, 0))
    return out
