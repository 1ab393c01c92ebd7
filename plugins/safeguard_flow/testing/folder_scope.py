"""Release a heavy session-scoped test resource once the run leaves its test folder.

A vLLM engine holds gigabytes; three test folders each keep one for all their tests, and kept to the
end of the session they add up (about 20 of 24 GiB seen here). pytest's ``package`` scope would end
them at the right time but needs ``__init__.py`` files, which would make folders named ``airflow``
and ``ray`` shadow the real packages. So a folder's session fixture registers its release here, and
the root conftest's ``pytest_runtest_teardown`` calls :func:`release_left_folders`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

_pending: dict[Path, list[Callable[[], None]]] = {}


def release_when_leaving(folder: str | Path, release: Callable[[], None]) -> Callable[[], None]:
    """Run `release` after the last test under `folder`; returns it made idempotent, for the
    fixture's own teardown (which then finds nothing left to do)."""
    done = False

    def once() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    _pending.setdefault(Path(folder).resolve(), []).append(once)
    return once


def release_left_folders(item: Any, nextitem: Any | None) -> None:
    """After `item`'s teardown: release what belongs to folders that `nextitem` is not in, newest
    first (a Ray driver before its head)."""
    nxt = set(Path(nextitem.path).resolve().parents) if nextitem is not None else set()
    for folder in [f for f in _pending if f in Path(item.path).resolve().parents and f not in nxt]:
        for release in reversed(_pending.pop(folder)):
            release()
