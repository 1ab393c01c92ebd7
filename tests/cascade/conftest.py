"""A real local Ray head for the cascade's label job (tests/ray's ports: the two folders never overlap)."""

from __future__ import annotations

import pytest

from tests.conftest import job_ray_head
from tests.ray.label_helpers import RAY_TEST_DASHBOARD_PORT, RAY_TEST_PORT


@pytest.fixture(scope="package")
def cascade_ray_head(tmp_path_factory):
    yield from job_ray_head(tmp_path_factory, RAY_TEST_PORT, RAY_TEST_DASHBOARD_PORT)
