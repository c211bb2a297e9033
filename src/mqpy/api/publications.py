"""From a decoded message (seed /send or a native publish) to the broker's Publication:
the checks a type cannot express, and the `Idempotency-Key` header."""

from __future__ import annotations

from collections.abc import Mapping

from mqpy.api.fields import parse_timestamp
from mqpy.api.problems import invalid_field
from mqpy.api.requests import MessageFields, body_too_large
from mqpy.model.domain import Publication

IDEMPOTENCY_HEADER = "Idempotency-Key"
_MAX_KEY_CHARS = 200


def header_idempotency_key(headers: Mapping[str, str]) -> str | None:
    """The `Idempotency-Key` header, checked like the field."""
    value = headers.get(IDEMPOTENCY_HEADER)
    if value is None:
        return None
    if not 1 <= len(value) <= _MAX_KEY_CHARS:
        raise invalid_field(
            IDEMPOTENCY_HEADER,
            f"the {IDEMPOTENCY_HEADER} header must be 1 to {_MAX_KEY_CHARS} characters",
        )
    return value


def publication(
    body: str,
    fields: MessageFields,
    *,
    max_body_bytes: int,
    header_key: str | None = None,
) -> Publication:
    """The message as the broker takes it, or a 400 (413 for a body over the limit)."""
    if len(body) > max_body_bytes // 4 and len(body.encode()) > max_body_bytes:
        # Checked here too: a batch's request limit is far above one message's.
        raise body_too_large(max_body_bytes, "--max-message-bytes", "the message body")
    if fields.deliver_at is not None and fields.delay_seconds is not None:
        raise invalid_field(
            "deliver_at", "give deliver_at or delay_seconds, not both: they say the same thing"
        )
    deliver_at = None
    if fields.deliver_at is not None:
        deliver_at = parse_timestamp(fields.deliver_at, "deliver_at")
    key = fields.idempotency_key
    if header_key is not None and key is not None and header_key != key:
        raise invalid_field(
            "idempotency_key",
            f"the {IDEMPOTENCY_HEADER} header and the idempotency_key field differ; "
            "send one of them, or the same key in both",
        )
    return Publication(
        body=body,
        attributes=fields.attributes,
        ordering_key=fields.ordering_key,
        deliver_at=deliver_at,
        delay_seconds=fields.delay_seconds,
        idempotency_key=key if key is not None else header_key,
    )
