"""The pipeline's own tests: the steps on real warehouses, and the label worker through a real Ray head."""

from __future__ import annotations

import pytest

from tests.airflow.af_support import RAY_DASHBOARD_PORT, RAY_PORT
from tests.conftest import job_ray_head


@pytest.fixture(scope="package")
def jobs_ray_head(tmp_path_factory):
    """A real local Ray head for label jobs, for this folder (the Airflow folder's ports: never both alive)."""
    yield from job_ray_head(tmp_path_factory, RAY_PORT, RAY_DASHBOARD_PORT)
