"""Every `mqpy` command that talks to a broker does so through the Python client
(`mqpy.Client`, `mqpy.AsyncClient`): one HTTP client, with its keep-alive connection,
its retries on 429/503 and its typed errors. This module fills the client's settings
from --url/--key/the environment, and turns its errors into the exit codes and
sentences of `mqpy.commands`."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

from mqpy.client import Client, ConnectionFailed, MQError, Unauthorized
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
