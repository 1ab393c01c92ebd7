"""Keep secrets out of everything shown: pages, logs, ``repr(Settings)``, ``config show``.

:func:`mask_url` is the one helper for a URL that is shown anywhere: it hides the password of the
URL's userinfo (``user:***@host``) and the value of password-like query parameters
(``?password=``, ``token``, ``secret``, ``api_key``, ...). :func:`mask_value` applies the same rules
to a setting by its name (``api_key``, a ``*_url`` field, a dict of environment variables).
:func:`is_secret_name` is the one rule for "this name holds a secret": what is shown, what a Ray job's
settings document leaves out (raylib.shipping.job_secrets), which variables replicas never inherit
(raylib.shipping.settings_env.worker_env).
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# Names whose value is a secret: query parameters, settings fields, environment variables, dict keys.
_SECRET_NAME_RE = re.compile(
    r"(pass(word|wd)?|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|credential|auth|"
    r"signature)$|^(password|passwd|secret)",
    re.IGNORECASE,
)
_USERINFO_RE = re.compile(r"(?P<user>[^:/@?#]*):(?P<password>.+)@")
_QUERY_PAIR_RE = re.compile(r"(?P<key>[^&=;#]+)=(?P<value>[^&;#]*)")
# libpq-style "key=value" strings (a DSN that is not a URL).
_DSN_PAIR_RE = re.compile(r"(?P<key>\b[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>'[^']*'|\S+)")
# Values that say "no secret" (the OpenAI-compatible default api_key is the literal EMPTY).
_NOT_SECRET = {"", "EMPTY", "none", "None"}


def is_secret_name(name: str) -> bool:
    """True for names like password, token, api_key, SAFEGUARD_ENGINE__API_KEY, aws_secret_access_key."""
    last = re.split(r"__|\.", str(name))[-1]
    return bool(_SECRET_NAME_RE.search(last))


def _mask_pairs(text: str, pattern: re.Pattern[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key = m.group("key")
        return f"{key}={MASK}" if is_secret_name(key.strip()) and m.group("value") else m.group(0)

    return pattern.sub(sub, text)


def mask_url(url: str | None) -> str:
    """`url` with its password and password-like query parameters replaced by ``***``.

    Works on any ``scheme://user:password@host/path?query`` (SQLAlchemy URLs included, even with an
    unescaped '@' in the password), and on libpq ``key=value`` DSNs. Everything else is kept as written.
    """
    if not url:
        return url or ""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return _mask_pairs(text, _DSN_PAIR_RE) if "=" in text else text
    # The user has no ':' or '/'; the password runs to the LAST '@' (a hand-written one may hold '@',
    # '/', ':' or '?'). Over-masking a URL with an '@' further on is the safe side to err on.
    m = _USERINFO_RE.match(rest)
    if m:
        rest = f"{m.group('user')}:{MASK}@{rest[m.end():]}"
    tail = rest
    path, q, query = tail.partition("?")
    if q:
        query, h, fragment = query.partition("#")
        tail = f"{path}?{_mask_pairs(query, _QUERY_PAIR_RE)}{h}{fragment}"
    return f"{scheme}://{tail}"


def mask_value(name: str, value: Any) -> Any:
    """A setting's value as it may be shown: secrets by name masked, URLs through :func:`mask_url`,
    dicts and lists (runtime_env, env_vars, engine_kwargs) masked entry by entry."""
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_value(name, v) for v in value)
    if not isinstance(value, str):
        return value
    if is_secret_name(name):
        return value if value in _NOT_SECRET else MASK
    if "://" in value or re.search(r"(url|uri|dsn|address|conn)$", name, re.IGNORECASE):
        return mask_url(value)
    return value
