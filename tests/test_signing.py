"""Delivery signatures, checked against the `standardwebhooks` reference package.

Our signatures are judged by the reference implementation, never by our own `verify`, so
a mistake shared by our signer and our verifier cannot hide. Our `verify` is in turn fed
signatures the reference package made.

Quirks of standardwebhooks 1.1.0 these tests work around:
- `Webhook.verify` parses the body as JSON unless `json_parse=False`, and decodes it as
  UTF-8, so it cannot check arbitrary binary bodies.
- `Webhook.sign` takes the body as `str` and the timestamp as a `datetime`, and overwrites
  its tzinfo with UTC, so it must be given a UTC datetime.
- `Webhook.verify` always compares with the real clock (a fixed 5-minute tolerance).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

import mqpy
from mqpy.wire.signing import (
    InvalidSignature,
    generate_secret,
    sign,
    signature_header,
    verify,
    webhook_headers,
)
from tests.conftest import ReceiverFactory

# The reference package's own published test vector.
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SECRET = generate_secret()
OTHER_SECRET = generate_secret()
BODY = json.dumps({"body": "hello, receiver"}).encode()
MESSAGE_ID = "msg_01J9Z3"


def now() -> int:
    return int(time.time())


def reference_verify(secret: str, body: bytes, headers: dict[str, str]) -> None:
    """Raises WebhookVerificationError unless standardwebhooks accepts the delivery."""
    Webhook(secret).verify(body, headers, json_parse=False)


def reference_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Headers signed by standardwebhooks, not by us."""
    when = datetime.fromtimestamp(timestamp, tz=UTC)
    signature = Webhook(secret).sign(message_id, when, body.decode())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature,
    }


def our_headers(secrets: Sequence[str], timestamp: int | None = None) -> dict[str, str]:
    return webhook_headers(secrets, MESSAGE_ID, now() if timestamp is None else timestamp, BODY)


# Our signatures, judged by standardwebhooks.


def test_sign_matches_the_reference_test_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE


def test_standardwebhooks_accepts_our_signed_delivery() -> None:
    parsed = Webhook(SECRET).verify(BODY, our_headers([SECRET]))
    assert parsed == {"body": "hello, receiver"}


def test_standardwebhooks_rejects_our_signature_over_another_body() -> None:
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        reference_verify(SECRET, b'{"body": "hello, attacker"}', our_headers([SECRET]))


def test_standardwebhooks_rejects_our_signature_with_another_secret() -> None:
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        reference_verify(OTHER_SECRET, BODY, our_headers([SECRET]))


def test_rotation_header_verifies_in_standardwebhooks_with_either_secret() -> None:
    headers = our_headers([SECRET, OTHER_SECRET])
    assert len(headers["webhook-signature"].split(" ")) == 2
    reference_verify(SECRET, BODY, headers)
    reference_verify(OTHER_SECRET, BODY, headers)
    with pytest.raises(WebhookVerificationError):
        reference_verify(generate_secret(), BODY, headers)


def test_generated_secrets_are_32_random_bytes_standardwebhooks_accepts() -> None:
    secret = generate_secret()
    assert secret.startswith("whsec_")
    assert len(base64.b64decode(secret.removeprefix("whsec_"), validate=True)) == 32
    assert secret != generate_secret()
    reference_verify(secret, BODY, our_headers([secret]))


def test_signature_header_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        signature_header([], MESSAGE_ID, now(), BODY)
    with pytest.raises(ValueError, match="non-empty list"):
        signature_header(SECRET, MESSAGE_ID, now(), BODY)  # a str, not a list of secrets


def test_a_malformed_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="base64"):
        sign("whsec_not base64!", MESSAGE_ID, now(), BODY)


# Our verify, fed what standardwebhooks signs.


def test_mqpy_exports_verify_for_receivers() -> None:
    assert mqpy.verify is verify
    assert mqpy.InvalidSignature is InvalidSignature
    assert issubclass(InvalidSignature, ValueError)


def test_verify_accepts_what_standardwebhooks_signs() -> None:
    verify(BODY, reference_headers(SECRET, MESSAGE_ID, now(), BODY), SECRET)


def test_verify_reads_headers_in_any_casing() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    verify(BODY, {name.upper(): value for name, value in headers.items()}, SECRET)
    verify(BODY, {name.title(): value for name, value in headers.items()}, SECRET)


def test_verify_rejects_a_tampered_body() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    with pytest.raises(InvalidSignature, match=r"no signature .* matches"):
        verify(BODY.replace(b"hello", b"HELLO"), headers, SECRET)


def test_verify_rejects_another_message_id() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    headers["webhook-id"] = "msg_other"
    with pytest.raises(InvalidSignature, match=r"no signature .* matches"):
        verify(BODY, headers, SECRET)


def test_verify_rejects_a_wrong_secret() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    with pytest.raises(InvalidSignature, match=r"no signature .* matches"):
        verify(BODY, headers, OTHER_SECRET)


def test_verify_rejects_an_old_timestamp() -> None:
    sent = now() - 301
    headers = reference_headers(SECRET, MESSAGE_ID, sent, BODY)
    with pytest.raises(InvalidSignature, match=r"30\ds old, more than the 300s tolerance"):
        verify(BODY, headers, SECRET)


def test_verify_rejects_a_timestamp_from_the_future() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now() + 400, BODY)
    with pytest.raises(InvalidSignature, match="in the future"):
        verify(BODY, headers, SECRET)


def test_verify_tolerance_is_inclusive_and_configurable() -> None:
    sent = 1_700_000_000
    headers = reference_headers(SECRET, MESSAGE_ID, sent, BODY)
    verify(BODY, headers, SECRET, now=sent + 300)
    verify(BODY, headers, SECRET, now=sent - 300)
    verify(BODY, headers, SECRET, tolerance=3600, now=sent + 3600)
    with pytest.raises(InvalidSignature, match="old"):
        verify(BODY, headers, SECRET, tolerance=10, now=sent + 11)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_a_missing_header(missing: str) -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    del headers[missing]
    with pytest.raises(InvalidSignature, match=f"the {missing} header is missing"):
        verify(BODY, headers, SECRET)


@pytest.mark.parametrize("timestamp", ["", "soon", "1.7e9", "-5", "\u0661\u0667" + "\u0660" * 8])
def test_verify_rejects_a_timestamp_that_is_not_unix_seconds(timestamp: str) -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    headers["webhook-timestamp"] = timestamp
    with pytest.raises(InvalidSignature, match="webhook-timestamp"):
        verify(BODY, headers, SECRET)


def test_verify_accepts_a_rotation_header_with_either_secret() -> None:
    timestamp = now()
    old = reference_headers(OTHER_SECRET, MESSAGE_ID, timestamp, BODY)["webhook-signature"]
    headers = reference_headers(SECRET, MESSAGE_ID, timestamp, BODY)
    headers["webhook-signature"] = f"{headers['webhook-signature']} {old}"
    verify(BODY, headers, SECRET)
    verify(BODY, headers, OTHER_SECRET)
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, generate_secret())


def test_a_rotating_receiver_accepts_either_of_its_secrets() -> None:
    headers = reference_headers(OTHER_SECRET, MESSAGE_ID, now(), BODY)
    verify(BODY, headers, [SECRET, OTHER_SECRET])
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, [SECRET, generate_secret()])
    with pytest.raises(ValueError, match="at least one secret"):
        verify(BODY, headers, [])


def test_verify_skips_other_versions_and_garbage_entries() -> None:
    headers = reference_headers(SECRET, MESSAGE_ID, now(), BODY)
    valid = headers["webhook-signature"]
    digest = valid.removeprefix("v1,")
    headers["webhook-signature"] = f"v1a,{digest} nonsense v1,%%% {valid}"
    verify(BODY, headers, SECRET)
    headers["webhook-signature"] = f"v1a,{digest} v2,{digest}"
    with pytest.raises(InvalidSignature):
        verify(BODY, headers, SECRET)


async def test_verify_works_on_a_real_aiohttp_request(
    start_receiver: ReceiverFactory, http: aiohttp.ClientSession
) -> None:
    async def check_signature(request: web.Request, number: int) -> web.StreamResponse:
        try:
            verify(await request.read(), request.headers, SECRET)
        except InvalidSignature as error:
            return web.Response(status=401, text=str(error))
        return web.Response(status=204)

    receiver = await start_receiver(check_signature)
    async with http.post(receiver.url, data=BODY, headers=our_headers([SECRET])) as response:
        assert response.status == 204
    tampered = BODY.replace(b"receiver", b"stranger")
    async with http.post(receiver.url, data=tampered, headers=our_headers([SECRET])) as response:
        assert response.status == 401
        assert "no signature" in await response.text()


# Properties over random deliveries.

message_ids = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
secrets = st.binary(min_size=24, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
)


@given(body=st.text(), message_id=message_ids, secret=secrets)
def test_standardwebhooks_and_verify_agree_on_any_text_body(
    body: str, message_id: str, secret: str
) -> None:
    raw, timestamp = body.encode(), now()
    ours = webhook_headers([secret], message_id, timestamp, raw)
    theirs = reference_headers(secret, message_id, timestamp, raw)
    reference_verify(secret, raw, ours)
    verify(raw, theirs, secret)
    assert ours == theirs


@given(body=st.binary(), flip=st.integers(min_value=0), message_id=message_ids)
def test_verify_catches_any_flipped_byte_in_a_binary_body(
    body: bytes, flip: int, message_id: str
) -> None:
    # standardwebhooks cannot take non-UTF-8 bodies, so this one uses our own signer.
    headers = webhook_headers([SECRET], message_id, now(), body)
    verify(body, headers, SECRET)
    if body:
        tampered = bytearray(body)
        tampered[flip % len(body)] ^= 0x01
        with pytest.raises(InvalidSignature):
            verify(bytes(tampered), headers, SECRET)
    with pytest.raises(InvalidSignature):
        verify(body + b"\n", headers, SECRET)
