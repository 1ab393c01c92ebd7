"""Test suite: a package, so each folder's package-scoped fixtures end when the run leaves it."""
