"""Provider metadata for Airflow's providers manager (entry point ``apache_airflow_provider``).

Airflow calls :func:`get_provider_info` while it is still reading its own configuration, so this
module must import nothing from Airflow (or anything heavy). Class paths are strings; Airflow imports
them only when a connection form or hook is needed.
"""

from __future__ import annotations

from typing import Any

PACKAGE_NAME = "safeguard-flow"  # must equal the distribution name, or Airflow refuses the provider
WAREHOUSE_CONN_TYPE = "safeguard_warehouse"
RAY_CONN_TYPE = "safeguard_ray"
WAREHOUSE_HOOK = "safeguard_flow.airflow.warehouse_hook.SafeguardWarehouseHook"
RAY_HOOK = "safeguard_flow.airflow.ray_hook.RayHook"


def _version() -> str:
    try:
        from importlib.metadata import version

        return version(PACKAGE_NAME)
    except Exception:  # not installed as a distribution (source checkout on PYTHONPATH)
        return "0.0.0"


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": PACKAGE_NAME,
        "name": "Safeguard Flow",
        "description": (
            "Label warehouse content against versioned policies with gpt-oss-safeguard on vLLM and Ray; "
            "validate with Great Expectations; publish verdict tables and views for BI."
        ),
        "versions": [_version()],
        "integrations": [
            {"integration-name": "Safeguard Flow", "external-doc-url": "https://github.com/safeguard-flow/safeguard-flow", "tags": ["software"]}
        ],
        "hooks": [
            {
                "integration-name": "Safeguard Flow",
                "python-modules": ["safeguard_flow.airflow.warehouse_hook", "safeguard_flow.airflow.ray_hook"],
            }
        ],
        "operators": [
            {
                "integration-name": "Safeguard Flow",
                "python-modules": ["safeguard_flow.airflow.tasks", "safeguard_flow.airflow.ray_operator"],
            }
        ],
        "triggers": [
            {"integration-name": "Safeguard Flow", "python-modules": ["safeguard_flow.airflow.ray_trigger"]}
        ],
        "extra-links": ["safeguard_flow.airflow.ray_operator.RayJobLink"],
        "connection-types": [
            {"hook-class-name": WAREHOUSE_HOOK, "connection-type": WAREHOUSE_CONN_TYPE},
            {"hook-class-name": RAY_HOOK, "connection-type": RAY_CONN_TYPE},
        ],
    }
