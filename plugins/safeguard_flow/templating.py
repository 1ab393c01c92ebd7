"""Jinja2 templates (plugins/safeguard_flow/templates) for the HTML reports and the Airflow view.

Autoescape is always on: every value from the warehouse or a dataset is escaped by the template;
only the server-built SVG charts (which escape their own text) are passed in as Markup.
"""

from __future__ import annotations

from datetime import datetime, timezone
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def environment():
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("safeguard_flow", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(pct=_pct, num=_num, f3=_f3, when=_when, label=_label, pvalue=_pvalue)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def _pct(value: Any, digits: int = 1) -> str:
    return "" if value is None else f"{float(value):.{digits}%}"


def _num(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:,}" if isinstance(value, int) else f"{float(value):,.2f}"


def _f3(value: Any) -> str:
    return "" if value is None else f"{float(value):.3f}"


def _pvalue(value: Any) -> str:
    if value is None:
        return ""
    return "< 0.001" if value < 0.001 else f"{value:.3f}"


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return str(value)


def _label(value: Any) -> str:
    return "error" if value is None else str(value)
