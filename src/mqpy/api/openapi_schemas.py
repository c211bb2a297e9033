"""The component schemas of /openapi.json.

Most are generated from the msgspec Structs the routes decode and encode (api/bodies.py,
api/requests.py, api/views.py, the status feed), so the document says what the code
does. The few answers built as plain dicts (the seed protocol's, keys, problems, batch
results) are written out here.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mqpy.api import bodies, requests, views
from mqpy.api.keys import CreateKeyRequest
from mqpy.model.domain import Role
from mqpy.observability.feed import StatusFeed

REF = "#/components/schemas/{name}"

# Generated from the code; each becomes a component named after its class.
_GENERATED: tuple[type[Any], ...] = (
    requests.ConnectRequest,
    requests.SendRequest,
    requests.DisconnectRequest,
    requests.RedriveRequest,
    CreateKeyRequest,
    bodies.PublishBody,
    bodies.BatchBody,
    bodies.CreateSubscriptionBody,
    bodies.UpdateSubscriptionBody,
    bodies.EventsTokenBody,
    bodies.PullBody,
    bodies.AckBody,
    bodies.NackBody,
    bodies.ExtendBody,
    bodies.SeekBody,
    views.SoughtView,
    views.PulledView,
    views.AckedView,
    views.NackedView,
    views.ExtendedView,
    views.SubscriptionView,
    views.CreatedSubscriptionView,
    views.SubscriptionPageView,
    views.EventsTokenView,
    views.TopicPageView,
    views.TopicDetailView,
    views.MessageView,
    views.PublishedView,
    views.DeadLetterPageView,
    views.RedrivenView,
    views.PurgedView,
    views.SecretView,
    StatusFeed,
)


def ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(name=name)}


def _obj(properties: dict[str, Any], *required: str) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required)}


_INT = {"type": "integer"}
_STR = {"type": "string"}

_HANDWRITTEN: dict[str, dict[str, Any]] = {
    "Problem": {
        **_obj(
            {
                "type": {"type": "string", "format": "uri"},
                "title": _STR,
                "status": _INT,
                "detail": {"type": "string", "description": "what was wrong, and how to fix it"},
                "instance": _STR,
                "field": {"type": "string", "description": "the request field at fault"},
            },
            "type",
            "title",
            "status",
            "detail",
        ),
        "description": "RFC 9457 problem details",
    },
    "SeedConnected": _obj(
        {
            "id": {**_INT, "description": "the connection id; a receiver's is its subscription's"},
            "secret": {"type": "string", "description": "a receiver's signing secret, shown once"},
        },
        "id",
    ),
    "SeedSent": _obj(
        {
            "status": {"type": "string", "const": "Message enqueued."},
            "id": _INT,
            "message_id": _STR,
            "duplicate": {
                "type": "boolean",
                "const": True,
                "description": "present only when an idempotency key repeated a publish",
            },
        },
        "status",
        "id",
        "message_id",
    ),
    "SeedDisconnected": _obj({"id": _INT, "message": _STR}, "id", "message"),
    "Key": _obj(
        {
            "id": _STR,
            "role": {"type": "string", "enum": [role.value for role in Role]},
            "topics": {"type": "array", "items": _STR},
            "created_at": {"type": "number", "description": "Unix seconds"},
        },
        "id",
        "role",
        "topics",
        "created_at",
    ),
    "KeyList": _obj({"keys": {"type": "array", "items": ref("Key")}}, "keys"),
    "Health": _obj({"status": _STR}, "status"),
    "BatchPublished": _obj(
        {
            "accepted": _INT,
            "rejected": _INT,
            "results": {
                "type": "array",
                "description": "one per message, in request order",
                "items": {
                    "oneOf": [
                        {
                            **_obj(
                                {"id": _STR, "duplicate": {"type": "boolean"}}, "id", "duplicate"
                            ),
                            "additionalProperties": False,
                        },
                        {**_obj({"error": ref("Problem")}, "error"), "additionalProperties": False},
                    ]
                },
            },
        },
        "accepted",
        "rejected",
        "results",
    ),
}


def components() -> dict[str, dict[str, Any]]:
    """Every schema the document refers to, by name."""
    _, generated = msgspec.json.schema_components(_GENERATED, ref_template=REF)
    schemas = {**generated, **_HANDWRITTEN}
    schemas["CreatedKey"] = {
        "allOf": [
            ref("Key"),
            _obj(
                {
                    "key": {"type": "string", "description": "shown once"},
                    "authentication_turned_on": {
                        "type": "boolean",
                        "description": "true for the first key on a server that had none: "
                        "from now on every caller needs a key",
                    },
                },
                "key",
                "authentication_turned_on",
            ),
        ]
    }
    _describe_seed_connect(schemas["ConnectRequest"])
    return schemas


def _describe_seed_connect(schema: dict[str, Any]) -> None:
    """The seed decodes keys lower-cased (Go matched them case-insensitively); the
    document names them as MQ Go's clients write them."""
    properties = schema["properties"]
    properties["ClientURL"] = {
        **properties.pop("clienturl"),
        "description": "where a receiver's messages are POSTed (http:// is assumed); "
        "empty for a sender",
    }
    properties["mode"] = {
        "type": "string",
        "enum": ["send", "receive"],
        "description": "matched case-insensitively",
    }
    schema["description"] = "keys match case-insensitively (ClientURL, clienturl)"
