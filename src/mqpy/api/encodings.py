"""Request bodies sent with a Content-Encoding: gzip and deflate are read, anything
else is refused with a 415 that names what is accepted (RFC 9110, 15.5.16).

aiohttp's own decompression is turned off (`ProblemAppRunner`): it ran in the
protocol, before any handler, so a body that was not what its header said was logged
as an unhandled exception with a traceback (any client could flood the log), and
`br` was answered with a hint to install a library. Here it is one more step of
reading a body, with a problem+json sentence for each way it can go wrong and the
decompressed size held to the same limit as the body.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from aiohttp import web

from mqpy.api.problems import Problem, invalid_body

ACCEPTED = "gzip, deflate"
# zlib's window bits: gzip's header and trailer; zlib's (what HTTP calls deflate);
# raw deflate, which some clients send as deflate all the same.
_GZIP, _ZLIB, _RAW = 16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS


def content_coding(request: web.Request) -> str | None:
    """The body's one content coding (`gzip` or `deflate`), None if it has none; a
    415 for any other, or for more than one."""
    codings = [
        c.strip().lower()
        for c in request.headers.getall("Content-Encoding", [])
        for c in c.split(",")
        if c.strip() and c.strip().lower() != "identity"
    ]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in ("gzip", "x-gzip", "deflate"):
        return "deflate" if codings[0] == "deflate" else "gzip"
    raise Problem(
        415,
        "unsupported-encoding",
        f"the body's Content-Encoding {', '.join(codings)!r} is not one this server "
        f"reads; send it uncompressed or with Content-Encoding gzip or deflate",
        headers={"Accept-Encoding": ACCEPTED},
    )


def decode(raw: bytes, coding: str, limit: int, too_large: Callable[[], Problem]) -> bytes:
    """The body `raw`, decompressed; `too_large()` past `limit` bytes, a 400 if it is
    not what its Content-Encoding says."""
    attempts = (_GZIP,) if coding == "gzip" else (_ZLIB, _RAW)
    for wbits in attempts:
        decompressor = zlib.decompressobj(wbits)
        try:
            body = decompressor.decompress(raw, limit + 1)
        except zlib.error:
            continue
        if len(body) > limit:
            raise too_large()
        if not decompressor.eof:
            break  # cut short: trying another format would not make it whole
        return body
    raise invalid_body(
        f"the body is not valid {coding} data as its Content-Encoding says; send it "
        f"compressed with {coding}, or uncompressed without a Content-Encoding"
    )
