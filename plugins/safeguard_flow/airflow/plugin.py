"""The Airflow plugin (entry point ``airflow.plugins``): the Safeguard UI view and the label pool.

The FastAPI app is mounted on the API server at ``/safeguard``; the external view puts it in the
Airflow nav under Browse (rendered in an iframe at ``/plugin/safeguard``). The ``pools`` listener
creates the ``safeguard_label`` pool when the scheduler (or another component) starts. Hooks,
operators and connection types are registered as a provider (see provider.py), not here.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from safeguard_flow.airflow import pools
from safeguard_flow.airflow.ui import URL_PREFIX, create_app

ICON = (
    "data:image/svg+xml;utf8,<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 24 24' fill='none' "
    "stroke='%232563eb' stroke-width='2'><path d='M12 2l8 4v6c0 5-3.5 9-8 10-4.5-1-8-5-8-10V6z'/>"
    "<path d='M8 12l3 3 5-6'/></svg>"
)


class SafeguardFlowPlugin(AirflowPlugin):
    name = "safeguard_flow"
    listeners = [pools]
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Safeguard Flow"}]
    external_views = [
        {
            "name": "Safeguard",
            # Relative (no leading slash): the Airflow UI resolves it against its base URL, so the
            # view also works when Airflow is served under a sub-path.
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "safeguard",
            "destination": "nav",
            "category": "browse",
            "icon": ICON,
        }
    ]
