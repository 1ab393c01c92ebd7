"""The Safeguard view in the Airflow UI: recent runs, verdict rates per policy version, version flips.

A FastAPI app the plugin mounts on the API server (``/safeguard``); the Airflow nav shows it through
an external view (an iframe on ``/plugin/safeguard``). Everything is read from the warehouse's BI
views and runs table through :class:`SafeguardWarehouseHook` (the queries are warehouse/views.py's
and the runs, evals and promotions modules'), so the UI shows what BI tools see.
Pages are server-rendered from Jinja2 templates (autoescaped; plugins/safeguard_flow/templates) with
inline SVG charts: no JavaScript bundle to build or vendor. Besides the overview: a report per run
(``runs/<id>``), per eval (``evals/<id>``) and per version pair (``diff/<policy>/<old>/<new>``).
JSON endpoints under ``api/`` return the same data.

Every route is authorised through Airflow's auth manager (airflow/ui_auth.py): reading needs DAG
read access (403 otherwise). What a reader who may not edit DAGs (Airflow's Viewer role) sees: rates,
counts, runs (status, counts, timings, warnings), evals' metrics, policy versions and flip counts. What
only DAG editors see, since it can quote content: run error messages and validation details (SQL
errors carry parameter dumps), flipped items and their rationales, dataset paths (viewers get the
file name) and the warehouse location. The JSON endpoints follow the same rule.

Queries are bounded: each statement of the view's connections stops after UI_STATEMENT_TIMEOUT_S
(PostgreSQL's statement_timeout; SQLite's progress handler), and the overview page is cached for
OVERVIEW_TTL_S per (days, viewer or editor).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import date
from pathlib import PurePath
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.engine import Engine

from safeguard_flow.airflow.review_ui import review_router
from safeguard_flow.airflow.svg_chart import line_chart
from safeguard_flow.airflow.ui_auth import LocalUser, current_user, may_see_content, require_editor, require_reader
from safeguard_flow.policy_quality.version_diff import compare_versions
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings
from safeguard_flow.templating import render
from safeguard_flow.warehouse import cascades, evals, runs, views
from safeguard_flow.warehouse.errors import RunNotFound, WarehouseError
from safeguard_flow.warehouse.promotions import list_promotions

URL_PREFIX = "/safeguard"
UI_STATEMENT_TIMEOUT_S = 15.0  # a page that waits longer on one query shows an error instead
OVERVIEW_TTL_S = 30.0  # the overview's queries (three self-joins over the verdicts) run at most this often
HIDDEN = "(hidden: needs DAG edit access)"


@dataclass(frozen=True)
class Dashboard:
    """The warehouse the view reads (its queries live in warehouse/views.py and the modules they name)."""

    engine: Engine
    settings: Settings


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

    if not require_auth:  # tests and demos: one local user who may do everything
        async def local_user() -> LocalUser:
            return LocalUser()

        app.dependency_overrides.update({require_reader: local_user, require_editor: local_user,
                                         current_user: local_user})
    guard = [Depends(require_reader)]
    app.include_router(review_router(dashboard), prefix="/review")  # airflow/review_ui.py: the review queue
    overview = _TTLCache(OVERVIEW_TTL_S)

    def content_access(user: Any = Depends(require_reader)) -> bool:
        """Whether this reader also sees content (FastAPI resolves require_reader once per request)."""
        return may_see_content(user)

    full_access = Depends(content_access)

    @app.get("/", response_class=HTMLResponse, dependencies=guard)
    def index(days: int = Query(30, ge=1, le=366), full: bool = full_access) -> HTMLResponse:
        return HTMLResponse(overview.get((days, full), lambda: render_page(dashboard(), days=days, full=full)))

    @app.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=guard)
    def run_report(run_id: str, days: int = Query(30, ge=1, le=366), full: bool = full_access) -> HTMLResponse:
        try:
            return HTMLResponse(render_run_report(dashboard(), run_id, days=days, full=full))
        except RunNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.get("/evals/{eval_id}", response_class=HTMLResponse, dependencies=guard)
    def eval_report(eval_id: str, full: bool = full_access) -> HTMLResponse:
        d = dashboard()
        found = evals.get_eval(d.engine, d.settings, eval_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no eval {eval_id!r}")
        metrics = {**found["metrics"], "eval_id": eval_id}
        if not full:
            metrics["dataset"] = _file_name(metrics.get("dataset"))
        return HTMLResponse(render("eval_report.html", m=metrics, images=[], comparisons={}, back="../"))

    @app.get("/diff/{policy:path}/{old}/{new}", response_class=HTMLResponse, dependencies=guard)
    def diff_report(policy: str, old: int, new: int, full: bool = full_access) -> HTMLResponse:
        d = dashboard()
        try:
            diff = compare_versions(d.engine, d.settings, policy, old, new, examples=5 if full else 0)
        except WarehouseError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        if not full:
            diff = _diff_for_viewer(diff)
        return HTMLResponse(render("diff_report.html", d=diff, gate=None, back="../" * (policy.count("/") + 3)))

    @app.get("/api/evals", dependencies=guard)
    def api_evals(limit: int = Query(20, ge=1, le=500), full: bool = full_access) -> list[dict[str, Any]]:
        d = dashboard()
        rows = evals.list_evals(d.engine, d.settings, limit=limit)
        return _jsonable(rows if full else [_eval_for_viewer(r) for r in rows])

    @app.get("/api/runs", dependencies=guard)
    def api_runs(limit: int = Query(20, ge=1, le=500), full: bool = full_access) -> list[dict[str, Any]]:
        return _jsonable(_recent_runs(dashboard(), limit, full=full))

    @app.get("/api/rates", dependencies=guard)
    def api_rates(days: int = Query(30, ge=1, le=366)) -> list[dict[str, Any]]:
        d = dashboard()
        return _jsonable(views.daily_rates(d.engine, d.settings, days))

    @app.get("/api/flips", dependencies=guard)
    def api_flips() -> list[dict[str, Any]]:
        d = dashboard()
        return _jsonable(views.flip_summary(d.engine, d.settings))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _default_dashboard() -> Dashboard:
    from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook

    hook = SafeguardWarehouseHook()
    engine = hook.get_engine()
    bound_statements(engine, UI_STATEMENT_TIMEOUT_S)
    return Dashboard(engine, hook.settings)


def bound_statements(engine: Engine, timeout_s: float) -> None:
    """Every statement on `engine`'s connections stops after `timeout_s` (an error, not a hung page)."""
    import sqlalchemy as sa

    ms = max(1, int(timeout_s * 1000))
    if engine.dialect.name == "postgresql":
        @sa.event.listens_for(engine, "connect")
        def _pg_timeout(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"SET statement_timeout = {ms}")
            cur.execute("SET jit = off")  # the page's queries are short: compiling costs more than it saves
            cur.close()
            dbapi_conn.commit()
    elif engine.dialect.name == "sqlite":
        # SQLite has no statement timeout: a progress handler aborts a statement past its deadline.
        @sa.event.listens_for(engine, "before_cursor_execute")
        def _sqlite_deadline(conn, _cursor, _statement, _params, _context, _many) -> None:
            deadline = time.monotonic() + timeout_s
            conn.connection.driver_connection.set_progress_handler(
                lambda: 1 if time.monotonic() > deadline else 0, 10_000)


class _TTLCache:
    """A few rendered pages, each kept `ttl_s` (thread-safe: FastAPI runs sync routes in a pool)."""

    def __init__(self, ttl_s: float, size: int = 16):
        from cachetools import TTLCache

        self._cache: Any = TTLCache(maxsize=size, ttl=ttl_s, timer=time.monotonic)
        self._lock = threading.Lock()

    def get(self, key: Any, make: Callable[[], str]) -> str:
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        value = make()
        with self._lock:
            self._cache[key] = value
        return value


# --- what a reader without DAG edit access sees ------------------------------------------------


def _file_name(path: Any) -> Any:
    return PurePath(str(path)).name if path else path


def _run_for_viewer(run: runs.Run) -> runs.Run:
    validation = None
    if run.validation is not None:
        validation = {"success": run.validation.get("success")}
    return replace(run, error=HIDDEN if run.error else None, validation=validation, params={})


def _eval_for_viewer(row: dict[str, Any]) -> dict[str, Any]:
    out = {**row, "dataset": _file_name(row.get("dataset"))}
    if isinstance(out.get("metrics"), dict):
        out["metrics"] = {**out["metrics"], "dataset": _file_name(out["metrics"].get("dataset"))}
    return out


def _diff_for_viewer(diff: Any) -> Any:
    """A version diff without its flipped items (content ids, rationales quoting content) and with
    only the file names of its eval datasets."""
    return replace(diff, examples=[], evals=[replace(c, dataset=_file_name(c.dataset)) for c in diff.evals])


# --- rendering (templates/safeguard_view.html, run_report.html; autoescaped) ---------------------


def _recent_runs(d: Dashboard, limit: int, full: bool = True) -> list[dict[str, Any]]:
    return [(r if full else _run_for_viewer(r)).to_dict() for r in runs.list_runs(d.engine, d.settings, limit=limit)]


def render_page(d: Dashboard, days: int = 30, full: bool = True) -> str:
    """The overview; `full`: for a user who may see content (see the module docstring)."""
    recent = _recent_runs(d, 20, full=full)
    rates = views.daily_rates(d.engine, d.settings, days)
    recent_evals = evals.list_evals(d.engine, d.settings, limit=10)
    return render(
        "safeguard_view.html",
        warehouse=mask_url(d.settings.warehouse_url) if full else HIDDEN, days=days,
        policies=views.policy_heads(d.engine, d.settings), runs=recent, charts=_charts(rates),
        total_verdicts=sum(int(r["verdicts"] or 0) for r in rates),
        published=sum(1 for r in recent if r.get("status") == runs.RunStatus.PUBLISHED),
        quarantined=sum(1 for r in recent if r.get("status") == runs.RunStatus.QUARANTINED),
        flips=views.flip_summary(d.engine, d.settings),
        samples=views.recent_flips(d.engine, d.settings, 15) if full else [],
        evals=recent_evals if full else [_eval_for_viewer(e) for e in recent_evals],
        promotions=list_promotions(d.engine, d.settings, limit=10),
        cascade_days=cascades.calls_avoided_per_day(d.engine, d.settings, days),  # model calls the cascade avoided
    )


def render_run_report(d: Dashboard, run_id: str, days: int = 30, full: bool = True) -> str:
    """One run: counts, timings, validation, the positive rate of its policies' versions over time,
    its verdicts by label, and the flips of each of its policy versions against the version before."""
    run = runs.get_run(d.engine, d.settings, run_id)
    if not full:
        run = _run_for_viewer(run)
    names = {n for n, _ in run.policy_refs}
    rates = [r for r in views.daily_rates(d.engine, d.settings, days) if r["policy"] in names]
    diffs = []
    for name, version in run.policy_refs:
        if version > 1:
            try:
                diff = compare_versions(d.engine, d.settings, name, version - 1, version, examples=5 if full else 0)
                diffs.append(diff if full else _diff_for_viewer(diff))
            except ValueError:  # the previous version was never stored (cannot happen through publish)
                pass
    from safeguard_flow.warehouse.run_gates import gates  # the gate per policy version (no content in it)

    return render("run_report.html", run=run, charts=_charts(rates),
                  labels=views.run_label_counts(d.engine, d.settings, run_id), diffs=diffs,
                  gates=gates(d.engine, d.settings, run_id))


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


def _jsonable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from fastapi.encoders import jsonable_encoder

    return jsonable_encoder(rows)
