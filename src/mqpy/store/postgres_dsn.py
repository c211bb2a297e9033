"""What asyncpg needs to connect, from what `--store` may say: a libpq URL, which
asyncpg reads itself, or a libpq conninfo string (`host=db port=5432 dbname=mqpy`),
which it does not, and which becomes the equivalent URL here."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote, urlencode

from mqpy.model.errors import StoreCannotOpen

# key = value, the value bare (up to white space) or single-quoted with backslash
# escapes, as libpq reads a conninfo string.
_PAIR = re.compile(r"\s*([A-Za-z_]+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']*)")
_ESCAPE = re.compile(r"\\(.)")


def connect_arguments(dsn: str) -> tuple[str, dict[str, Any]]:
    """asyncpg's `dsn` and extra keyword arguments for a URL or conninfo string.
    Empty means libpq's defaults and PG* variables, which asyncpg reads too."""
    text = dsn.strip()
    if not text or "://" in text:
        return text, {}
    params = parse_conninfo(text)
    extra: dict[str, Any] = {}
    if "connect_timeout" in params:
        extra["timeout"] = float(params.pop("connect_timeout"))
    hosts = params.pop("host", "").split(",")
    ports = params.pop("port", "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    netloc = ",".join(
        quote(host, safe="") + (f":{port}" if port else "")
        for host, port in zip(hosts, ports, strict=False)
    )
    user = params.pop("user", "")
    password = params.pop("password", "")
    userinfo = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
    database = quote(params.pop("dbname", ""), safe="")
    query = urlencode(params)
    url = f"postgresql://{userinfo + '@' if userinfo else ''}{netloc}/{database}"
    return url + (f"?{query}" if query else ""), extra


def parse_conninfo(text: str) -> dict[str, str]:
    """The keywords of a conninfo string; `StoreCannotOpen` for one that is not."""
    params: dict[str, str] = {}
    position = 0
    while position < len(text.rstrip()):
        match = _PAIR.match(text, position)
        if match is None:
            raise StoreCannotOpen(
                f"cannot read the PostgreSQL conninfo string at {text[position:][:20]!r}: "
                "write key=value pairs separated by spaces, quoting a value with spaces "
                "in single quotes"
            )
        key, value = match.groups()
        if value.startswith("'"):
            value = _ESCAPE.sub(r"\1", value[1:-1])
        params[key] = value
        position = match.end()
    return params
