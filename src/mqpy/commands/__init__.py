"""Commands that talk to a running broker over its HTTP API (`mqpy keys ...`).

They use the standard library's urllib: a command makes a request or two and exits, so
it needs no event loop and no dependency. What they share lives here: the `--url` and
`--key` options, one HTTP call, and exit codes that mean the same in every command:

- 0: done;
- 1: the server refused (its problem+json detail is printed to stderr);
- 2: the command line is wrong (argparse's own code for usage errors);
- 3: the server could not be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException
from typing import IO, Any
from urllib.parse import urlsplit

from mqpy import __version__
from mqpy.client.errors import describe_failure

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_URL = "http://127.0.0.1:8080"
URL_ENV = "MQPY_URL"
KEY_ENV = "MQPY_KEY"
TIMEOUT_SECONDS = 10.0

Handler = Callable[[argparse.Namespace], int]


class CommandFailed(Exception):
    """Ends a command with `exit_code`; the message is printed to stderr."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--url and --key, which every command that talks to the server takes."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the broker's base URL (default: {DEFAULT_URL}; env {URL_ENV})",
    )
    parser.add_argument(
        "--key",
        default=None,
        help=f"API key sent as 'Authorization: Bearer' (env {KEY_ENV}; prefer the "
        "environment: a flag shows in `ps`)",
    )


def add_server_options_with_epilog(parser: argparse.ArgumentParser) -> None:
    """--url and --key, and an epilog naming their environment variables: for the
    subcommands of `keys`, `dead-letters`, `topics` and `subscriptions`."""
    add_server_options(parser)
    parser.epilog = f"Environment: {URL_ENV} (the broker's URL), {KEY_ENV} (the API key)."


def print_usage(parser: argparse.ArgumentParser) -> int:
    """A command group run without its subcommand: its help, and the usage exit code."""
    parser.print_help(sys.stderr)
    return EXIT_USAGE


def set_handler(parser: argparse.ArgumentParser, handler: Handler) -> None:
    """`handler` runs when this (sub)command is chosen; see `run`."""
    parser.set_defaults(run=run, handler=handler, command_name=parser.prog)


def run(args: argparse.Namespace) -> int:
    """Run the chosen command's handler; a CommandFailed becomes its exit code."""
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandFailed as failure:
        print(f"{args.command_name}: {failure}", file=sys.stderr)
        return failure.exit_code


def print_json(value: Any, out: IO[str] | None = None) -> None:
    print(json.dumps(value, indent=2), file=out or sys.stdout)


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # The broker never redirects; following one would hand the bearer key to whatever
    # host the redirect names.
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass(frozen=True)
class ServerClient:
    """One broker, reached at `base_url`, with an optional API key."""

    base_url: str
    key: str | None = None
    timeout: float = TIMEOUT_SECONDS

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServerClient:
        """Flags first, then MQPY_URL and MQPY_KEY, then the default URL."""
        environ = os.environ if environ is None else environ
        url = args.url or environ.get(URL_ENV) or DEFAULT_URL
        key = args.key or environ.get(KEY_ENV) or None
        return cls(_checked_base_url(url), key)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON answer (None for an empty one) to a request the server
        accepted; a refusal or an unreachable server raises CommandFailed."""
        request = urllib.request.Request(
            self.base_url + path,
            data=None if body is None else json.dumps(body).encode(),
            method=method,
            headers=self._headers(body is not None),
        )
        opener = urllib.request.build_opener(_NoRedirects)
        try:
            with opener.open(request, timeout=self.timeout) as response:
                raw: bytes = response.read()
        except urllib.error.HTTPError as error:
            raise CommandFailed(EXIT_REFUSED, _refusal(error)) from None
        except urllib.error.URLError as error:
            raise self._unreachable(error.reason) from None
        except (OSError, HTTPException) as error:
            raise self._unreachable(error) from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise CommandFailed(
                EXIT_REFUSED,
                f"{self.base_url} answered something that is not JSON; is it an mq-py server?",
            ) from None

    def _headers(self, has_body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"mqpy/{__version__}"}
        if has_body:
            headers["Content-Type"] = "application/json"
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        return headers

    def _unreachable(self, reason: object) -> CommandFailed:
        text = describe_failure(reason) if isinstance(reason, BaseException) else reason
        return CommandFailed(
            EXIT_UNREACHABLE,
            f"cannot reach the server at {self.base_url}: {text} "
            f"(is it running? set the address with --url or {URL_ENV})",
        )


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


def _refusal(error: urllib.error.HTTPError) -> str:
    """The sentence to show for an error answer: the problem's detail when there is one."""
    try:
        raw = error.read()
    except (OSError, HTTPException):
        raw = b""
    status = f"{error.code} {error.reason}"
    detail = _problem_detail(raw)
    if detail is None:
        text = raw.decode(errors="replace").strip()[:200]
        detail = f"the server answered {status}" + (f": {text}" if text else "")
    else:
        detail = f"{status}: {detail}"
    if error.code == 401:
        detail += f" (give a key with --key or {KEY_ENV})"
    if 300 <= error.code < 400:
        detail += f" (redirect to {error.headers.get('Location')!r} not followed: fix --url)"
    return detail


def _problem_detail(raw: bytes) -> str | None:
    try:
        problem = json.loads(raw)
    except ValueError:
        return None
    detail = problem.get("detail") if isinstance(problem, dict) else None
    return detail if isinstance(detail, str) else None
