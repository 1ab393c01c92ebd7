"""What the command groups share: the settings, the warehouse engine's lifecycle, the log file."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from sqlalchemy.engine import Engine

    from safeguard_flow.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The settings of `--config` (or $SAFEGUARD_CONFIG) and the environment."""
    from safeguard_flow.settings import load_settings

    return load_settings(args.config)


@contextlib.contextmanager
def open_warehouse(settings: Settings, *, upgrade: bool = False) -> Iterator[Engine]:
    """The warehouse's SQLAlchemy engine for one command, disposed at the end; `upgrade` first
    applies the migrations."""
    from safeguard_flow.warehouse import schema
    from safeguard_flow.warehouse.db import make_engine

    if upgrade:
        schema.upgrade(settings)
    sql_engine = make_engine(settings)
    try:
        yield sql_engine
    finally:
        sql_engine.dispose()


@contextlib.contextmanager
def output_to_log(log_path: str | Path) -> Iterator[TextIO]:
    """Quiet by default: while the engine runs, this process's stdout and stderr descriptors (vLLM's
    logs, its engine-core process, C++ warnings) go to the log file; yields a stream to the terminal
    for the progress bar. Descriptors, not sys.stdout: vLLM's handlers and child processes write to
    the descriptors whatever sys.stdout is."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = open(saved_err, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()


def log_file(settings: Settings, given: str | None) -> Path:
    """Where the heavy logs (Ray, vLLM, GX) go; every record of this process goes there too."""
    import datetime as dt
    import logging
    from pathlib import Path

    path = Path(given) if given else settings.home_path / "logs" / f"run-{dt.datetime.now():%Y%m%dT%H%M%S}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return path
