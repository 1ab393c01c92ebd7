"""Warehouse errors. Messages name the run, table, column or setting to look at."""

from __future__ import annotations

from safeguard_flow.settings import SettingsError


class WarehouseError(ValueError):
    """Something in the warehouse is not as this operation needs it."""


class SourceError(SettingsError):
    """A configured source table or column does not exist or cannot be used."""


class RunNotFound(WarehouseError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "run not found"


class RunConflict(WarehouseError):
    """A run id exists with different kind, policies or interval."""


class RunStateError(WarehouseError):
    """The run is not in a state that allows this (quarantined, unlabelled chunks, ...)."""
