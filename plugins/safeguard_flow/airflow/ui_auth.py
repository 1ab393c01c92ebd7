"""Who may use the Safeguard view, asked of Airflow's auth manager on every route.

Airflow mounts plugin FastAPI apps as they are: it neither authenticates nor authorises their
routes, so each route of the view depends on one of these.

- :func:`current_user`: the Airflow user of the request, from an ``Authorization: Bearer`` token or
  the UI's ``_token`` cookie (the JWT the API server issues); 401 without a valid one.
- :func:`require_reader`: the user may read DAGs (``is_authorized_dag`` GET: Airflow's Viewer role
  and up; the simple auth manager's ``viewer``). Everything the view shows is about the pipeline's
  DAGs, so reading them is the right door; a user who cannot read DAGs gets 403 everywhere.
- :func:`require_editor`: the user may edit DAGs (``is_authorized_dag`` PUT: Airflow's User role and
  up, the people who run the pipeline). Editors also see *content*: error excerpts (SQL parameter
  dumps quote posts), rationales, flip examples (content ids), dataset paths and the warehouse
  location; :func:`may_see_content` says whether the user is one. Readers see rates, counts, runs,
  evals' metrics and policy versions.
- :func:`check_csrf`: state-changing routes call it. The UI cookie is ``SameSite=Lax``, which still
  lets a top-level cross-site form POST carry it, so a cookie-authenticated request must carry the
  ``X-Safeguard-CSRF`` header (a form cannot set headers, and a cross-site fetch with a custom header
  needs a CORS preflight we never answer) and, when the browser sends one, an Origin/Referer of our
  own host. A bearer-token request is exempt: a browser never attaches that header by itself.

``create_app(require_auth=False)`` (tests and ``make demo``) swaps these dependencies for a
:class:`LocalUser` that may do everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request

CSRF_HEADER = "X-Safeguard-CSRF"


@dataclass(frozen=True)
class LocalUser:
    """The user of an app built without Airflow auth (tests, demos): may do everything."""

    name: str = "local"

    def get_id(self) -> str:
        return self.name

    def get_name(self) -> str:
        return self.name


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if not header.lower().startswith("bearer "):
        return None
    return header[7:].strip() or None


async def current_user(request: Request):
    """The Airflow user (BaseUser) of the request; 401 without a valid token."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.base_auth_manager import COOKIE_NAME_JWT_TOKEN
    from jwt import ExpiredSignatureError, InvalidTokenError

    cached = getattr(request.state, "safeguard_user", None)
    if cached is not None:
        return cached
    token = _bearer(request) or request.cookies.get(COOKIE_NAME_JWT_TOKEN)
    if not token:
        raise HTTPException(status_code=401, detail="log in to Airflow first (no session token)")
    try:
        user = await get_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise HTTPException(status_code=401, detail="the Airflow session expired: log in again") from None
    except InvalidTokenError:
        raise HTTPException(status_code=401, detail="not a valid Airflow token: log in again") from None
    request.state.safeguard_user = user
    return user


def _may(user, method: str) -> bool:
    if isinstance(user, LocalUser):
        return True
    from airflow.api_fastapi.app import get_auth_manager

    return bool(get_auth_manager().is_authorized_dag(method=method, user=user))


async def require_reader(request: Request):
    """Dependency: the user may read DAGs (403 otherwise); returns the user."""
    user = await current_user(request)
    if not _may(user, "GET"):
        raise HTTPException(status_code=403, detail=f"{user_name(user)} may not read DAGs, so not the Safeguard view")
    return user


async def require_editor(request: Request):
    """Dependency: the user may edit DAGs (403 otherwise); returns the user."""
    user = await current_user(request)
    if not _may(user, "PUT"):
        raise HTTPException(status_code=403, detail=f"{user_name(user)} may not edit DAGs, so not this Safeguard action")
    return user


def may_see_content(user) -> bool:
    """Whether the page may show this user content: error excerpts, rationales, examples, paths."""
    return _may(user, "PUT")


def _host_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return parts.netloc.lower() or None


async def check_csrf(request: Request, _user=Depends(current_user)) -> None:
    """Dependency of state-changing routes: 403 unless the request cannot have been forged cross-site.
    The user is resolved first, so a request without credentials gets its 401 like on any route."""
    if _bearer(request):
        return
    if request.headers.get(CSRF_HEADER) != "1":
        raise HTTPException(status_code=403, detail=f"missing the {CSRF_HEADER}: 1 header (cross-site request refused)")
    own = {h.lower() for h in (request.headers.get("host"), request.headers.get("x-forwarded-host")) if h}
    for name in ("origin", "referer"):
        value = request.headers.get(name)
        if value and value != "null":
            if _host_of(value) not in own:
                raise HTTPException(status_code=403, detail=f"{name} {value!r} is not this server (cross-site request refused)")
            return
        if value == "null":  # an opaque origin (sandboxed frame, file:) is never ours
            raise HTTPException(status_code=403, detail="opaque origin refused")


def user_name(user) -> str:
    """The name to record for the user (who decided, who promoted)."""
    name = user.get_name() if hasattr(user, "get_name") else None
    return str(name or (user.get_id() if hasattr(user, "get_id") else "") or "unknown")
