"""Fuzz every route of the real server with generated malformed requests.

Two servers, one with no key configured (every route open) and one with MQPY_ADMIN_KEY
set, each take half of at least 10,000 generated requests: odd methods, paths around
the real routes, lying framing, junk headers and every shape of body. Whatever arrives,
the server must never answer 5xx, every 4xx must be problem+json whose `status` is the
HTTP status, the process must stay up and log no error (aiohttp's tracebacks for
requests its parser refuses are only counted), and a message published before the
fuzzing must reach its receiver after it, exactly as sent.

Why it is built this way:

- Requests go out as raw bytes on one keep-alive socket (reopened whenever the server
  closes it), so a request can be malformed at any layer and 10,000 take seconds. Like
  tests/test_bad_input.py the hypothesis test is sync (no event loop per example); it
  runs in a thread while the test's event loop serves the receiver.
- Most requests start well-formed and get a few mutations, so they reach past parsing
  into every handler; the fuzz is stateful: ids and keys the server hands out go into
  pools that later requests aim at. A request cannot be replayed against a server whose
  state moved on, so nothing is shrunk: each kind of broken rule is collected with the
  exact bytes sent and reported at the end.
- Nothing may leave 127.0.0.1. A receiver URL the fuzz sends is rewritten to a closed
  port on 127.0.0.1 unless the server cannot parse it at all, and only a few receivers
  the fuzz registers stay connected. The receiver holding the message published first
  answers 503 throughout, and may only ever see that message and those the fuzz itself
  got a 200 for.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import random
import re
import socket
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.conftest import ReceiverFactory, ServerFactory
from tests.support.client import SeedClient
from tests.support.load import duplicates, received_ids, unused_port, wait_for_ids
from tests.support.problems import check_problem
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

# Slow (`make check` skips it; `make test` runs it): 10,000+ fuzzed requests.
pytestmark = pytest.mark.slow

ADMIN_KEY = "fuzz-admin-key-7c1e0f2a9b"
MIN_REQUESTS = 10_000
EXAMPLES_PER_SERVER = 640
REQUESTS_PER_EXAMPLE = 8
BEFORE_BODY = 'sent before the fuzz: "quotes", \\ backslash, ünïcödé 𝄞, \n newline'
ANSWER_TIMEOUT = 10.0  # how long any request may wait for its answer
DOUBTFUL_WAIT = 2.0  # then a request of doubtful framing is ended by a half-close
MID_BODY_WAIT = 0.01  # before a client that sent part of a body goes away
POOL_CAP = 32
LIVE_RECEIVERS = 4  # receivers the fuzz may keep connected (all on a closed port)
LIVE_SUBSCRIPTIONS = 4  # push subscriptions the fuzz may keep (all on a closed port)
CONTROL_TOPIC = "default"  # the topic the receiver of the message published first takes
SHOWN = 300  # bytes of a request or answer quoted in a failure

# (template, the pool that fills `{}`): every route the server has.
ROUTES: list[tuple[str, str | None]] = [
    ("/connect", None),
    ("/send", None),
    ("/disconnect", None),
    ("/dashboard", None),
    ("/v1/dead-letters", None),
    ("/v1/dead-letters/redrive", None),
    ("/v1/keys", None),
    ("/v1/keys/{}", "key_id"),
    ("/v1/receivers/{}/rotate-secret", "receiver"),
    ("/metrics", None),
    ("/healthz", None),
    ("/readyz", None),
    ("/v1/status", None),
    ("/static/dashboard.js", None),
    ("/openapi.json", None),
    # The native API.
    ("/v1/topics", None),
    ("/v1/topics/{}", "topic"),
    ("/v1/topics/{}/messages", "topic"),
    ("/v1/messages/{}", "message"),
    ("/v1/subscriptions", None),
    ("/v1/subscriptions/{}", "subscription"),
    ("/v1/subscriptions/{}/pause", "subscription"),
    ("/v1/subscriptions/{}/resume", "subscription"),
    ("/v1/subscriptions/{}/rotate-secret", "subscription"),
    ("/v1/subscriptions/{}/dead-letters", "subscription"),
    ("/v1/subscriptions/{}/dead-letters/redrive", "subscription"),
]
# Routes with a path parameter, for odd_segment.
PARAM_ROUTES = [template for template, pool in ROUTES if pool is not None]


def table(entries: str) -> list[str]:
    """A word list written as one string split on "|": entries may hold spaces, or
    nothing, and the lists stay short on the page."""
    return entries.split("|")


POOL_NAMES = table("sender|receiver|stale|key_id|token|url|subscription|message|topic|cursor")


WORDS = table(
    "send|receive|SEND|Receive|sender|receiver||admin|ADMIN|publisher|subscriber|root|"
    "orders.*|orders.>|*|>|a..b|whsec_AAAA|bootstrap-admin|anonymous|send |null|default|"
    "orders.eu|push|seed|billing|customer-42|msg_00000000000000000000000000000000"
)
# Topic names and patterns: valid ones, and ones a topic (or a pattern) cannot be.
TOPICS = table(
    "default|default|orders.eu|orders.eu.created|a|A-Z_0.9|orders.*|orders.>|*|>|*.*|"
    "orders.>.x|a..b|.a|a.|.|orders eu|orders/eu|\u00fcml|default\n||orders.**|>.a|"
    + "t" * 200
    + "|"
    + "t" * 201
)
FILTERS: list[Any] = [
    {"kind": ["a"]},
    {"kind": ["created", "paid"]},
    {"kind": "created"},
    {"region": {"prefix": "eu-"}},
    {"kind": {"exists": True}},
    {"kind": {"exists": False}},
    {"prefix": 1},
    {"kind": {"prefix": 1}},
    {"kind": {"exists": "yes"}},
    {"kind": {"prefix": "a", "exists": True}},
    {"kind": {}},
    {"kind": []},
    {"kind": [1]},
    {"kind": ["a"] * 101},
    {"kind": None},
    {"": "a"},
    {f"k{n}": "v" for n in range(51)},
    {},
    [],
    "kind=a",
    None,
]
TIMESTAMPS = table(
    "2030-01-01T00:00:00Z|2030-01-01T00:00:00+01:00|2000-01-01T00:00:00Z|"
    "2030-01-01T00:00:00.123456789+14:00|1970-01-01T00:00:00Z|0001-01-01T00:00:00Z|"
    "9999-12-31T23:59:59.999Z|2030-01-01T00:00:00|2030-13-01T00:00:00Z|2030-02-30T00:00:00Z|"
    "2030-01-01 00:00:00Z|2030-01-01T24:00:00Z|2030-01-01T00:00:60Z|2030-01-01T00:00:00-24:00|"
    "2030-01-01T00:00:00+99:99|10000-01-01T00:00:00Z|-2030-01-01T00:00:00Z|now|yesterday||"
    "2030|1e9|\u0662\u0660\u0663\u0660-01-01T00:00:00Z"
)
DELAYS: list[Any] = [
    *(0, 0.0, -0.0, 0.001, 0.2, -1, -1e-9, 3600, 31_536_000, 31_536_000.5, 31_536_001),
    *(2**63, 10**30, 1e308, 5e-324, float("nan"), float("inf"), "5", True, None, [], {}),
]
ATTRIBUTES: list[Any] = [
    {},
    {"kind": "created"},
    {"kind": "a", "region": "eu-west"},
    {"": "x"},
    {"k" * 128: "v"},
    {"k" * 129: "v"},
    {"k": "v" * 1024},
    {"k": "v" * 1025},
    {"k": 1},
    {"k": None},
    {"k": ["a"]},
    {f"k{n}": "v" for n in range(100)},
    {f"k{n}": "v" for n in range(101)},
    [],
    "kind",
]
RETRY_POLICIES: list[Any] = [
    {"max_attempts": 1},
    {"max_attempts": 2, "min_backoff_seconds": 0.01, "max_backoff_seconds": 0.05},
    {"max_age_seconds": 0.1},
    {"max_attempts": None},
    {"max_attempts": 0},
    {"max_attempts": 101},
    {"max_attempts": "1"},
    {"max_backoff_seconds": -1},
    {"min_backoff_seconds": 10, "max_backoff_seconds": 1},
    {"max_age_seconds": 1e308},
    {"bogus": 1},
    {},
    [],
    None,
]
LIMITS: list[Any] = [1, 1000, 0, -1, 1001, 2**63, 1.5, "x", True, None, [], {}]
# Odd values for the native fields, for field_value and native_field.
NATIVE_ODD: list[Any] = [
    *TOPICS,
    *FILTERS,
    *TIMESTAMPS,
    *DELAYS,
    *ATTRIBUTES,
    *RETRY_POLICIES,
    *LIMITS,
    {"messages": []},
    [{"body": "x"}],
]
REFUSED_URLS = table(
    "http://169.254.169.254/latest/meta-data/|http://[fe80::1]/hook|http://[::ffff:169.254.1.1]/|"
    "ftp://127.0.0.1/hook|file:///etc/passwd|gopher://127.0.0.1:9/|javascript:alert(1)|http://|"
    "http:///hook|::::|http://[::1|http://127.0.0.1:99999/hook|http://127.0.0.1 9/hook|"
    "not a url|http://exa mple.invalid/|http://\x00/"
)
FIELDS = table(
    "id|ID|Id|body|Body|BODY|ClientURL|clienturl|clientUrl|mode|Mode|receiver_id|"
    "RECEIVER_ID|role|Role|topics|Topics|topic|secret|url|URL|group|filter|Filter|attributes|"
    "ordering_key|delay_seconds|delay_second|deliver_at|DELIVER_AT|idempotency_key|messages|"
    "retry_policy|max_concurrency|max_per_second|paused|kind"
)
MESSAGE_FIELDS = table(
    "body|attributes|ordering_key|delay_seconds|deliver_at|idempotency_key|topic|id|messages"
)
SUBSCRIPTION_FIELDS = table(
    "url|topic|group|filter|retry_policy|max_concurrency|max_per_second|paused|id|secret"
)
PATH_PARAMS = table(
    "|.|..|%2e%2e|0|-1|+1|1e3|0x10|\uff19|\u00b2|\u0661|a/b|%2F|%00|%zz|%| |%20|"
    "bootstrap-admin|anonymous|key_" + "a" * 64 + "|msg_|msg_" + "0" * 32 + "|MSG_" + "f" * 32 + "|"
    "msg_" + "g" * 32 + "|9223372036854775807|9223372036854775808|18446744073709551616|"
    "orders.*|orders.>|default|a..b|" + "t" * 201
)
QUERIES = table(
    "||||?|?a=b|?id=1|?%zz|?a=%00|#frag|;p=1|?x=" + "y" * 100 + "|?limit=0|?limit=1|"
    "?limit=1000|?limit=1001|?limit=-1|?limit=1e3|?limit=|?limit=%00|?limit=1&limit=2|"
    "?limit=99999999999999999999|?cursor=|?cursor=not-a-cursor|?cursor=%FF|?cursor=0|"
    "?cursor=-1|?cursor=9223372036854775808|?limit=2&cursor=0|?topic=default|?topic=orders.*|"
    "?topic=|?topic=%00|?cursor=" + "c" * 5000
)
METHODS = table(
    "POST|POST|POST|POST|POST|POST|GET|GET|GET|HEAD|PUT|DELETE|DELETE|PATCH|OPTIONS|TRACE|"
    "CONNECT|PROPFIND|MKCOL|BREW|M-SEARCH|get|post|Post|" + "X" * 40
)
ODD_METHODS = table("|GE T|PO\x00ST|G\u00c9T|POST\t|(POST)|PO/ST")
VERSIONS = ["HTTP/1.1"] * 20 + table("HTTP/1.0|HTTP/1.2|HTTP/2.0|HTTP/0.9|http/1.1|HTTP/1")
CONTENT_TYPES = table(
    "application/json|application/json|application/json; charset=utf-8|"
    'application/json; charset=latin-1|application/json; charset="|application/problem+json|'
    "text/plain|application/x-www-form-urlencoded|multipart/form-data|"
    "multipart/form-data; boundary=x|application/octet-stream||;;;|*/*|application/" + "x" * 300
)
AUTHORIZATIONS = table(
    "Bearer|Bearer |Bearer  |bearer x|BEARER {k}|Bearer {k} |Bearer {k}x|Bearer {k}.|"
    "Basic {k}|Basic dXNlcjpwYXNz|Token {k}|{k}|Bearer mqpy_0000000000000000_" + "a" * 32 + "|"
    "Bearer mqpy__|Bearer _|Bearer \u00e9|Bearer " + "x" * 5000
)
HEADER_NAMES = table(
    "X-Fuzz|Accept|Accept-Encoding|Cookie|Origin|Range|If-None-Match|Expect|Connection|"
    "Upgrade|Transfer-Encoding|Content-Length|Content-Type|Authorization|Host|webhook-id|"
    "X-Forwarded-For|Idempotency-Key|Idempotency-Key|idempotency-key"
)
HEADER_VALUES = table(
    "|100-continue|bogus|close|keep-alive|Upgrade|websocket|h2c|chunked|gzip|1|-1|bytes=0-1|*|"
    "127.0.0.1|fuzz-1|customer-42|" + "k" * 201 + "|" + "x" * 9000
)
ENCODINGS = table("gzip|deflate|br|zstd|identity|gzip, gzip|x-junk|")
# How a mutated request frames its body (see frame()).
FRAMINGS = table("none|chunked|bad-chunked|short|short|extra|both|bad-length")
RAW_BODIES = [
    *(b'| |{|}|null|[]|"x"|1e400|-0|NaN|Infinity|id=1&body=x|\xef\xbb\xbf{}'.split(b"|")),
    b'{"id": 1e400, "body": "x"}',
    b'{"id": -0.0, "body": "x"}',
    b'{"id": 1, "body": "\\ud800"}',
    b'{"id": 1, "body": "\xff\xfe"}',
    b'{"id": 1, "id": "x", "body": "y"}',
    b'{"mode": "send"}\x00',
    b"--x\r\nContent-Disposition: form-data; name=id\r\n\r\n1\r\n--x--\r\n",
]
LIMIT = 256 * 1024  # the default --max-message-bytes


@dataclass(frozen=True)
class Ref:
    """A value only known while fuzzing: the n-th entry of a pool (see Pools)."""

    kind: str
    index: int


@dataclass
class Body:
    """A JSON tree (which may hold Refs) to encode, or raw bytes to send as they are."""

    tree: Any = None
    raw: bytes | None = None
    ascii_only: bool = True
    cut: int | None = None  # truncate the encoded JSON to this many bytes


@dataclass
class Spec:
    """One request as designed; `Fuzzer.build` turns it into bytes."""

    method: str
    path: list[str | Ref]  # joined once the Refs are resolved
    headers: list[tuple[str, str | Ref]]  # a Ref value is a pooled bearer key
    body: Body | None
    version: str = "HTTP/1.1"
    compress: str | None = None  # gzip or deflate the body before framing it
    framing: str = "length"  # see frame()
    route: str = ""  # the route it was designed for, for the report


# -- generated requests ----------------------------------------------------------------
#
# A hypothesis draw costs tens of microseconds and a request has dozens of choices, so
# hypothesis draws what needs its generators (text with surrogates, JSON trees, binary,
# numbers at the edges) once per example, and an integer per request that picks the
# request's structure from the tables above. That keeps 10,000 requests to seconds of
# generation, and derandomize keeps them the same on every run.

texts = st.text(max_size=12) | st.sampled_from(
    ["\ud800", "\udfff", "\x00", "\u00e9", "\U0001d11e", "\u202e", "\ufeff", " ", "\r\n", "null"]
)
huge_ints = st.sampled_from(
    [0, -1, 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30, 10**300]
)
refs = st.builds(
    Ref,
    st.sampled_from(POOL_NAMES),
    st.integers(0, 63),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | huge_ints
    | st.floats()
    | texts
    | st.sampled_from(WORDS + REFUSED_URLS)
    | refs
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=10,
)
# Objects shaped like real requests, with the fields' names and wrong values.
seed_shaped = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=6), json_values, max_size=5
)


def nested(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b'{"id": 1, "body": ' + b"[" * depth + b"]" * depth + b"}"


def sized(size: int) -> bytes:
    """A send body of exactly `size` bytes."""
    return b'{"id": 1, "body": "' + b"x" * (size - 21) + b'"}'


raw_bodies = st.one_of(
    st.binary(max_size=48),
    st.sampled_from(RAW_BODIES),
    st.builds(
        nested,
        st.integers(1, 3000) | st.sampled_from([10_000, 100_000]),
        st.sampled_from(["array", "object", "field"]),
    ),
    st.builds(  # numbers with thousands of digits
        lambda digits, tail: b'{"id": 1' + b"0" * digits + tail,
        st.integers(1, 5000),
        st.sampled_from([b', "body": "x"}', b"}", b"e999}", b".5}", b""]),
    ),
    st.sampled_from([LIMIT - 1, LIMIT, LIMIT + 1, 4 * LIMIT]).map(sized),
)
bodies = st.one_of(
    st.builds(Body, tree=seed_shaped, ascii_only=st.booleans()),
    st.builds(Body, tree=json_values, ascii_only=st.booleans()),
    st.builds(Body, tree=seed_shaped, cut=st.integers(0, 40)),
    st.builds(Body, raw=raw_bodies),
)


@dataclass(frozen=True)
class Example:
    """What hypothesis draws for one batch of requests."""

    body: Body  # a malformed body, for any request of the batch to carry
    text: str  # for path segments, header values, message texts
    value: Any  # a JSON value for a field
    shapes: tuple[int, ...]  # one per request: picks its structure (see design)


batches = st.builds(
    Example,
    bodies,
    texts,
    json_values,
    st.lists(
        st.integers(0, 2**64 - 1), min_size=REQUESTS_PER_EXAMPLE, max_size=REQUESTS_PER_EXAMPLE
    ).map(tuple),
)


def design(example: Example, shape: int) -> Spec:
    """A well-formed request to a random route, then none to a handful of mutations."""
    rng = random.Random(shape)
    spec = well_formed(rng, example)
    for _ in range(rng.choice([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 6])):
        rng.choice(MUTATIONS)(spec, rng, example)
    return spec


def well_formed(rng: random.Random, example: Example) -> Spec:
    """A request the server should accept, given the pools hold what it aims at."""
    i = rng.randrange(64)
    path: list[str | Ref]
    tree: dict[str, Any] | None = None
    extra: list[tuple[str, str | Ref]] = []
    subscription = Ref(rng.choice(["subscription", "subscription", "receiver"]), i)
    route = rng.choice(ROUTE_NAMES)
    match route:
        case "connect":
            method, path = "POST", ["/connect"]
            receiver = rng.random() < 0.5
            url: str | Ref = Ref("url", i) if receiver else ""
            tree = {"ClientURL": url, "mode": "receive" if receiver else "send"}
            if rng.random() < 0.3:
                patterns = ["orders.*", "orders.>", ">"] if receiver else []
                tree["topic"] = rng.choice([CONTROL_TOPIC, "orders.eu", *patterns])
            if receiver and rng.random() < 0.2:
                tree["group"] = rng.choice(["billing", "g-1"])
                tree["filter"] = rng.choice([None, {"kind": ["a"]}, {"kind": {"prefix": "a"}}])
        case "send":
            method, path = "POST", ["/send"]
            tree = {"id": Ref("sender", i), "body": example.text}
            if rng.random() < 0.4:
                tree.update(message_fields(rng))
            if rng.random() < 0.1:
                tree["topic"] = rng.choice([CONTROL_TOPIC, "orders.eu", Ref("topic", i)])
            if rng.random() < 0.1:
                extra.append(("Idempotency-Key", f"fuzz-{rng.randrange(40)}"))
        case "disconnect":
            method, path = "POST", ["/disconnect"]
            tree = {"id": Ref(rng.choice(["sender", "receiver", "stale"]), i)}
        case "redrive":
            method, path = "POST", ["/v1/dead-letters/redrive"]
            tree = rng.choice([{}, {"receiver_id": Ref("receiver", i)}])
        case "create-key":
            method, path = "POST", ["/v1/keys"]
            topics = rng.choice([[], ["orders.*"], ["a", "b.>"]])
            tree = {"role": rng.choice(["publisher", "subscriber", "admin"]), "topics": topics}
        case "revoke-key":
            method, path = "DELETE", ["/v1/keys/", Ref("key_id", i)]
        case "rotate":
            method, path = "POST", ["/v1/receivers/", Ref("receiver", i), "/rotate-secret"]
        case "publish" | "batch":
            names: list[str | Ref] = [CONTROL_TOPIC, CONTROL_TOPIC, CONTROL_TOPIC, "orders.eu"]
            names.append(Ref("topic", i))
            topic = rng.choice(names)
            method, path = "POST", ["/v1/topics/", topic, "/messages"]
            if route == "publish":
                tree = {"body": example.text, **message_fields(rng)}
                if rng.random() < 0.1:
                    extra.append(("Idempotency-Key", f"fuzz-{rng.randrange(40)}"))
            else:
                size = rng.choice([1, 1, 2, 3, 5, 8])
                items = [
                    {"body": f"{example.text} {n}", **message_fields(rng)} for n in range(size)
                ]
                tree = {"messages": items}
        case "message":
            method, path = "GET", ["/v1/messages/", Ref("message", i)]
        case "topic":
            method, path = "GET", ["/v1/topics/", Ref("topic", i)]
        case "create-subscription":
            method, path = "POST", ["/v1/subscriptions"]
            tree = {"url": Ref("url", i)}
            if rng.random() < 0.7:
                tree["topic"] = rng.choice([CONTROL_TOPIC, "orders.*", "orders.>", ">", "audit"])
            if rng.random() < 0.3:
                tree["group"] = rng.choice(["billing", "g-1"])
            if rng.random() < 0.3:
                tree["filter"] = rng.choice(FILTERS[:6])
            tree.update(subscription_settings(rng))
        case "subscription":
            method, path = "GET", ["/v1/subscriptions/", subscription]
        case "update-subscription":
            method, path = "PATCH", ["/v1/subscriptions/", subscription]
            tree = subscription_settings(rng)
            if rng.random() < 0.3:
                tree["url"] = Ref("url", i)
            if rng.random() < 0.3:
                tree["filter"] = rng.choice(FILTERS[:6])
        case "delete-subscription":
            method, path = "DELETE", ["/v1/subscriptions/", subscription]
        case "pause" | "resume" | "rotate-secret":
            method, path = "POST", ["/v1/subscriptions/", subscription, "/" + route]
        case "subscription-dead-letters":
            method, path = "GET", ["/v1/subscriptions/", subscription, "/dead-letters"]
            path += page_query(rng, i)
        case "subscription-redrive":
            method, path = "POST", ["/v1/subscriptions/", subscription, "/dead-letters/redrive"]
        case "subscription-purge":
            method, path = "DELETE", ["/v1/subscriptions/", subscription, "/dead-letters"]
        case "purge":
            method, path = "DELETE", ["/v1/dead-letters"]
        case "/v1/topics" | "/v1/subscriptions" | "/v1/dead-letters" | "/v1/keys":
            method, path = "GET", [route, *page_query(rng, i)]
            if route == "/v1/subscriptions" and rng.random() < 0.3:
                path.append(f"{'&' if len(path) > 1 else '?'}topic={quote(rng.choice(TOPICS))}")
        case other:
            method, path = "GET", [other]
    key = Ref(rng.choice(["admin", "token"]), i)
    headers: list[tuple[str, str | Ref]] = [("Host", "127.0.0.1"), ("Authorization", key)]
    headers += extra
    if tree is None:
        return Spec(method, path, headers, None, route=route)
    headers.append(("Content-Type", "application/json"))
    return Spec(method, path, headers, Body(tree), route=route)


ROUTE_NAMES = table(
    "connect|connect|send|send|send|disconnect|redrive|create-key|revoke-key|rotate|"
    "/dashboard|/v1/dead-letters|/v1/keys|"
    # the native API, and the routes for operators
    "publish|publish|publish|batch|batch|message|message|topic|/v1/topics|"
    "create-subscription|create-subscription|/v1/subscriptions|subscription|"
    "update-subscription|delete-subscription|pause|resume|rotate-secret|"
    "subscription-dead-letters|subscription-redrive|subscription-purge|purge|/openapi.json|"
    "/metrics|/healthz|/readyz|/v1/status|/static/dashboard.css|/static/favicon.svg"
)


def message_fields(rng: random.Random) -> dict[str, Any]:
    """A message's optional fields, valid: what /send and a publish may carry. A
    delayed message gets no ordering key (it would hold back the key's later messages)."""
    fields: dict[str, Any] = {}
    if rng.random() < 0.4:
        fields["attributes"] = rng.choice(ATTRIBUTES[:4])
    chance = rng.random()
    if chance < 0.08:
        fields["delay_seconds"] = rng.choice([0, 0.1, 3600, 31_536_000])
    elif chance < 0.16:
        fields["deliver_at"] = rng.choice(TIMESTAMPS[:4])
    elif chance < 0.4:
        fields["ordering_key"] = f"customer-{rng.randrange(8)}"
    if rng.random() < 0.15:
        fields["idempotency_key"] = f"fuzz-{rng.randrange(40)}"
    return fields


def subscription_settings(rng: random.Random) -> dict[str, Any]:
    """A subscription's optional settings, valid."""
    settings: dict[str, Any] = {}
    if rng.random() < 0.4:
        settings["retry_policy"] = rng.choice(RETRY_POLICIES[:4])
    if rng.random() < 0.2:
        settings["max_concurrency"] = rng.choice([1, 8, 1000, None])
    if rng.random() < 0.2:
        settings["max_per_second"] = rng.choice([0.5, 50, 100_000, None])
    return settings


def page_query(rng: random.Random, i: int) -> list[str | Ref]:
    """limit and cursor for a list, the cursor one a list handed out."""
    limit = f"limit={rng.choice([1, 2, 100])}"
    return rng.choice(
        [[], [f"?{limit}"], ["?cursor=", Ref("cursor", i)], [f"?{limit}&cursor=", Ref("cursor", i)]]
    )


Mutation = Callable[[Spec, random.Random, Example], None]


def new_method(spec: Spec, rng: random.Random, example: Example) -> None:
    spec.method = rng.choice(ODD_METHODS if rng.random() < 0.15 else METHODS)


def new_route(spec: Spec, rng: random.Random, example: Example) -> None:
    """Another route's path, so the body and method belong to something else."""
    template, pool = rng.choice(ROUTES)
    head, _, tail = template.partition("{}")
    spec.route = template
    if pool is None:
        spec.path = [template]
    else:
        spec.path = [head, Ref(pool, rng.randrange(64)), tail]


def odd_segment(spec: Spec, rng: random.Random, example: Example) -> None:
    """A path parameter that is no id: text, numbers at the edges, encodings."""
    template = rng.choice(PARAM_ROUTES)
    head, _, tail = template.partition("{}")
    spec.route = template
    edges = [0, 2**53, 2**63, 10**30, rng.randrange(-(2**70), 2**70)]
    words = [*PATH_PARAMS, *TOPICS]
    param = rng.choice([example.text, rng.choice(words), str(rng.choice(edges))])
    encoded = param.encode("utf-8", "surrogatepass")
    how = rng.choice(["quote", "quote-all", "raw"])
    if how != "raw":
        param = quote(encoded, safe="" if how == "quote-all" else "/%")
    spec.path = [head + param + tail]


def mangle_path(spec: Spec, rng: random.Random, example: Example) -> None:
    first = spec.path[0]
    assert isinstance(first, str)
    match rng.choice(MANGLES):
        case "slash" | "slashes":
            spec.path.append(rng.choice(["/", "//"]))
        case "double":
            spec.path[0] = "/" + first
        case "upper":
            spec.path[0] = first.upper()
        case "dots":
            spec.path[0] = rng.choice(["/v1/..", "/./", "/%2e%2e"]) + first
        case "prefix":
            spec.path[0] = rng.choice(["/v1", "/v2", "/api", "/."]) + first
        case "suffix":
            spec.path.append(rng.choice(["/x", "/1", ".json", "x", "/../dashboard", "%00"]))
        case "absolute":
            spec.path[0] = "http://127.0.0.1" + first
        case "percent":
            spec.path[0] = "".join(f"%{ord(c):02X}" if c.isalpha() else c for c in first)
        case "star" | "empty":
            spec.path = [rng.choice(["*", ""])]
        case "long":
            spec.path.append("/" + "a" * rng.choice([1000, 8000, 8200, 20_000]))
        case "unicode":
            spec.path.append(
                rng.choice(["/\u00e9", "/\U0001d11e", "/%C3%A9", "/%FF", example.text])
            )
        case "backslash":
            spec.path[0] = first.replace("/", "\\")
        case "query":
            spec.path.append(rng.choice(QUERIES))


MANGLES = table(
    "slash|slashes|double|upper|dots|prefix|suffix|absolute|percent|star|empty|long|unicode|"
    "backslash|query|query"
)


def new_version(spec: Spec, rng: random.Random, example: Example) -> None:
    spec.version = rng.choice(VERSIONS)


def drop_header(spec: Spec, rng: random.Random, example: Example) -> None:
    if spec.headers:
        del spec.headers[rng.randrange(len(spec.headers))]


def _set_header(spec: Spec, name: str, value: str | Ref) -> None:
    spec.headers = [(n, v) for n, v in spec.headers if n != name] + [(name, value)]


def bad_authorization(spec: Spec, rng: random.Random, example: Example) -> None:
    junk = rng.choice(AUTHORIZATIONS).replace("{k}", ADMIN_KEY)
    pooled = Ref("token", rng.randrange(64))  # a key the fuzz created (maybe revoked)
    choices: list[str | Ref] = [junk, junk, example.text, pooled]
    _set_header(spec, "Authorization", rng.choice(choices))


def bad_content_type(spec: Spec, rng: random.Random, example: Example) -> None:
    _set_header(spec, "Content-Type", rng.choice([*CONTENT_TYPES, example.text]))


def content_encoding(spec: Spec, rng: random.Random, example: Example) -> None:
    encoding = rng.choice(ENCODINGS)
    _set_header(spec, "Content-Encoding", encoding)
    if encoding in ("gzip", "deflate") and rng.random() < 0.7:
        spec.compress = encoding  # mostly the body is what the header says


def compress(spec: Spec, rng: random.Random, example: Example) -> None:
    spec.compress = rng.choice(["gzip", "deflate"])


def extra_header(spec: Spec, rng: random.Random, example: Example) -> None:
    name = rng.choice([*HEADER_NAMES, "X-" + example.text])
    spec.headers.append((name, rng.choice([*HEADER_VALUES, example.text])))


def new_framing(spec: Spec, rng: random.Random, example: Example) -> None:
    spec.framing = rng.choice(FRAMINGS)


def malformed_body(spec: Spec, rng: random.Random, example: Example) -> None:
    spec.body = example.body


def field_value(spec: Spec, rng: random.Random, example: Example) -> None:
    """A field of the body, present or not, set to a value of the wrong kind."""
    tree = _body_object(spec)
    names = [*tree, *FIELDS] if tree else FIELDS
    odd: list[Any] = [0, -1, 2**53, 2**63, 10**30, 1.5, True, None, [], {}, *WORDS, *REFUSED_URLS]
    ref = Ref(rng.choice(POOLS), rng.randrange(64))
    native = rng.choice(NATIVE_ODD)
    tree[rng.choice(names)] = rng.choice(
        [example.value, example.text, ref, rng.choice(odd), native]
    )


def native_field(spec: Spec, rng: random.Random, example: Example) -> None:
    """A field of the native API (of one message, in a batch) set to a value that is
    wrong, or right for another field."""
    tree = _body_object(spec)
    items = tree.get("messages")
    if isinstance(items, list) and items and rng.random() < 0.8:
        items = tree["messages"] = list(items)
        n = rng.randrange(len(items))
        item = dict(items[n]) if isinstance(items[n], dict) else {}
        items[n] = item
        tree = item
    names = SUBSCRIPTION_FIELDS if "url" in tree else MESSAGE_FIELDS
    tree[rng.choice(names)] = rng.choice([*NATIVE_ODD, example.value, example.text])


def batch_size(spec: Spec, rng: random.Random, example: Example) -> None:
    """A batch of no messages, too many, or of things that are not messages."""
    tree = _body_object(spec)
    message = {"body": example.text}
    tree["messages"] = rng.choice([[], [message] * 1001, [None], [[]], ["x"], {"body": "x"}, None])


def field_name(spec: Spec, rng: random.Random, example: Example) -> None:
    """A field renamed (another case, a typo) or dropped."""
    tree = _body_object(spec)
    if tree:
        name = rng.choice(list(tree))
        value = tree.pop(name)
        renamed = rng.choice([name.upper(), name.swapcase(), name + "s", name[1:], ""])
        if rng.random() < 0.7:
            tree[renamed] = value


def _body_object(spec: Spec) -> dict[str, Any]:
    """A copy of the body's JSON object (bodies are shared within a batch), or an
    empty object if the body is none."""
    body = spec.body
    tree = dict(body.tree) if body is not None and isinstance(body.tree, dict) else {}
    spec.body = Body(tree, ascii_only=body.ascii_only if body else True)
    return tree


def cut_body(spec: Spec, rng: random.Random, example: Example) -> None:
    if spec.body is not None:
        spec.body = Body(spec.body.tree, spec.body.raw, spec.body.ascii_only, rng.randrange(40))


def unicode_body(spec: Spec, rng: random.Random, example: Example) -> None:
    if spec.body is not None:
        spec.body = Body(spec.body.tree, spec.body.raw, ascii_only=False)


POOLS = POOL_NAMES
MUTATIONS: list[Mutation] = [
    new_method,
    new_route,
    odd_segment,
    mangle_path,
    mangle_path,
    new_version,
    drop_header,
    bad_authorization,
    bad_content_type,
    content_encoding,
    compress,
    extra_header,
    new_framing,
    malformed_body,
    malformed_body,
    malformed_body,
    field_value,
    field_value,
    field_value,
    field_name,
    native_field,
    native_field,
    batch_size,
    cut_body,
    unicode_body,
]


def _has_controls(text: str) -> bool:
    """Control characters other than the CRLFs between the lines."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text.replace("\r\n", ""))


def frame(payload: bytes, framing: str) -> tuple[bytes, list[bytes]]:
    """The body as sent and the headers that frame it, which may lie about it."""
    if framing == "length":
        return payload, [b"Content-Length: %d" % len(payload)]
    if framing == "none":  # no body at all
        return b"", []
    if framing in ("chunked", "bad-chunked", "both"):
        chunks = [payload[i : i + 7] for i in range(0, len(payload), 7)]
        body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
        # bad-chunked: a chunk size that is not hex, and no last chunk.
        body += b"zz\r\nnot hex\r\n" if framing == "bad-chunked" else b"0\r\n\r\n"
        if framing == "both":
            return body, [b"Content-Length: %d" % len(payload), b"Transfer-Encoding: chunked"]
        return body, [b"Transfer-Encoding: chunked"]
    if framing == "short":  # promises more than it sends
        return payload, [b"Content-Length: %d" % (len(payload) + 10)]
    if framing == "extra":  # sends more than it promises: the rest is a second request
        return payload + b"GET /dashboard HTTP/1.1\r\nHost: x\r\n\r\n", [
            b"Content-Length: %d" % len(payload)
        ]
    # bad-length: a Content-Length no parser should accept
    return payload, [b"Content-Length: %d, %d" % (len(payload), len(payload) + 1)]


# -- a raw HTTP/1.1 client -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names lower-cased; the last of repeated headers
    body: bytes
    closes: bool

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Stalled(Exception):
    """The server neither answered nor closed the connection in time."""


class Wire:
    """One keep-alive connection to the server, reopened whenever it was closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.buffer = b""
        self.eof = False
        self.opened = 0

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer, self.eof = None, b"", False

    def send(self, data: bytes) -> bool:
        """Send `data`; False if the server had already closed the connection."""
        if self.sock is None:
            self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=ANSWER_TIMEOUT)
            self.opened += 1
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close()
            return False
        return True

    def half_close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)

    def answer(self, head: bool, timeout: float) -> Answer | None:
        """The next final answer; None if the connection ends first."""
        deadline = time.monotonic() + timeout
        status = 100
        while 100 <= status < 200:  # skip interim answers (100 Continue)
            block = self._until(b"\r\n\r\n", deadline)
            if block is None:
                return None
            status_line, *lines = block.decode("latin-1").split("\r\n")
            version, code = status_line.split(" ", 2)[:2]
            status = int(code)
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        closes = headers.get("connection", "").lower() == "close" or version == "HTTP/1.0"
        body: bytes | None = b""
        if head or status in (204, 304):
            pass
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = self._chunked(deadline)
        elif "content-length" in headers:
            body = self._take(int(headers["content-length"]), deadline)
        else:  # the body ends with the connection
            while self._fill(deadline):
                pass
            body, self.buffer, closes = self.buffer, b"", True
        return None if body is None else Answer(status, headers, body, closes)

    def drain(self, timeout: float) -> list[Answer]:
        """Every answer until the server closes the connection."""
        answers = []
        while (answer := self.answer(head=False, timeout=timeout)) is not None:
            answers.append(answer)
        return answers

    def _fill(self, deadline: float) -> bool:
        """Read more bytes; False at the end of the stream."""
        if self.eof or self.sock is None:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Stalled
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise Stalled from None
        except ConnectionResetError:
            chunk = b""
        self.buffer += chunk
        self.eof = not chunk
        return bool(chunk)

    def _take(self, size: int, deadline: float) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill(deadline):
                return None
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _until(self, end: bytes, deadline: float) -> bytes | None:
        while end not in self.buffer:
            if not self._fill(deadline):
                return None
        data, _, self.buffer = self.buffer.partition(end)
        return data

    def _chunked(self, deadline: float) -> bytes | None:
        body = b""
        while (size_line := self._until(b"\r\n", deadline)) is not None:
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                self._until(b"\r\n", deadline)
                return body
            chunk = self._take(size + 2, deadline)
            if chunk is None:
                return None
            body += chunk[:-2]
        return None


# -- the fuzzer ------------------------------------------------------------------------


@dataclass
class Pools:
    """What the server handed out, for requests to aim at."""

    sender: list[int] = field(default_factory=list)
    receiver: list[int] = field(default_factory=list)  # live, on the closed port
    stale: list[int] = field(default_factory=list)  # ids of connections that are gone
    key_id: list[str] = field(default_factory=list)
    admin: list[str] = field(default_factory=list)  # the admin key, if there is one
    token: list[str] = field(default_factory=list)  # keys the fuzz created
    url: list[str] = field(default_factory=list)  # receiver URLs on the closed port
    subscription: list[int] = field(default_factory=list)  # live, on the closed port
    message: list[str] = field(default_factory=list)  # ids of published messages
    topic: list[str] = field(default_factory=lambda: [CONTROL_TOPIC, "orders.eu", "no.such"])
    cursor: list[str] = field(default_factory=list)  # next_cursors of lists, quoted

    def pick(self, ref: Ref) -> Any:
        pool: list[Any] = getattr(self, ref.kind)
        if not pool:
            return EMPTY_POOLS.get(ref.kind, 1)
        return pool[ref.index % len(pool)]

    @staticmethod
    def add(pool: list[Any], value: Any) -> None:
        if value not in pool:
            pool.append(value)
            del pool[:-POOL_CAP]


EMPTY_POOLS = {"key_id": "k", "admin": "a", "token": "t", "url": "http://", "message": "msg_x"}
MESSAGES_PATH = re.compile(r"/v1/topics/([^/?#]+)/messages/?(\?[^#]*)?")
SUBSCRIPTION_PATH = re.compile(r"/v1/subscriptions/(\d+)/?")


@dataclass(frozen=True)
class Published:
    """A message the server said it stored: what the receiver of the control topic
    may (or must) get."""

    delivery: dict[str, Any] | None  # the JSON a receiver gets, if known
    topic: str | None  # None if not known
    delayed: bool  # it carried delay_seconds or deliver_at (or is not known)
    ordering_key: str | None

    @staticmethod
    def of(fields: Any, topic: str | None) -> Published:
        """A message published with `fields` (its JSON object, keys as the server read
        them) to `topic`."""
        if not isinstance(fields, dict):
            return Published(None, topic, True, None)
        body, key = fields.get("body"), fields.get("ordering_key")
        # The delivery's JSON: the body, with attributes when there are any and the
        # ordering key when there is one (protocol.md, "The delivery request").
        delivery = None
        if isinstance(body, str):
            delivery = {"body": body}
            if fields.get("attributes"):
                delivery["attributes"] = fields["attributes"]
            if key is not None:
                delivery["ordering_key"] = key
        return Published(
            delivery,
            topic,
            "delay_seconds" in fields or "deliver_at" in fields,
            key if isinstance(key, str) else None,
        )


@dataclass(frozen=True)
class Built:
    spec: Spec
    data: bytes
    target: str  # the request target, Refs resolved
    tree: Any  # the JSON body as sent, Refs resolved; None if not JSON as designed
    # Control bytes or an unknown HTTP version: a parser may wait for more, so the
    # answer is not awaited long.
    doubtful: bool
    # Whether the connection can carry another request after this one.
    reusable: bool


@dataclass
class Fuzzer:
    """Sends generated requests to one server and keeps score."""

    server: ServerProcess
    admin_key: str | None
    closed_port: int
    pools: Pools = field(default_factory=Pools)
    sent: int = 0
    own_requests: int = 0
    half_closed: int = 0  # doubtful requests still unanswered after DOUBTFUL_WAIT
    unanswered: list[bytes] = field(default_factory=list)  # the first few, for reports
    histogram: Counter[str] = field(default_factory=Counter)
    published: dict[str, Published] = field(default_factory=dict)  # by message id
    sender_topics: dict[int, str | None] = field(default_factory=dict)
    routes: Counter[str] = field(default_factory=Counter)  # requests per designed route
    accepted: Counter[str] = field(default_factory=Counter)  # of those, answered 2xx
    # One example per kind of broken rule, and how often it was broken.
    violations: dict[str, tuple[int, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.wire = Wire(self.server.port)
        self.own_wire = Wire(self.server.port)
        port = self.closed_port
        self.pools.url = [
            f"http://127.0.0.1:{port}/hook",
            f"127.0.0.1:{port}/hook",
            f"https://127.0.0.1:{port}/",
            f"HTTP://127.0.0.1:{port}/x?y=1",
            f"http://user:pass@127.0.0.1:{port}/",
            f"  http://127.0.0.1:{port}/hook#frag  ",
        ]
        if self.admin_key is not None:
            self.pools.admin.append(self.admin_key)

    def run(self, example: Example) -> None:
        for shape in example.shapes:
            # Mixing the request's number into `shape` (Hypothesis draws some integers
            # over and over) spreads the requests wider. It found large broken chunked
            # bodies whose connection the server held for 10-40 s (fixed in c86d00b:
            # the parser's error now answers 400 and closes at once).
            self.run_one(design(example, shape * 1_000_003 + self.sent))

    def run_one(self, spec: Spec) -> None:
        built = self.build(spec)
        answers, note = self.exchange(built)
        self.sent += 1
        self.routes[spec.route] += 1
        if note:
            self.histogram[note] += 1
            if len(self.unanswered) < 3:
                self.unanswered.append(built.data[:SHOWN])
        for number, answer in enumerate(answers):
            self.histogram[str(answer.status)] += 1
            self.judge(built, answer, head=spec.method == "HEAD" and number == 0)
            if number == 0:
                self.learn(built, answer)
                if 200 <= answer.status < 300:
                    self.accepted[spec.route] += 1

    # building

    def build(self, spec: Spec) -> Built:
        target = "".join(str(self.resolve(piece)) for piece in spec.path)
        payload, tree = self.payload(spec.body)
        if spec.compress == "gzip":
            payload = gzip.compress(payload, mtime=0)
        elif spec.compress == "deflate":
            payload = zlib.compress(payload)
        lines = [f"{spec.method} {target} {spec.version}"]
        for name, value in spec.headers:
            text = f"Bearer {self.pools.pick(value)}" if isinstance(value, Ref) else value
            lines.append(f"{name}: {text}")
        body, framing = frame(payload, spec.framing)
        head = "\r\n".join(lines)
        data = b"\r\n".join([head.encode("utf-8", "surrogatepass"), *framing, b"", body])
        doubtful = _has_controls(head) or spec.version not in ("HTTP/1.1", "HTTP/1.0")
        names = {name.lower() for name, _ in spec.headers}
        reusable = (
            not doubtful
            and spec.framing in ("length", "chunked", "none")
            and spec.version == "HTTP/1.1"
            and not names
            & {"connection", "upgrade", "expect", "transfer-encoding", "content-length"}
        )
        return Built(spec, data, target, tree, doubtful, reusable)

    def resolve(self, value: Any) -> Any:
        if isinstance(value, Ref):
            return self.pools.pick(value)
        if isinstance(value, dict):
            return {key: self.resolve(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        return value

    def payload(self, body: Body | None) -> tuple[bytes, Any]:
        """The body's bytes, and its JSON tree as sent (None if it is not one)."""
        if body is None:
            return b"", None
        if body.raw is not None:
            return body.raw, None
        tree = self.resolve(body.tree)
        if isinstance(tree, dict):
            tree = self.made_safe(tree)
        try:
            data = json.dumps(tree, ensure_ascii=body.ascii_only).encode("utf-8", "surrogatepass")
        except ValueError:  # an integer too long to print
            return b"{", None
        if body.cut is not None:
            return data[: body.cut], None
        return data, tree

    def made_safe(self, tree: dict[str, Any]) -> dict[str, Any]:
        """Receiver URLs that could reach past 127.0.0.1 point at the closed port
        instead. With access open, no role is valid: the first key created would close
        access for good, and the rest of the fuzz would no longer test an open server."""
        safe = {}
        for key, value in tree.items():
            is_url = key.lower() in ("clienturl", "url")
            if is_url and isinstance(value, str) and not self.harmless(value):
                value = self.pools.url[len(value) % len(self.pools.url)]
            opening = self.admin_key is None and key.lower() == "role" and isinstance(value, str)
            if opening and value.lower() in ("publisher", "subscriber", "admin"):
                value = value + "?"
            safe[key] = value
        return safe

    def harmless(self, url: str) -> bool:
        """True if the server cannot parse `url` as an http(s) URL with a host (the
        same steps as its own parsing), or it names the closed port on 127.0.0.1. Any
        other URL, even one the SSRF guard should refuse, might be resolved or called."""
        value = url.strip()
        if "://" not in value:
            value = "http://" + value
        try:
            parts = urlsplit(value)
            port = parts.port
        except ValueError:
            return True
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
            return True
        return parts.hostname == "127.0.0.1" and port == self.closed_port

    # sending

    def exchange(self, built: Built) -> tuple[list[Answer], str | None]:
        """The answers to one request, and a note when there is none."""
        reused = self.wire.sock is not None
        if not self.wire.send(built.data) and reused:
            self.wire.send(built.data)  # the server had closed the kept-alive connection
        try:
            answers = self.answers(built)
            if not answers and reused and built.reusable:
                self.wire.close()  # it closed the connection as the request went out
                self.wire.send(built.data)
                answers = self.answers(built)
        except Stalled:
            self.violate(built, None, f"no answer within {ANSWER_TIMEOUT:g} s")
            self.wire.close()
            return [], "stalled"
        if not answers or not built.reusable or any(a.closes for a in answers):
            self.wire.close()
        return answers, None if answers else "closed, no answer"

    def answers(self, built: Built) -> list[Answer]:
        spec, wire = built.spec, self.wire
        head = spec.method == "HEAD"
        if spec.framing in ("short", "bad-chunked"):
            # The server would wait for the rest of the body: end the stream instead,
            # once the handler is surely reading it (a client gone mid-body).
            time.sleep(MID_BODY_WAIT)
            wire.half_close()
            return wire.drain(ANSWER_TIMEOUT)
        if built.doubtful or spec.framing in ("bad-length", "both"):
            try:
                first = wire.answer(head, DOUBTFUL_WAIT)
            except Stalled:
                first = None
                self.half_closed += 1
            wire.half_close()
            return ([first] if first else []) + wire.drain(ANSWER_TIMEOUT)
        first = wire.answer(head, ANSWER_TIMEOUT)
        if first is None:
            return []
        if spec.framing == "extra":  # the bytes after the body were a second request
            wire.half_close()
            return [first, *wire.drain(ANSWER_TIMEOUT)]
        return [first]

    # judging and learning

    def judge(self, built: Built, answer: Answer, head: bool) -> None:
        if answer.status >= 500:
            self.violate(built, answer, f"a {answer.status} answer")
        elif answer.status >= 400 and head:
            if answer.content_type != "application/problem+json":
                self.violate(built, answer, f"a {answer.status} to HEAD, {answer.content_type}")
        elif answer.status >= 400:
            try:
                check_problem(answer.status, answer.content_type, answer.body, answer.status)
            except (AssertionError, ValueError):
                first_line = answer.body.split(b"\n")[0][:40].decode("latin-1")
                what = (
                    f"a {answer.status} that is not a problem: {answer.content_type} {first_line}"
                )
                self.violate(built, answer, what)

    def learn(self, built: Built, answer: Answer) -> None:
        """Pool what the server handed out; undo what could reach a receiver."""
        path = built.target.partition("?")[0]
        deleted = SUBSCRIPTION_PATH.fullmatch(path)
        if answer.status == 204 and built.spec.method == "DELETE" and deleted:
            self.forget(int(deleted[1]))
        data = answer.json()
        if answer.status not in (200, 201) or not isinstance(data, dict):
            return
        keys = set(data)
        ident: Any = data.get("id")
        if isinstance(data.get("next_cursor"), str):
            Pools.add(self.pools.cursor, quote(data["next_cursor"], safe=""))
        if {"id", "secret", "kind"} <= keys and ident not in self.pools.subscription:
            # A new push subscription, which the fuzz can only have pointed at the
            # closed port. A few stay to be aimed at, as receivers do.
            if len(self.pools.subscription) < LIVE_SUBSCRIPTIONS:
                self.pools.subscription.append(ident)
            else:
                self.call("DELETE", f"/v1/subscriptions/{ident}", None)
                Pools.add(self.pools.stale, ident)
        elif keys == {"id", "secret"} and "rotate-secret" not in path:
            # A new receiver, which the fuzz can only have pointed at the closed port.
            # A few stay to be aimed at; more would only add doomed deliveries.
            if len(self.pools.receiver) < LIVE_RECEIVERS:
                self.pools.receiver.append(data["id"])
            else:
                self.call("POST", "/disconnect", {"id": ident})
                Pools.add(self.pools.stale, ident)
        elif keys == {"id"}:
            Pools.add(self.pools.sender, ident)
            topic = self.folded(built.tree).get("topic")
            topic = CONTROL_TOPIC if topic is None else topic
            known = built.tree is not None and isinstance(topic, str)
            self.sender_topics[ident] = topic if known else None
        elif keys == {"id", "message"}:  # a disconnect
            self.forget(ident)
        elif "message_id" in keys:  # a /send
            fields = self.folded(built.tree)
            topic = fields.get("topic") or self.sender_topics.get(ident)
            self.record(data["message_id"], Published.of(fields, topic), data)
        elif keys == {"id", "topic", "duplicate"}:  # a publish
            Pools.add(self.pools.topic, data["topic"])
            self.record(ident, Published.of(built.tree, data["topic"]), data)
        elif keys == {"accepted", "rejected", "results"}:  # a batch
            match = MESSAGES_PATH.fullmatch(built.target)
            topic = unquote(match[1]) if match else None
            tree = built.tree if isinstance(built.tree, dict) else {}
            items = tree.get("messages")
            items = items if isinstance(items, list) else []
            for n, result in enumerate(data["results"]):
                if isinstance(result, dict) and "id" in result:
                    item = items[n] if n < len(items) else None
                    self.record(result["id"], Published.of(item, topic), result)
        elif "key" in keys:
            Pools.add(self.pools.key_id, ident)
            Pools.add(self.pools.token, data["key"])

    @staticmethod
    def folded(tree: Any) -> dict[str, Any]:
        """A seed body as the server reads it: keys case-insensitively, the last one
        winning."""
        return {key.lower(): value for key, value in tree.items()} if isinstance(tree, dict) else {}

    def record(self, message_id: Any, published: Published, answer: dict[str, Any]) -> None:
        """A message the server said it stored. A duplicate is the message first
        published with its key: as that was sent, or unknown if its answer was lost."""
        message_id = str(message_id)
        Pools.add(self.pools.message, message_id)
        if answer.get("duplicate") is True:
            self.published.setdefault(message_id, Published(None, None, True, None))
        else:
            self.published[message_id] = published

    def forget(self, ident: Any) -> None:
        """A connection or subscription that is gone."""
        for pool in (self.pools.sender, self.pools.receiver, self.pools.subscription):
            if ident in pool:
                pool.remove(ident)
        Pools.add(self.pools.stale, ident)

    def call(self, method: str, path: str, value: Any) -> Answer | None:
        """A well-formed request of the fuzz's own, on a connection of its own."""
        self.own_requests += 1
        body = b"" if value is None else json.dumps(value).encode()
        auth = f"Authorization: Bearer {self.admin_key}\r\n" if self.admin_key else ""
        head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {len(body)}\r\n\r\n"
        for _ in range(2):  # once more if the kept-alive connection had been closed
            if self.own_wire.send(head.encode() + body):
                answer = self.own_wire.answer(head=False, timeout=ANSWER_TIMEOUT)
                if answer is not None:
                    if answer.closes:
                        self.own_wire.close()
                    return answer
            self.own_wire.close()
        return None

    def violate(self, built: Built, answer: Answer | None, what: str) -> None:
        count, example = self.violations.get(what, (0, ""))
        if not example:
            shown = "none" if answer is None else f"{answer.status} {answer.body[:SHOWN]!r}"
            example = (
                f"request ({len(built.data)} bytes): {built.data[:SHOWN]!r}\n  answer: {shown}"
            )
        self.violations[what] = (count + 1, example)

    def close(self) -> None:
        self.wire.close()
        self.own_wire.close()


def run_fuzz(fuzzer: Fuzzer, examples: int) -> None:
    """Runs in a worker thread: hypothesis feeds `fuzzer` `examples` batches."""

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same requests on every run, so CI is repeatable
        database=None,
        phases=(Phase.generate,),  # no shrinking: the server's state has moved on
        suppress_health_check=list(HealthCheck),
    )
    @given(example=batches)
    def fuzz(example: Example) -> None:
        fuzzer.run(example)

    try:
        fuzz()
    finally:
        fuzzer.close()


# Route names (ROUTE_NAMES and ROUTES templates) the fuzz knew before the native API.
SEED_ERA_ROUTES = {
    *table("connect|send|disconnect|redrive|create-key|revoke-key|rotate|/dashboard|/v1/keys"),
    *table("/v1/dead-letters|/connect|/send|/disconnect|/v1/dead-letters/redrive|/v1/keys/{}"),
    "/v1/receivers/{}/rotate-secret",
}

# -- the test --------------------------------------------------------------------------

RECORD_START = re.compile(r"^\d{4}-\d\d-\d\d ", re.MULTILINE)


def logged_errors(log: str) -> tuple[list[str], int]:
    """The errors the server logged, less aiohttp's for requests its parser refused
    (it logs each at ERROR, traceback included); and how many of those there were."""
    records = [r for r in RECORD_START.split(log) if "Traceback" in r or " ERROR " in r]
    parse_errors = [r for r in records if "aiohttp.http_exceptions." in r]
    return [r for r in records if r not in parse_errors], len(parse_errors)


@dataclass
class Run:
    """One server's share of the fuzz."""

    mode: str
    fuzzer: Fuzzer
    seconds: float
    errors: list[str] = field(default_factory=list)  # logged by the server
    parse_errors: int = 0  # tracebacks aiohttp logged for requests it could not parse

    def report(self) -> Iterator[str]:
        fuzzer = self.fuzzer
        yield (
            f"fuzz ({self.mode}): {fuzzer.sent} requests in {self.seconds:.1f} s on "
            f"{fuzzer.wire.opened} connections ({fuzzer.half_closed} half-closed unanswered), "
            f"{fuzzer.own_requests} clean-up requests, "
            f"{len(fuzzer.published)} messages published by the fuzz"
        )
        native = sum(n for route, n in fuzzer.routes.items() if route not in SEED_ERA_ROUTES)
        due, allowed = control_messages(fuzzer.published)
        yield (
            f"  {native} requests designed for routes added since the seed era; "
            f"{len(allowed)} messages to the control topic ({len(due)} due by now)"
        )
        yield "  requests (2xx) per route: " + ", ".join(
            f"{route or '?'} {n} ({fuzzer.accepted[route]})"
            for route, n in sorted(fuzzer.routes.items())
        )
        for status, count in sorted(fuzzer.histogram.items()):
            yield f"  {status:>18}: {count}"
        yield f"  aiohttp logged {self.parse_errors} tracebacks for requests it could not parse"

    def broken(self) -> Iterator[str]:
        for what, (count, example) in self.fuzzer.violations.items():
            yield f"[{self.mode}] {what} ({count}x), e.g.\n  {example}"
        last_lines = Counter(error.strip().splitlines()[-1] for error in self.errors)
        for line, count in last_lines.items():
            first = next(error for error in self.errors if error.strip().endswith(line))
            yield f"[{self.mode}] the server logged {line!r} ({count}x), first:\n{first}"
        if self.errors:
            yield f"[{self.mode}] requests the server closed the connection on, unanswered:"
            yield from (f"  {data!r}" for data in self.fuzzer.unanswered)


async def fuzz_one_server(
    mode: str, start_server: ServerFactory, start_receiver: ReceiverFactory
) -> Run:
    admin_key = ADMIN_KEY if mode == "admin key" else None
    server = start_server(
        *("--retry-base", "0.05", "--retry-max", "0.5", "--max-attempts", "100000"),
        env={"MQPY_ADMIN_KEY": admin_key} if admin_key else {},
    )
    gate = asyncio.Event()

    async def down_until_gate(request: web.Request, number: int) -> web.StreamResponse:
        return web.Response(status=204 if gate.is_set() else 503)

    receiver: Receiver = await start_receiver(down_until_gate)
    auth = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
    async with aiohttp.ClientSession(headers=auth) as http:
        client = SeedClient(http, server.url)
        # The receiver's id stays out of the pools: the fuzz must not disconnect it.
        await client.connect_receiver(receiver.url)
        closed_port = unused_port()
        decoy = await client.connect_receiver(f"http://127.0.0.1:{closed_port}/decoy")
        sender = await client.connect_sender()
        before = await client.send(sender, BEFORE_BODY)
        await receiver.wait_for_attempts(1)  # routed to the receiver, which is down

        fuzzer = Fuzzer(server, admin_key, closed_port)
        fuzzer.pools.sender.append(sender)
        fuzzer.sender_topics[sender] = CONTROL_TOPIC
        fuzzer.pools.receiver.append(decoy)
        started = time.monotonic()
        await asyncio.to_thread(run_fuzz, fuzzer, EXAMPLES_PER_SERVER)
        run = Run(mode, fuzzer, time.monotonic() - started)
        assert server.running, f"the server died under the fuzz:\n{server.log[-5000:]}"
        gate.set()
        due, allowed = control_messages(fuzzer.published)
        await wait_for_ids(receiver, [before["message_id"], *due], timeout=60)
        await asyncio.sleep(0.5)  # time for anything that should not come to come
        check_deliveries(
            receiver, before["message_id"], {**allowed, before["message_id"]: {"body": BEFORE_BODY}}
        )
    assert server.running
    run.errors, run.parse_errors = logged_errors(server.log)
    print("\n" + "\n".join(run.report()))
    return run


Deliveries = dict[str, dict[str, Any] | None]  # message id -> the JSON it is delivered as


def control_messages(published: dict[str, Published]) -> tuple[Deliveries, Deliveries]:
    """The messages the control receiver (a seed receiver of CONTROL_TOPIC) must get
    now, and those it may get, each with its text if known. A message of an unknown
    topic may come; a delayed one may come later; and so may one whose ordering key a
    delayed message carries, as it waits its turn behind that one."""
    held = {p.ordering_key for p in published.values() if p.delayed and p.ordering_key}
    allowed = {
        ident: p.delivery for ident, p in published.items() if p.topic in (CONTROL_TOPIC, None)
    }
    due = {
        ident: p.delivery
        for ident, p in published.items()
        if p.topic == CONTROL_TOPIC and not p.delayed and p.ordering_key not in held
    }
    return due, allowed


def check_deliveries(receiver: Receiver, before_id: str, expected: Deliveries) -> None:
    """The message published first arrives as sent; nothing arrives that no /send or
    publish was answered 200 or 201 for; every message arrives once, as it was sent."""
    first = [r for r in receiver.received if r.message_id == before_id]
    assert first and first[0].body == {"body": BEFORE_BODY}, first
    strangers = {r.message_id for r in receiver.attempts} - expected.keys()
    assert not strangers, f"deliveries of messages no /send accepted: {strangers}"
    counts = received_ids(receiver)
    assert duplicates(counts) == 0, f"{duplicates(counts)} duplicate deliveries"
    for record in receiver.received:
        sent = expected[record.message_id]
        if sent is not None:
            assert record.body == sent, (record.message_id, record.body, sent)


@pytest.mark.timeout(300)
async def test_fuzz_every_route(
    start_server: ServerFactory, start_receiver: ReceiverFactory
) -> None:
    runs = [
        await fuzz_one_server(mode, start_server, start_receiver)
        for mode in ("no key", "admin key")
    ]
    sent = sum(run.fuzzer.sent for run in runs)
    total: Counter[str] = Counter()
    for run in runs:
        total.update(run.fuzzer.histogram)
    print(f"fuzz total: {sent} requests; statuses {dict(sorted(total.items()))}")
    broken = [line for run in runs for line in run.broken()]
    assert not broken, "\n".join(broken)
    assert sent >= MIN_REQUESTS
    for run in runs:
        classes = {int(s) // 100 for s in run.fuzzer.histogram if s.isdigit()}
        assert {2, 4} <= classes, f"{run.mode}: no request got past validation"
        assert run.fuzzer.published, f"{run.mode}: the fuzz never published a message"
