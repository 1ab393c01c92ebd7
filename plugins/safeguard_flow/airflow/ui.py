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
read access (403 otherwise); content (error excerpts, rationales, flip examples, dataset paths, the
warehouse location) is shown only to users who may edit DAGs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse
from markupsafe import Markup
from sqlalchemy.engine import Engine

from safeguard_flow.airflow.review_ui import review_router
from safeguard_flow.airflow.svg_chart import line_chart
from safeguard_flow.airflow.ui_auth import LocalUser, require_editor, require_reader
from safeguard_flow.policy_quality.version_diff import compare_versions
from safeguard_flow.redact import mask_url
from safeguard_flow.settings import Settings
from safeguard_flow.templating import render
from safeguard_flow.warehouse import cascades, evals, runs, views
from safeguard_flow.warehouse.errors import RunNotFound, WarehouseError
from safeguard_flow.warehouse.promotions import list_promotions

URL_PREFIX = "/safeguard"


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

        app.dependency_overrides.update({require_reader: local_user, require_editor: local_user})
    guard = [Depends(require_reader)]
    app.include_router(review_router(dashboard), prefix="/review")  # airflow/review_ui.py: the review queue

    @app.get("/", response_class=HTMLResponse, dependencies=guard)
    def index(days: int = Query(30, ge=1, le=366)) -> HTMLResponse:
        return HTMLResponse(render_page(dashboard(), days=days))

    @app.get("/runs/{run_id}", response_class=HTMLResponse, dependencies=guard)
    def run_report(run_id: str, days: int = Query(30, ge=1, le=366)) -> HTMLResponse:
        try:
            return HTMLResponse(render_run_report(dashboard(), run_id, days=days))
        except RunNotFound as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None

    @app.get("/evals/{eval_id}", response_class=HTMLResponse, dependencies=guard)
    def eval_report(eval_id: str) -> HTMLResponse:
        d = dashboard()
        found = evals.get_eval(d.engine, d.settings, eval_id)
        if found is None:
            raise HTTPException(status_code=404, detail=f"no eval {eval_id!r}")
        return HTMLResponse(render("eval_report.html", m={**found["metrics"], "eval_id": eval_id}, images=[],
                                   comparisons={}, back="../"))

    @app.get("/diff/{policy:path}/{old}/{new}", response_class=HTMLResponse, dependencies=guard)
    def diff_report(policy: str, old: int, new: int) -> HTMLResponse:
        d = dashboard()
        try:
            diff = compare_versions(d.engine, d.settings, policy, old, new)
        except WarehouseError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        return HTMLResponse(render("diff_report.html", d=diff, gate=None, back="../" * (policy.count("/") + 3)))

    @app.get("/api/evals", dependencies=guard)
    def api_evals(limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        d = dashboard()
        return _jsonable(evals.list_evals(d.engine, d.settings, limit=limit))

    @app.get("/api/runs", dependencies=guard)
    def api_runs(limit: int = Query(20, ge=1, le=500)) -> list[dict[str, Any]]:
        return _jsonable(_recent_runs(dashboard(), limit))

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
    return Dashboard(hook.get_engine(), hook.settings)


# --- rendering (templates/safeguard_view.html, run_report.html; autoescaped) ---------------------


def _recent_runs(d: Dashboard, limit: int) -> list[dict[str, Any]]:
    return [r.to_dict() for r in runs.list_runs(d.engine, d.settings, limit=limit)]


def render_page(d: Dashboard, days: int = 30) -> str:
    recent = _recent_runs(d, 20)
    rates = views.daily_rates(d.engine, d.settings, days)
    return render(
        "safeguard_view.html",
        warehouse=mask_url(d.settings.warehouse_url), days=days,
        policies=views.policy_heads(d.engine, d.settings), runs=recent, charts=_charts(rates),
        total_verdicts=sum(int(r["verdicts"] or 0) for r in rates),
        published=sum(1 for r in recent if r.get("status") == runs.RunStatus.PUBLISHED),
        quarantined=sum(1 for r in recent if r.get("status") == runs.RunStatus.QUARANTINED),
        flips=views.flip_summary(d.engine, d.settings), samples=views.recent_flips(d.engine, d.settings, 15),
        evals=evals.list_evals(d.engine, d.settings, limit=10),
        promotions=list_promotions(d.engine, d.settings, limit=10),
        cascade_days=cascades.calls_avoided_per_day(d.engine, d.settings, days),  # model calls the cascade avoided
    )


def render_run_report(d: Dashboard, run_id: str, days: int = 30) -> str:
    """One run: counts, timings, validation, the positive rate of its policies' versions over time,
    its verdicts by label, and the flips of each of its policy versions against the version before."""
    run = runs.get_run(d.engine, d.settings, run_id)
    names = {n for n, _ in run.policy_refs}
    rates = [r for r in views.daily_rates(d.engine, d.settings, days) if r["policy"] in names]
    diffs = []
    for name, version in run.policy_refs:
        if version > 1:
            try:
                diffs.append(compare_versions(d.engine, d.settings, name, version - 1, version, examples=5))
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
