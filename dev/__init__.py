"""Development scaffolding, not product: the throwaway local Airflow stack (local_stack), the
PostgreSQL server for tests and benches (postgres), the demo driver. Not in the wheel.

Import it from the repository root (`python -m dev.demo`, the tests, `bench/` scripts put the root
on sys.path): ``from dev.postgres import PostgresServer``.
"""
