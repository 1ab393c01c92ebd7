"""The review page of the Safeguard view (``/safeguard/review``), an APIRouter ui.create_app includes.

- ``review/``: the queue per policy (open, leased now, decided) and the estimates per policy version
  (agreement; precision, recall and prevalence from the audit sample with 95% intervals). Readers.
- ``review/<policy>``: one item at a time: the content, the policy (collapsible), the model's verdict,
  confidence, rationale and stored analysis, why it was routed, and its decision history; decide
  0 / 1 / skip with a note, keys 0, 1 and s. Editors only (the page shows content).
- ``review/api/<policy>/claim`` and ``review/api/items/<id>/decision`` (POST, JSON): lease the next
  item, decide or skip. Editors only, and only with the ``X-Safeguard-CSRF`` header from this origin
  (ui_auth.check_csrf): a cookie-carrying cross-site form cannot decide for a reviewer.

GET requests change nothing: the page shows the item the reviewer already holds, and its script
claims one (POST) when they hold none. The reviewer recorded is the logged-in Airflow user.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

from safeguard_flow.airflow.ui_auth import check_csrf, require_editor, require_reader, user_name
from safeguard_flow.review import queue
from safeguard_flow.templating import render
from safeguard_flow.warehouse import policy_store
from safeguard_flow.warehouse import review_store as store

if TYPE_CHECKING:  # pragma: no cover
    from safeguard_flow.airflow.ui import Dashboard


class DecisionBody(BaseModel):
    decision: int | None = Field(default=None, ge=0, le=1)  # None: skip
    note: str | None = Field(default=None, max_length=4000)


async def editor_write(user=Depends(require_editor), _csrf: None = Depends(check_csrf)):
    """Who may write: an editor (401/403 first, like every route), then the CSRF check; dependencies,
    so they run before the body is parsed and a forged form gets its 403, not a 422."""
    return user


def review_router(dashboard: Callable[[], Dashboard]) -> APIRouter:
    router = APIRouter()

    @router.get("/", response_class=HTMLResponse)
    def overview(user=Depends(require_reader)) -> HTMLResponse:
        d = dashboard()
        return HTMLResponse(render("review_overview.html", queues=store.queue_summary(d.engine, d.settings),
                                   estimates=store.read_estimates(d.engine, d.settings), rules=d.settings.review))

    @router.get("/{policy}", response_class=HTMLResponse)
    def review_page(policy: str, user=Depends(require_editor)) -> HTMLResponse:
        d = dashboard()
        me = user_name(user)
        item = store.held_item(d.engine, d.settings, policy, me)
        context: dict[str, Any] = {"policy": policy, "reviewer": me, "item": item, "details": {}, "history": [],
                                   "policy_text": None}
        if item is not None:
            context["details"] = store.verdict_details(d.engine, d.settings, item)
            context["history"] = store.decision_history(d.engine, d.settings, policy, item.content_hash)
            found = policy_store.get_policies(d.engine, d.settings, [(policy, item.policy_version)])
            context["policy_text"] = found[0].text if found else None
        return HTMLResponse(render("review_item.html", **context))

    @router.post("/api/{policy}/claim")
    def claim(policy: str, user=Depends(editor_write)) -> dict[str, Any]:
        d = dashboard()
        item = queue.next_item(d.engine, d.settings, policy, user_name(user))
        return {"item": None if item is None else item.id}

    @router.post("/api/items/{item_id}/decision")
    def decide(item_id: int, body: DecisionBody, user=Depends(editor_write)) -> dict[str, Any]:
        d = dashboard()
        try:
            decision_id = queue.decide(d.engine, d.settings, item_id, user_name(user), body.decision, body.note)
        except store.LeaseLost as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return {"decision_id": decision_id, "item": item_id, "decision": body.decision}

    return router
