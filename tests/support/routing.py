"""Helpers for the routing tests (issue 4): the seed protocol with its new fields and
the native /v1 API as plain HTTP calls, waits on what receivers got by message text,
and a group member that can be killed in the middle of its deliveries."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import aiohttp
from aiohttp import web

from tests.support.load import wait_until
from tests.support.problems import check_problem
from tests.support.receiver import Received, Receiver

# Long enough for any stray delivery of an idle broker to arrive (no retries are
# involved where it is used), short enough to keep the suite fast.
SETTLE_SECONDS = 0.6


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    raw: bytes
    headers: Mapping[str, str]

    @property
    def data(self) -> Any:
        return json.loads(self.raw) if self.raw else None

    def problem(self, status: int, field: str | None = None) -> dict[str, Any]:
        return check_problem(self.status, self.content_type, self.raw, status, field)


class Broker:
    """One broker seen from a client: seed routes with the issue-4 fields, native /v1
    routes. `key` is sent as a bearer token when given."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, key: str | None = None):
        self.http = http
        self.base_url = base_url
        self.key = key

    def as_key(self, key: str) -> Broker:
        return Broker(self.http, self.base_url, key)

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        sent = dict(headers or {})
        if self.key is not None:
            sent["Authorization"] = f"Bearer {self.key}"
        async with self.http.request(
            method, self.base_url + path, json=body, headers=sent
        ) as response:
            return Answer(
                response.status,
                response.content_type,
                await response.read(),
                dict(response.headers),
            )

    async def ok(
        self,
        method: str,
        path: str,
        body: Any = None,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        answer = await self.call(method, path, body, headers)
        assert answer.status == status, (method, path, body, answer.status, answer.raw[:800])
        return answer.data

    # -- seed protocol ----------------------------------------------------------------

    async def connect_receiver(
        self,
        url: str,
        *,
        topic: str | None = None,
        group: str | None = None,
        filter: Mapping[str, Any] | None = None,
        start_at: str | None = None,
    ) -> int:
        body: dict[str, Any] = {"ClientURL": url, "mode": "receive"}
        if start_at is not None:
            body["start_at"] = start_at
        if topic is not None:
            body["topic"] = topic
        if group is not None:
            body["group"] = group
        if filter is not None:
            body["filter"] = filter
        return int((await self.ok("POST", "/connect", body))["id"])

    async def connect_sender(self, topic: str | None = None) -> int:
        body: dict[str, Any] = {"ClientURL": "", "mode": "send"}
        if topic is not None:
            body["topic"] = topic
        return int((await self.ok("POST", "/connect", body))["id"])

    async def send(
        self, sender: int, text: str, headers: Mapping[str, str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        answer: dict[str, Any] = await self.ok(
            "POST", "/send", {"id": sender, "body": text, **fields}, headers=headers
        )
        assert answer["status"] == "Message enqueued.", answer
        assert isinstance(answer["message_id"], str) and answer["message_id"], answer
        return answer

    # -- native API -------------------------------------------------------------------

    async def publish(
        self, topic: str, text: str, headers: Mapping[str, str] | None = None, **fields: Any
    ) -> Answer:
        return await self.call(
            "POST", f"/v1/topics/{topic}/messages", {"body": text, **fields}, headers
        )

    async def publish_new(self, topic: str, text: str, **fields: Any) -> str:
        """Publish one message that must be new (201); its id."""
        answer = await self.publish(topic, text, **fields)
        assert answer.status == 201, (topic, text, fields, answer.status, answer.raw[:800])
        data = answer.data
        assert data["duplicate"] is False and data["topic"] == topic, data
        assert answer.headers.get("Location") == f"/v1/messages/{data['id']}", answer.headers
        return str(data["id"])

    async def publish_batch(self, topic: str, messages: list[dict[str, Any]]) -> Answer:
        return await self.call("POST", f"/v1/topics/{topic}/messages", {"messages": messages})

    async def publish_texts(self, topic: str, texts: list[str], size: int = 500) -> list[str]:
        """Publish every text as plain messages in batches; their ids, in order."""
        ids: list[str] = []
        for start in range(0, len(texts), size):
            chunk = [{"body": text} for text in texts[start : start + size]]
            data = await self.ok("POST", f"/v1/topics/{topic}/messages", {"messages": chunk})
            assert data["rejected"] == 0, data
            ids.extend(str(result["id"]) for result in data["results"])
        return ids

    async def subscribe(self, url: str, topic: str, **fields: Any) -> dict[str, Any]:
        answer = await self.call(
            "POST", "/v1/subscriptions", {"url": url, "topic": topic, **fields}
        )
        assert answer.status == 201, (answer.status, answer.raw[:800])
        data: dict[str, Any] = answer.data
        assert answer.headers.get("Location") == f"/v1/subscriptions/{data['id']}", answer.headers
        return data


# -- what receivers got ---------------------------------------------------------------------


def texts(records: Iterable[Received]) -> list[str]:
    return [str(record.text) for record in records]


async def wait_for_texts(receiver: Receiver, expected: Iterable[str], timeout: float = 15) -> None:
    """Wait until every text in `expected` was acknowledged by `receiver`."""
    wanted = set(expected)
    try:
        await wait_until(lambda: wanted <= set(texts(receiver.received)), timeout, "deliveries")
    except AssertionError:
        missing = sorted(wanted - set(texts(receiver.received)))
        raise AssertionError(
            f"{receiver.url} never got {missing} within {timeout:g} s; it got "
            f"{texts(receiver.received)}"
        ) from None


def counts(records: Iterable[Received]) -> Counter[str]:
    return Counter(texts(records))


def rfc3339(seconds: float, offset_hours: int = 0) -> str:
    """`seconds` since the epoch as an RFC 3339 timestamp with milliseconds, written
    in the given UTC offset (Z for none)."""
    zone = UTC if offset_hours == 0 else timezone(timedelta(hours=offset_hours))
    moment = datetime.fromtimestamp(seconds, zone)
    text = moment.isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


# -- a group member that can be killed --------------------------------------------------------


class KillableMember:
    """A receiver behaviour that takes `latency` seconds to acknowledge, and can be
    killed: at the kill every delivery it is working on loses its connection before
    the answer (the message was processed, the acknowledgement never left), its port
    stops listening, and anything still reaching it on a kept-alive connection is cut
    off unprocessed. The broker is not told: as far as it knows the member is still
    connected."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.killed = False
        self.processed: list[str] = []  # message ids, in the order work started
        self.in_flight_at_kill: set[str] = set()
        self._in_flight: dict[asyncio.Transport, str] = {}

    async def __call__(self, request: web.Request, number: int) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        if self.killed:
            transport.abort()
            return web.Response(status=503)
        message_id = request.headers["webhook-id"]
        self.processed.append(message_id)
        self._in_flight[transport] = message_id
        try:
            await asyncio.sleep(self.latency)
        finally:
            self._in_flight.pop(transport, None)
        if self.killed:  # its connection was cut at the kill; this answer goes nowhere
            return web.Response(status=503)
        return web.Response(status=204)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    async def kill(self, receiver: Receiver) -> None:
        self.killed = True
        self.in_flight_at_kill = set(self._in_flight.values())
        for transport in list(self._in_flight):
            transport.abort()
        runner = receiver._runner
        assert runner is not None
        for site in list(runner.sites):
            await site.stop()
