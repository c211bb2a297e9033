"""The Python client for mq-py: `Client` (blocking) and `AsyncClient` (asyncio).

Both speak the broker's HTTP API (see docs/protocol.md) and raise the typed errors of
`mqpy.client.errors`. Usage is in docs/client.md. `AsyncClient` is imported on first
use, so blocking programs (and the `mqpy` command) do not load aiohttp for nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mqpy.client.calls import (
    DEFAULT_URL,
    BatchResult,
    Connection,
    DeadLetter,
    EventsToken,
    Message,
    Mode,
    NewSubscription,
    Published,
    PulledMessage,
    Settled,
    Sought,
)
from mqpy.client.errors import (
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    MQError,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from mqpy.client.sync import Client

if TYPE_CHECKING:
    from mqpy.client.aio import AsyncClient

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "BatchResult",
    "Client",
    "Conflict",
    "Connection",
    "ConnectionFailed",
    "DeadLetter",
    "EventsToken",
    "Forbidden",
    "InvalidRequest",
    "MQError",
    "Message",
    "Mode",
    "NewSubscription",
    "NotFound",
    "Published",
    "PulledMessage",
    "RateLimited",
    "Settled",
    "Sought",
    "Unauthorized",
    "Unavailable",
]


def __getattr__(name: str) -> Any:
    if name == "AsyncClient":
        from mqpy.client.aio import AsyncClient

        return AsyncClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
