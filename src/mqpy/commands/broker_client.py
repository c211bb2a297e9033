"""Every `mqpy` command that talks to a broker does so through the Python client
(`mqpy.Client`, `mqpy.AsyncClient`): one HTTP client, with its keep-alive connection,
its retries on 429/503 and its typed errors. This module fills the client's settings
from --url/--key/the environment, and turns its errors into the exit codes and
sentences of `mqpy.commands`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from mqpy.client import Client, ConnectionFailed, MQError, Unauthorized
from mqpy.client.calls import AdminAnswer
from mqpy.commands import (
    DEFAULT_URL,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
)

T = TypeVar("T")
PAGE_SIZE = 1000  # the broker's largest page


@dataclass(frozen=True)
class ClientSettings:
    url: str
    key: str | None


def client_settings(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> ClientSettings:
    """--url and --key, then MQPY_URL and MQPY_KEY, then the default URL; a malformed
    URL exits 2."""
    environ = os.environ if environ is None else environ
    url = args.url or environ.get(URL_ENV) or DEFAULT_URL
    key = args.key or environ.get(KEY_ENV) or None
    return ClientSettings(_checked_base_url(url), key)


def sync_client(args: argparse.Namespace) -> Client:
    settings = client_settings(args)
    return Client(settings.url, key=settings.key)


def ask(args: argparse.Namespace, use: Callable[[Client], T]) -> T:
    """What `use` gets from the broker with the command's client; a refusal or an
    unreachable server ends the command (see `failure`)."""
    with sync_client(args) as client:
        try:
            return use(client)
        except MQError as error:
            raise failure(error) from None


def all_pages(page: Callable[..., AdminAnswer], member: str) -> Iterator[Any]:
    """Every item of a paged list (`page` is a client method such as `list_topics`),
    following next_cursor to the last page."""
    cursor: str | None = None
    while True:
        answer = page(limit=PAGE_SIZE, cursor=cursor)
        yield from answer[member]
        following = answer.get("next_cursor")
        if not isinstance(following, str) or following == cursor:
            return
        cursor = following


def expect_object(value: Any, what: str = "answer") -> dict[str, Any]:
    """`value` if it is a JSON object, else exit 1: the server answered something else."""
    if not isinstance(value, dict):
        raise CommandFailed(EXIT_REFUSED, f"unexpected {what} from the server: {value!r}")
    return value


def failure(error: MQError) -> CommandFailed:
    """Exit 3 when no answer came, else 1 with the server's own sentence."""
    if isinstance(error, ConnectionFailed):
        return CommandFailed(
            EXIT_UNREACHABLE, f"{error} (is it running? set the address with --url or {URL_ENV})"
        )
    message = str(error)
    if isinstance(error, Unauthorized):
        message += f" (give a key with --key or {KEY_ENV})"
    if error.status is not None and 300 <= error.status < 400:
        # The client never follows one: it would hand the key to whatever host it names.
        message += " (a redirect, not followed: fix --url)"
    return CommandFailed(EXIT_REFUSED, message)


def _checked_base_url(url: str) -> str:
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        raise CommandFailed(EXIT_USAGE, f"--url {url!r}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CommandFailed(
            EXIT_USAGE, f"--url {url!r} is not an http:// or https:// URL such as {DEFAULT_URL}"
        )
    if parts.query or parts.fragment:
        raise CommandFailed(EXIT_USAGE, f"--url {url!r}: give the base URL, with no ? or #")
    return url.strip().rstrip("/")
