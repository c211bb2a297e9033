"""mq-py: a durable HTTP message broker that speaks the MQ Go protocol."""

from typing import TYPE_CHECKING, Any

from mqpy.wire.signing import InvalidSignature, verify

if TYPE_CHECKING:
    from mqpy.client import (
        AsyncClient,
        BatchResult,
        Client,
        Conflict,
        Connection,
        ConnectionFailed,
        DeadLetter,
        Forbidden,
        InvalidRequest,
        Message,
        MQError,
        NotFound,
        Published,
        RateLimited,
        Unauthorized,
        Unavailable,
    )

__all__ = [
    "AsyncClient",
    "BatchResult",
    "Client",
    "Conflict",
    "Connection",
    "ConnectionFailed",
    "DeadLetter",
    "Forbidden",
    "InvalidRequest",
    "InvalidSignature",
    "MQError",
    "Message",
    "NotFound",
    "Published",
    "RateLimited",
    "Unauthorized",
    "Unavailable",
    "__version__",
    "verify",
]
__version__ = "0.1.0"

# The client is loaded on first use (`mqpy.Client`): `import mqpy` stays light for the
# broker's own modules and for receivers that only need `mqpy.verify`.
_CLIENT_NAMES = frozenset(__all__) - {"InvalidSignature", "__version__", "verify"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        import mqpy.client

        return getattr(mqpy.client, name)
    raise AttributeError(f"module 'mqpy' has no attribute {name!r}")
