"""Typed access to what the app factory stores on the application and the request."""

from __future__ import annotations

from aiohttp import web

from mqpy.auth.access import Access, Principal
from mqpy.core.broker import Broker
from mqpy.core.key_registry import KeyRegistry
from mqpy.pull import PullService

BROKER = web.AppKey("broker", Broker)
ACCESS = web.AppKey("access", Access)
KEY_REGISTRY = web.AppKey("key_registry", KeyRegistry)
PULLS = web.AppKey("pulls", PullService)
BODY_TIMEOUT = web.AppKey("body_timeout", float)
# The request body limit of every route but batch publish (--max-message-bytes), which
# is also the limit on one message's body, and batch publish's own (--max-batch-bytes).
MAX_MESSAGE_BYTES = web.AppKey("max_message_bytes", int)
MAX_BATCH_BYTES = web.AppKey("max_batch_bytes", int)
_PRINCIPAL = "mqpy.principal"


def broker_of(request: web.Request) -> Broker:
    return request.app[BROKER]


def key_registry_of(request: web.Request) -> KeyRegistry:
    return request.app[KEY_REGISTRY]


def principal_of(request: web.Request) -> Principal:
    """The authenticated caller (the auth middleware has already refused anyone else)."""
    principal = request.get(_PRINCIPAL)
    assert isinstance(principal, Principal), "route is not behind the auth middleware"
    return principal


def set_principal(request: web.Request, principal: Principal) -> None:
    request[_PRINCIPAL] = principal
