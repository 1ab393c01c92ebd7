"""The SQL warehouse: schema (Alembic), sources, extract, staging, publish, policy store, runs.

Every public function takes a SQLAlchemy engine (from `db.make_engine`) and the Settings; table
names come from `schema.tables(settings)` (prefix and schema validated by the settings).
"""

from safeguard_flow.warehouse.errors import RunConflict, RunNotFound, RunStateError, SourceError, WarehouseError

__all__ = ["RunConflict", "RunNotFound", "RunStateError", "SourceError", "WarehouseError"]
