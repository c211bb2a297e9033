"""`mqpy publish`, `listen` and `dead-letters` use the Python client (`mqpy.Client`,
`mqpy.AsyncClient`) rather than one-off urllib requests: they get its keep-alive
connection, its retries on 429/503 and its typed errors. This module fills the client's
settings from --url/--key/the environment, and turns its errors into the exit codes and
sentences of `mqpy.commands`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mqpy.client import Client, ConnectionFailed, MQError, Unauthorized
from mqpy.commands import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    KEY_ENV,
    URL_ENV,
    CommandFailed,
    ServerClient,
)


@dataclass(frozen=True)
class ClientSettings:
    url: str
    key: str | None


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """--url and --key, then MQPY_URL and MQPY_KEY; a malformed URL exits 2."""
    server = ServerClient.from_args(args)
    return ClientSettings(server.base_url, server.key)


def sync_client(args: argparse.Namespace) -> Client:
    settings = client_settings(args)
    return Client(settings.url, key=settings.key)


def failure(error: MQError) -> CommandFailed:
    """Exit 3 when no answer came, else 1 with the server's own sentence."""
    if isinstance(error, ConnectionFailed):
        return CommandFailed(
            EXIT_UNREACHABLE, f"{error} (is it running? set the address with --url or {URL_ENV})"
        )
    message = str(error)
    if isinstance(error, Unauthorized):
        message += f" (give a key with --key or {KEY_ENV})"
    return CommandFailed(EXIT_REFUSED, message)
