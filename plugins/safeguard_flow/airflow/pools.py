"""The ``safeguard_label`` pool: every label task runs in it, so however many DAG runs a backfill
starts, at most `slots` label jobs (vLLM engines) run at once. The default of 1 suits a laptop; on a
cluster raise it to what the GPUs hold: ``airflow pools set safeguard_label 4 "safeguard-flow label jobs"``.

The plugin registers this module as a listener: when an Airflow component with database access
starts (scheduler, triggerer, DAG processor), the pool is created if it is missing; an existing
pool is never changed. Deferred label tasks keep their slot (``include_deferred``): a deferred task
still has its Ray job running.
"""

from __future__ import annotations

import logging

from airflow.listeners import hookimpl

log = logging.getLogger(__name__)

LABEL_POOL = "safeguard_label"
DEFAULT_SLOTS = 1
DESCRIPTION = "safeguard-flow label jobs (one vLLM engine set each); raise on a cluster"


def ensure_label_pool(slots: int = DEFAULT_SLOTS) -> bool:
    """Create the pool if missing; True when it was created. Needs the metadata database."""
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session
    from sqlalchemy.exc import IntegrityError

    try:
        with create_session() as session:
            if Pool.get_pool(LABEL_POOL, session=session) is not None:
                return False
            session.add(Pool(pool=LABEL_POOL, slots=slots, description=DESCRIPTION, include_deferred=True))
    except IntegrityError:  # another component created it at the same moment
        return False
    log.info("created Airflow pool %s with %d slot(s)", LABEL_POOL, slots)
    return True


@hookimpl
def on_starting(component) -> None:
    if type(component).__module__ != "airflow.jobs.job":  # task runners have no database access
        return
    try:
        ensure_label_pool()
    except Exception:  # never keep a component from starting; the DAG warning names the missing pool
        log.warning("could not create the Airflow pool %s; create it with `airflow pools set %s 1 ...`",
                    LABEL_POOL, LABEL_POOL, exc_info=True)
