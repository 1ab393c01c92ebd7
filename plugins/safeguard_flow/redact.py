"""Keep secrets out of everything shown: pages, logs, ``repr(Settings)``, ``config show``, job documents.

One rule, used everywhere:

- :func:`is_secret_name`: "this name holds a secret" (password, pwd, token, api_key(s), secret,
  credential, private_key, ...), for settings fields, query parameters, connection-string keys,
  environment variables and dict keys. It decides what is shown, what a Ray job's settings document
  leaves out (raylib.shipping.job_secrets) and which variables replicas never inherit
  (raylib.shipping.settings_env.worker_env).
- :func:`mask_url`: any connection string that is shown. URLs (``scheme://user:***@host``, also with
  '@' in the user name or the password, a bare token as the user of a web URL, and password-like
  query parameters, URL-encoded ODBC strings in a query parameter included), ODBC strings
  (``Driver={...};UID=app;PWD=***``) and libpq DSN pairs (``host=db password=***``).
- :func:`mask_value`: a setting by its name: secrets by name masked, URLs and connection strings
  through :func:`mask_url`, dicts (``runtime_env.env_vars``, ``engine_kwargs``) and lists entry by entry.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, unquote_plus

MASK = "***"

# Names whose value is a secret: query parameters, settings fields, environment variables, dict keys.
_SECRET_NAME_RE = re.compile(
    r"(pass(word|wd)?|pwd|secret|token|api[_-]?keys?|apikeys?|access[_-]?key|private[_-]?key|credentials?|auth|"
    r"signature)$|^(password|passwd|secret)",
    re.IGNORECASE,
)
# userinfo with a password: the user runs to the first ':' (it may hold '@', as Azure-style
# "app@server" names do), the password to the LAST '@' (a hand-written one may hold '@', '/', ':').
_USERINFO_RE = re.compile(r"(?P<user>[^:/?#]*):(?P<password>.+)@")
# userinfo without a password (``https://<token>@host``): everything before the host.
_BARE_USER_RE = re.compile(r"(?P<user>[^:/?#@]+)@")
# Web URLs carry tokens as a bare user (git+https://<token>@github.com); database URLs a user name.
_WEB_SCHEMES = re.compile(r"^(git\+)?(https?|wss?)$", re.IGNORECASE)
_QUERY_PAIR_RE = re.compile(r"(?P<key>[^&=;#]+)=(?P<value>[^&;#]*)")
# libpq-style "key=value" strings (a DSN that is not a URL).
_DSN_PAIR_RE = re.compile(r"(?P<key>\b[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|\S+)")
# ODBC "key=value;" strings; a value in braces may hold ';' ('}}' is an escaped brace).
_ODBC_PAIR_RE = re.compile(r"(?P<key>[^;=]+?)\s*=\s*(?P<value>\{(?:[^}]|\}\})*\}|[^;]*)")
# Setting names that hold a URL or connection string even without "://" in the value.
_CONN_NAME_RE = re.compile(r"(url|uri|dsn|address|conn|connect|connection|conn_str|connection_string)$", re.IGNORECASE)
# Values that say "no secret" (the OpenAI-compatible default api_key is the literal EMPTY).
_NOT_SECRET = {"", "EMPTY", "none", "None"}


def is_secret_name(name: str) -> bool:
    """True for names like password, PWD, token, api_key, serve_api_keys, SAFEGUARD_ENGINE__API_KEY,
    HF_TOKEN, aws_secret_access_key."""
    last = re.split(r"__|\.", str(name).strip())[-1]
    return bool(_SECRET_NAME_RE.search(last))


def _mask_pairs(text: str, pattern: re.Pattern[str]) -> str:
    def sub(m: re.Match[str]) -> str:
        key, value = m.group("key"), m.group("value")
        if is_secret_name(key.strip()) and value.strip():
            return f"{key}={MASK}"
        return m.group(0)

    return pattern.sub(sub, text)


def mask_connection_string(text: str) -> str:
    """An ODBC (``a=b;PWD=c``) or libpq (``a=b password=c``) string with its secrets masked."""
    if "=" not in text:
        return text
    return _mask_pairs(text, _ODBC_PAIR_RE if ";" in text else _DSN_PAIR_RE)


def _mask_query(query: str) -> str:
    def sub(m: re.Match[str]) -> str:
        key, value = m.group("key"), m.group("value")
        if is_secret_name(unquote_plus(key).strip()) and value:
            return f"{key}={MASK}"
        decoded = unquote_plus(value)
        if "=" in decoded:  # a connection string in a parameter (odbc_connect=DRIVER%3D...%3BPWD%3D...)
            masked = mask_connection_string(decoded)
            if masked != decoded:
                return f"{key}={quote(masked, safe='*')}"
        return m.group(0)

    return _QUERY_PAIR_RE.sub(sub, query)


def mask_url(url: str | None) -> str:
    """`url` with its secrets replaced by ``***``; everything else kept as written.

    Works on any ``scheme://user:password@host/path?query`` (SQLAlchemy URLs included, with '@' in the
    user name or an unescaped '@' in the password), a bare token as the user of a web URL, on ODBC
    strings and libpq ``key=value`` DSNs, and on such strings inside a query parameter.
    """
    if not url:
        return url or ""
    text = str(url)
    scheme, sep, rest = text.partition("://")
    if not sep:
        return mask_connection_string(text)
    # Over-masking a URL with an '@' further on is the safe side to err on.
    m = _USERINFO_RE.match(rest)
    if m:
        rest = f"{m.group('user')}:{MASK}@{rest[m.end():]}"
    elif _WEB_SCHEMES.match(scheme) and (b := _BARE_USER_RE.match(rest)):
        rest = f"{MASK}@{rest[b.end():]}"
    path, q, query = rest.partition("?")
    if q:
        query, h, fragment = query.partition("#")
        rest = f"{path}?{_mask_query(query)}{h}{fragment}"
    return f"{scheme}://{rest}"


def mask_value(name: str, value: Any) -> Any:
    """A setting's value as it may be shown: secrets by name masked, URLs and connection strings
    through :func:`mask_url`, dicts and lists (runtime_env, env_vars, engine_kwargs) entry by entry."""
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(mask_value(name, v) for v in value)
    if not isinstance(value, str):
        return value
    if is_secret_name(name):
        return value if value in _NOT_SECRET else MASK
    if "://" in value or _CONN_NAME_RE.search(str(name)) or _looks_like_connection_string(value):
        return mask_url(value)
    return value


def _looks_like_connection_string(value: str) -> bool:
    """``a=b;PWD=c`` or ``host=h password=p`` (an env var or engine kwarg holding one); not JSON."""
    return "=" in value and not value.lstrip().startswith(("{", "[")) and "\n" not in value
