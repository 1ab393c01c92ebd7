"""The Safeguard view in the Airflow UI: recent runs, verdict rates per policy version, version flips.

A FastAPI app the plugin mounts on the API server (``/safeguard``); the Airflow nav shows it through
an external view (an iframe on ``/plugin/safeguard``). Everything is read from the warehouse's BI
views and runs table through :class:`SafeguardWarehouseHook`, so the UI shows what BI tools see.
Pages are server-rendered from Jinja2 templates (autoescaped; plugins/safeguard_flow/templates) with
inline SVG charts: no JavaScript bundle to build or vendor. Besides the overview: a report per run
(``runs/<id>``), per eval (``evals/<id>``) and per version pair (``diff/<policy>/<old>/<new>``).
JSON endpoints under ``api/`` return the same data.

Access needs a logged-in Airflow user (the API server's JWT, sent as the ``_token`` cookie inside
the Airflow UI or as a bearer token).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse
from markupsafe import Markup

from safeguard_flow.airflow.svg_chart import line_chart
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings
from safeguard_flow.warehouse.runs import RunStatus
from safeguard_flow.templating import render

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
            rows = conn.execute(sa.select(t.c.name, t.c.current_version, t.c.pinned_version, t.c.shadow_version,
                                          t.c.updated_at).order_by(t.c.name))
            return [dict(r._mapping) for r in rows]

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        from safeguard_flow.warehouse import runs

        return [r.to_dict() for r in runs.list_runs(self.engine, self.settings, limit=limit)]

    def run(self, run_id: str) -> dict[str, Any]:
        from safeguard_flow.warehouse import runs

        return runs.get_run(self.engine, self.settings, run_id)

    def run_labels(self, run_id: str) -> list[dict[str, Any]]:
        import sqlalchemy as sa

        from safeguard_flow.warehouse import schema

        s = schema.tables(self.settings).verdict_staging
        q = (sa.select(s.c.policy, s.c.policy_version, s.c.label, sa.func.count().label("n"))
             .where(s.c.run_id == run_id).group_by(s.c.policy, s.c.policy_version, s.c.label)
             .order_by(s.c.policy, s.c.label))
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def evals(self, limit: int = 10) -> list[dict[str, Any]]:
        from safeguard_flow.warehouse import evals

        return evals.list_evals(self.engine, self.settings, limit=limit)

    def eval(self, eval_id: str) -> dict[str, Any] | None:
        from safeguard_flow.warehouse import evals

        return evals.get_eval(self.engine, self.settings, eval_id)

    def promotions(self, limit: int = 10) -> list[dict[str, Any]]:
        from safeguard_flow.policy_quality.promotion import list_promotions

        return list_promotions(self.engine, self.settings, limit=limit)

    def version_diff(self, policy: str, old: int, new: int, examples: int = 10):
        from safeguard_flow.policy_quality.version_diff import compare_versions

        return compare_versions(self.engine, self.settings, policy, old, new, examples=examples)

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

    @app.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=guard)
    def run_report(run_id: str, days: int = Query(30, ge=1, le=366)) -> HTMLResponse:
        from safeguard_flow.warehouse.errors import RunNotFound

        try:
            return HTMLResponse(render_run_report(dashboard(), run_id, days=days))
        except RunNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.get("/evals/{eval_id}", response_class=HTMLResponse, dependencies=guard)
    def eval_report(eval_id: str) -> HTMLResponse:
        found = dashboard().eval(eval_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no eval {eval_id!r}")
        return HTMLResponse(render("eval_report.html", m={**found["metrics"], "eval_id": eval_id}, images=[],
                                   comparisons={}, back="../"))

    @app.get("/diff/{policy:path}/{old}/{new}", response_class=HTMLResponse, dependencies=guard)
    def diff_report(policy: str, old: int, new: int) -> HTMLResponse:
        from safeguard_flow.warehouse.errors import WarehouseError

        try:
            diff = dashboard().version_diff(policy, old, new)
        except WarehouseError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        return HTMLResponse(render("diff_report.html", d=diff, gate=None, back="../" * (policy.count("/") + 3)))

    @app.get("/api/evals", dependencies=guard)
    def api_evals(limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        return _jsonable(dashboard().evals(limit))

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


# --- rendering (templates/safeguard_view.html, run_report.html; autoescaped) ---------------------


def render_page(dashboard: Dashboard, days: int = 30) -> str:
    runs = dashboard.recent_runs(20)
    rates = dashboard.daily_rates(days)
    return render(
        "safeguard_view.html",
        warehouse=mask_url(dashboard.settings.warehouse_url), days=days,
        policies=dashboard.policies(), runs=runs, charts=_charts(rates),
        total_verdicts=sum(int(r["verdicts"] or 0) for r in rates),
        published=sum(1 for r in runs if r.get("status") == RunStatus.PUBLISHED),
        quarantined=sum(1 for r in runs if r.get("status") == RunStatus.QUARANTINED),
        flips=dashboard.flip_summary(), samples=dashboard.recent_flips(15),
        evals=dashboard.evals(10), promotions=dashboard.promotions(10),
    )


def render_run_report(dashboard: Dashboard, run_id: str, days: int = 30) -> str:
    """One run: counts, timings, validation, the positive rate of its policies' versions over time,
    its verdicts by label, and the flips of each of its policy versions against the version before."""
    run = dashboard.run(run_id)
    names = {n for n, _ in run["policy_refs"]}
    rates = [r for r in dashboard.daily_rates(days) if r["policy"] in names]
    diffs = []
    for name, version in run["policy_refs"]:
        if version > 1:
            try:
                diffs.append(dashboard.version_diff(name, version - 1, version, examples=5))
            except ValueError:  # the previous version was never stored (cannot happen through publish)
                pass
    return render("run_report.html", run=run, charts=_charts(rates), labels=dashboard.run_labels(run_id), diffs=diffs)


def _charts(rates: list[dict[str, Any]]) -> list[Markup]:
    """One inline SVG chart per policy, a line per version (svg_chart escapes its own text)."""
    by_policy: dict[str, dict[str, list[tuple[date, float | None]]]] = {}
    for r in rates:
        if r["day"] is None:
            continue
        rate = r["positive_rate"]
        by_policy.setdefault(r["policy"], {}).setdefault(f"v{r['policy_version']}", []).append(
            (r["day"], None if rate is None else float(rate))
        )
    return [Markup(line_chart(series, title=name)) for name, series in sorted(by_policy.items())]


def _as_date(value: Any) -> date | None:
    if value is None or isinstance(value, date) and not isinstance(value, datetime):
        return value
    if isinstance(value, datetime):
        return value.date()
    return date.fromisoformat(str(value)[:10])




def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(rows)
