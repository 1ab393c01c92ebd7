"""Helpers for tests and benchmarks: a throwaway PostgreSQL server from the installed binaries."""
