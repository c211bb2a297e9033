"""/v1/keys: create, list and revoke API keys (admin only)."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from mqpy.api.problems import Problem, invalid_field
from mqpy.api.requests import convert, read_object
from mqpy.api.responses import json_response
from mqpy.api.state import ACCESS, key_registry_of, principal_of
from mqpy.model.domain import ApiKey, Role
from mqpy.model.topics import is_valid_pattern


class CreateKeyRequest(msgspec.Struct):
    role: str
    topics: list[str] = []


async def create_key(request: web.Request) -> web.Response:
    body = convert(await read_object(request), CreateKeyRequest)
    try:
        role = Role(body.role.lower())
    except ValueError:
        roles = ", ".join(r.value for r in Role)
        raise invalid_field("role", f"role must be one of {roles}, not {body.role!r}") from None
    for pattern in body.topics:
        if not is_valid_pattern(pattern):
            raise invalid_field(
                "topics", f"{pattern!r} is not a topic pattern (like orders, orders.* or orders.>)"
            )
    # The first key on a server that had none makes every caller need one.
    turns_on = not request.app[ACCESS].enabled
    record, token = await key_registry_of(request).create(
        principal_of(request), role, tuple(body.topics)
    )
    answer = {**_describe(record), "key": token, "authentication_turned_on": turns_on}
    return json_response(answer, status=201)


async def list_keys(request: web.Request) -> web.Response:
    keys = await key_registry_of(request).list(principal_of(request))
    return json_response({"keys": [_describe(key) for key in keys]})


async def revoke_key(request: web.Request) -> web.Response:
    key_id = request.match_info["key_id"]
    if not await key_registry_of(request).revoke(principal_of(request), key_id):
        raise Problem(404, "unknown-key", f"there is no valid key with id {key_id!r}")
    return web.Response(status=204)


def _describe(key: ApiKey) -> dict[str, Any]:
    return {
        "id": key.id,
        "role": key.role.value,
        "topics": list(key.topics),
        "created_at": key.created_at,
    }
