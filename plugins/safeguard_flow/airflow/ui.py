"""The Safeguard view in the Airflow UI: recent runs, verdict rates per policy version, version flips.

A FastAPI app the plugin mounts on the API server (``/safeguard``); the Airflow nav shows it through
an external view (an iframe on ``/plugin/safeguard``). Everything is read from the warehouse's BI
views and runs table through :class:`SafeguardWarehouseHook`, so the UI shows what BI tools see.
The page is server-rendered HTML with an inline SVG chart: no JavaScript bundle to build or vendor.
JSON endpoints under ``api/`` return the same data.

Access needs a logged-in Airflow user (the API server's JWT, sent as the ``_token`` cookie inside
the Airflow UI or as a bearer token).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from html import escape
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

from safeguard_flow.airflow.svg_chart import line_chart
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.runs import RunStatus

URL_PREFIX = "/safeguard"


class Dashboard:
    """The queries behind the view; plain SQLAlchemy over the warehouse views and tables."""

    def __init__(self, engine, settings: Settings):
        self.engine, self.settings = engine, settings

    def _view(self, key: str):
        import sqlalchemy as sa

        from safeguard_flow.warehouse import schema

        return sa.table(schema.view_names(self.settings)[key], schema=self.settings.warehouse.db_schema)

    def policies(self) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        from safeguard_flow.warehouse import schema

        t = schema.tables(self.settings).policies
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(t.c.name, t.c.current_version, t.c.pinned_version, t.c.updated_at).order_by(t.c.name))
            return [dict(r._mapping) for r in rows]

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        from safeguard_flow.warehouse import runs

        return [r.to_dict() for r in runs.list_runs(self.engine, self.settings, limit=limit)]

    def daily_rates(self, days: int = 30) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        v = self._view("daily_policy_rates")
        cols = ["policy", "policy_version", "day", "verdicts", "labelled", "positives", "errors", "positive_rate", "error_rate"]
        since = (datetime.now(timezone.utc) - timedelta(days=days)).date()
        query = (
            sa.select(*[sa.column(c) for c in cols]).select_from(v)
            .where(sa.column("day") >= sa.bindparam("since", since, type_=sa.Date))
            .order_by(sa.column("day"), sa.column("policy"), sa.column("policy_version"))
        )
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["day"] = _as_date(row["day"])
        return rows

    def flip_summary(self) -> list[dict[str, Any]]:
        """Per policy and version pair: items compared, flips 0->1 and 1->0, and error changes."""
        import sqlalchemy as sa

        from safeguard_flow.warehouse import schema

        f = self._view("verdict_flips")
        old, new = sa.column("old_label"), sa.column("new_label")
        flips = (
            sa.select(
                sa.column("policy"), sa.column("old_version"), sa.column("new_version"),
                sa.func.count().label("flips"),
                sa.func.sum(sa.case((sa.and_(old == 0, new >= 1), 1), else_=0)).label("to_positive"),
                sa.func.sum(sa.case((sa.and_(old >= 1, new == 0), 1), else_=0)).label("to_safe"),
                sa.func.sum(sa.case((sa.or_(old.is_(None), new.is_(None)), 1), else_=0)).label("with_error"),
            )
            .select_from(f)
            .group_by(sa.column("policy"), sa.column("old_version"), sa.column("new_version"))
        )
        t = schema.tables(self.settings).verdicts
        a, b = t.alias("a"), t.alias("b")
        compared = (
            sa.select(a.c.policy, a.c.policy_version.label("old_version"), b.c.policy_version.label("new_version"), sa.func.count().label("compared"))
            .select_from(a.join(b, sa.and_(a.c.source == b.c.source, a.c.content_id == b.c.content_id, a.c.policy == b.c.policy, b.c.policy_version > a.c.policy_version)))
            .group_by(a.c.policy, a.c.policy_version, b.c.policy_version)
        )
        with self.engine.connect() as conn:
            totals = {(r.policy, r.old_version, r.new_version): r.compared for r in conn.execute(compared)}
            out = {(r.policy, r.old_version, r.new_version): dict(r._mapping) for r in conn.execute(flips)}
        for key, n in totals.items():
            row = out.setdefault(key, {"policy": key[0], "old_version": key[1], "new_version": key[2], "flips": 0, "to_positive": 0, "to_safe": 0, "with_error": 0})
            row["compared"] = n
        return sorted(out.values(), key=lambda r: (r["policy"], -r["new_version"], -r["old_version"]))

    def recent_flips(self, limit: int = 20) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        cols = ["policy", "source", "content_id", "old_version", "new_version", "old_label", "new_label", "new_category", "same_content", "new_labelled_at"]
        query = sa.select(*[sa.column(c) for c in cols]).select_from(self._view("verdict_flips")).order_by(sa.column("new_labelled_at").desc()).limit(limit)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def create_app(
    dashboard_factory: Callable[[], Dashboard] | None = None,
    require_auth: bool = True,
) -> FastAPI:
    """The view's app. `dashboard_factory` defaults to the warehouse of the default connection."""
    app = FastAPI(title="Safeguard Flow", docs_url=None, redoc_url=None, openapi_url=None)
    state: dict[str, Dashboard] = {}

    def dashboard() -> Dashboard:
        if "d" not in state:  # built on first request, so importing the plugin never touches the warehouse
            state["d"] = (dashboard_factory or _default_dashboard)()
        return state["d"]

    async def authenticated(request: Request) -> None:
        if require_auth:
            await _check_airflow_user(request)

    guard = [Depends(authenticated)]

    @app.get("/", response_class=HTMLResponse, dependencies=guard)
    def index(days: int = Query(30, ge=1, le=366)) -> HTMLResponse:
        return HTMLResponse(render_page(dashboard(), days=days))

    @app.get("/api/runs", dependencies=guard)
    def api_runs(limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        return _jsonable(dashboard().recent_runs(limit))

    @app.get("/api/rates", dependencies=guard)
    def api_rates(days: int = Query(30, ge=1, le=366)) -> list[dict[str, Any]]:
        return _jsonable(dashboard().daily_rates(days))

    @app.get("/api/flips", dependencies=guard)
    def api_flips() -> list[dict[str, Any]]:
        return _jsonable(dashboard().flip_summary())

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _default_dashboard() -> Dashboard:
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    hook = SafeguardWarehouseHook()
    return Dashboard(hook.get_engine(), hook.settings)


async def _check_airflow_user(request: Request) -> None:
    """Accept the Airflow UI's JWT (cookie) or an API bearer token; 401 otherwise."""
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from airflow.api_fastapi.core_api.security import resolve_user_from_token

    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise HTTPException(status_code=401, detail="log in to Airflow first (no session token)")
    await resolve_user_from_token(token)


# --- rendering ---------------------------------------------------------------------------------

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:16px 24px;color:#111827;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#6b7280;fill:#6b7280;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin-bottom:8px} th,td{padding:4px 10px;border-bottom:1px solid #e5e7eb;text-align:left}
th{background:#f9fafb;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;background:#e5e7eb}
.badge.published{background:#dcfce7;color:#166534}.badge.quarantined,.badge.failed{background:#fee2e2;color:#991b1b}
.badge.labelling,.badge.extracting,.badge.extracted,.badge.labelled,.badge.validated,.badge.created{background:#dbeafe;color:#1e40af}
.charts{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #e5e7eb;border-radius:6px;background:#fff}
.chart .grid{stroke:#e5e7eb}.chart .axis{font-size:11px;fill:#6b7280}.chart .legend{font-size:11px;fill:#374151}
.chart .chart-title{font-size:13px;font-weight:600;fill:#111827}
.cards{display:flex;gap:12px;margin:12px 0}.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 14px;min-width:120px}
.card b{display:block;font-size:20px}
"""


def render_page(dashboard: Dashboard, days: int = 30) -> str:
    policies = dashboard.policies()
    runs = dashboard.recent_runs(20)
    rates = dashboard.daily_rates(days)
    flips = dashboard.flip_summary()
    samples = dashboard.recent_flips(15)

    published = sum(1 for r in runs if r.get("status") == RunStatus.PUBLISHED)
    quarantined = sum(1 for r in runs if r.get("status") == RunStatus.QUARANTINED)
    total_verdicts = sum(int(r["verdicts"] or 0) for r in rates)
    body = [
        "<h1>Safeguard Flow</h1>",
        f'<div class="muted">warehouse {escape(mask_url(dashboard.settings.warehouse_url))} &middot; last {days} day(s)</div>',
        '<div class="cards">',
        _card("policies", len(policies)),
        _card(f"verdicts ({days}d)", total_verdicts),
        _card("recent runs published", published),
        _card("recent runs quarantined", quarantined),
        "</div>",
        "<h2>Positive rate per policy version</h2>",
        _charts(rates),
        "<h2>Flips between policy versions</h2>",
        _flip_table(flips),
        _sample_flips(samples),
        "<h2>Recent runs</h2>",
        _runs_table(runs),
        "<h2>Policies</h2>",
        _table(
            ["policy", "current version", "pinned version", "updated"],
            [[p["name"], p["current_version"], p["pinned_version"] or "", _fmt_time(p["updated_at"])] for p in policies],
        ),
    ]
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>Safeguard Flow</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(body)}</body></html>"
    )


def _charts(rates: list[dict[str, Any]]) -> str:
    by_policy: dict[str, dict[str, list[tuple[date, float | None]]]] = {}
    for r in rates:
        if r["day"] is None:
            continue
        rate = r["positive_rate"]
        by_policy.setdefault(r["policy"], {}).setdefault(f"v{r['policy_version']}", []).append(
            (r["day"], None if rate is None else float(rate))
        )
    if not by_policy:
        return '<p class="muted">No published verdicts in this period.</p>'
    charts = [line_chart(series, title=name) for name, series in sorted(by_policy.items())]
    return f'<div class="charts">{"".join(charts)}</div>'


def _flip_table(flips: list[dict[str, Any]]) -> str:
    if not flips:
        return '<p class="muted">No policy has verdicts under two versions yet.</p>'
    rows = []
    for f in flips:
        compared = int(f.get("compared") or 0)
        share = f"{int(f['flips']) / compared:.1%}" if compared else ""
        rows.append([f["policy"], f"v{f['old_version']} &rarr; v{f['new_version']}", compared, int(f["flips"]), share,
                     int(f["to_positive"] or 0), int(f["to_safe"] or 0), int(f["with_error"] or 0)])
    return _table(["policy", "versions", "items compared", "flips", "flip rate", "0 &rarr; 1", "1 &rarr; 0", "error involved"], rows, raw_cols={1, 5, 6})


def _sample_flips(samples: list[dict[str, Any]]) -> str:
    if not samples:
        return ""
    rows = [[s["policy"], f"{s['source']}/{s['content_id']}", f"v{s['old_version']}: {_label(s['old_label'])}",
             f"v{s['new_version']}: {_label(s['new_label'])}", s.get("new_category") or "", "" if s["same_content"] else "content edited"]
            for s in samples]
    return "<details><summary class=\"muted\">latest flipped items</summary>" + _table(
        ["policy", "item", "old", "new", "new category", "note"], rows) + "</details>"


def _runs_table(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return '<p class="muted">No runs yet.</p>'
    rows = []
    for r in runs:
        refs = ", ".join(f"{n} v{v}" for n, v in (r.get("policy_refs") or []))
        interval = ""
        if r.get("interval_start"):
            interval = f"{_fmt_time(r['interval_start'])} &rarr; {_fmt_time(r.get('interval_end'))}"
        status = escape(str(r.get("status")))
        rows.append([
            escape(str(r["id"])), escape(str(r.get("kind"))), f'<span class="badge {status}">{status}</span>', interval,
            escape(refs), r.get("items"), r.get("verdicts"), r.get("errors"), r.get("positives"), escape(_fmt_time(r.get("created_at"))),
        ])
    return _table(["run", "kind", "status", "interval", "policies", "items", "verdicts", "errors", "positives", "created"],
                  rows, raw_cols=set(range(10)))


def _table(headers: list[str], rows: list[list[Any]], raw_cols: set[int] | None = None) -> str:
    """Cells are escaped unless their column is in raw_cols (already-escaped HTML)."""
    raw_cols = raw_cols or set()
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = "" if cell is None else (str(cell) if i in raw_cols else escape(str(cell)))
            cls = ' class="num"' if isinstance(cell, (int, float)) and not isinstance(cell, bool) else ""
            cells.append(f"<td{cls}>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _card(label: str, value: Any) -> str:
    return f'<div class="card"><b>{escape(str(value))}</b><span class="muted">{escape(label)}</span></div>'


def _label(value: Any) -> str:
    return "error" if value is None else str(value)


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value)[:10])


def _fmt_time(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(rows)
