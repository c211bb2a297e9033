"""The README's Quick start runs as written, against a real server and real receivers.

Its blocks are taken in page order:
- the ```sh block with `make run` starts the broker: its `export` line runs as written,
  and `make run ARGS="..."` becomes `mqpy serve ...`, as the Makefile's recipe does;
- every other ```sh line is a receiver someone starts in another shell (`mqpy listen`);
- every ```console block runs in one shell session, each `$ ` command followed by the
  answer shown, which the real answer must equal once ids, keys, secrets and times are
  masked (a shown id, key or secret stands for one real value, used again afterwards);
- the ```http block is the request a receiver gets.

Only what cannot be the same here changes: the broker listens on a free port instead of
8080 (and the shell has MQPY_URL, which `mqpy` would otherwise take as 8080), the
receivers on free ports instead of 9000 and 9001, and `.venv/bin/mqpy` is this Python's
`-m mqpy`.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support.client import SeedClient
from tests.support.docs import Bindings, Block, fenced_blocks, section, shell_env
from tests.support.load import unused_port
from tests.support.receiver import Receiver
from tests.support.server import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
_DONE = "mqpy-quickstart-done"
# A read shown answering what a moment later holds (a dead letter "within a second",
# the dashboard after a delivery) is asked again until it does, for this long at most.
READ_PATIENCE_SECONDS = 10.0

pytestmark = pytest.mark.skipif(
    shutil.which("curl") is None and not os.environ.get("CI"),
    reason="the Quick start needs curl",
)


@dataclass(frozen=True)
class Command:
    line: str
    shown: str  # the answer shown under it, lines joined with \n


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    for chunk in re.split(r"^\$ ", block.text, flags=re.MULTILINE)[1:]:
        line, _, shown = chunk.partition("\n")
        commands.append(Command(line, shown.rstrip("\n")))
    return commands


def serve_arguments(block: Block) -> tuple[list[str], list[str]]:
    """The lines run before the broker (the `export`), and `mqpy serve`'s arguments
    from `make run ARGS="..."`."""
    before: list[str] = []
    for line in block.text.splitlines():
        words = shlex.split(line, comments=True)
        if words[:2] == ["make", "run"]:
            args = [w.removeprefix("ARGS=") for w in words[2:] if w.startswith("ARGS=")]
            return before, shlex.split(args[0]) if args else []
        before.append(line)
    raise AssertionError(f"no `make run` in the block:\n{block.text}")


class Shell:
    """One bash session: variables set by one command are there for the next."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self._process = subprocess.Popen(
            ["bash", "--norc", "--noprofile"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
        )
        self._lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)

    def run(self, command: str, timeout: float = 30.0) -> str:
        """What `command` printed, stdout and stderr as a terminal shows them."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{command}\nprintf '\\n{_DONE}\\n'\n")
        self._process.stdin.flush()
        output: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"{command!r} did not finish: {''.join(output)}") from None
            if line.rstrip("\n") == _DONE:
                return "".join(output).rstrip("\n")
            output.append(line)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(10)
        self._reader.join(10)
        if self._process.stdout is not None:
            self._process.stdout.close()


class Background:
    """A command someone leaves running in another shell: a receiver."""

    def __init__(self, command: str, env: dict[str, str], cwd: Path) -> None:
        self.command = command
        self.process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self.printed: list[str] = []
        self.errors: list[str] = []
        self._ready = threading.Event()
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.printed), (self.process.stderr, None))
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: object, into: list[str] | None) -> None:
        for line in stream:  # type: ignore[attr-defined]
            if into is not None:
                into.append(line.rstrip("\n"))
            else:
                self.errors.append(line)
                if "listening on" in line:
                    self._ready.set()
        self._ready.set()

    def wait_ready(self) -> None:
        ready = self._ready.wait(20) and self.process.poll() is None
        assert ready, f"{self.command!r} did not start: {''.join(self.errors)}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        for reader in self._readers:
            reader.join(10)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@dataclass
class Walkthrough:
    """The Quick start as it runs: where the shown ports really are, what each shown
    id, key and secret stands for."""

    ports: dict[str, str]
    bindings: Bindings

    def command(self, text: str) -> str:
        text = text.replace(".venv/bin/mqpy", f"{shlex.quote(sys.executable)} -m mqpy")
        for shown, real in self.ports.items():
            text = re.sub(rf"\b{shown}\b", real, text)
        return self.bindings.apply(text)

    def as_shown(self, output: str) -> str:
        for shown, real in self.ports.items():
            output = re.sub(rf"\b{real}\b", shown, output)
        return output


@pytest.fixture
def backgrounds() -> Iterator[list[Background]]:
    started: list[Background] = []
    yield started
    for process in started:
        process.stop()


def test_the_quick_start_runs_as_written(
    start_server: ServerFactory, backgrounds: list[Background], tmp_path: Path
) -> None:
    page = section(README.read_text(), "## Quick start")
    blocks = fenced_blocks(page)
    assert "$(BIN)/mqpy serve $(ARGS)" in (ROOT / "Makefile").read_text()
    before, serve_args = serve_arguments(blocks[0])
    admin_key = subprocess.run(
        ["bash", "-c", "\n".join([*before, 'printf %s "$MQPY_ADMIN_KEY"'])],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert len(admin_key) >= 32, admin_key
    server = start_server(*serve_args, env={"MQPY_ADMIN_KEY": admin_key})
    ports = {"8080": str(server.port), "9000": str(unused_port()), "9001": str(unused_port())}
    walk = Walkthrough(ports, Bindings())
    env = shell_env(MQPY_ADMIN_KEY=admin_key, MQPY_URL=server.url)
    shell = Shell(env, tmp_path)
    requests_shown: list[str] = []
    try:
        for block in blocks[1:]:
            if block.language == "console":
                for command in console_commands(block):
                    _run_and_compare(shell, walk, command)
            elif block.language == "sh":
                for line in filter(None, block.text.splitlines()):
                    backgrounds.append(Background(walk.command(line), env, tmp_path))
                    backgrounds[-1].wait_ready()
            elif block.language == "http":
                requests_shown.append(block.text)  # checked last: it takes a message
    finally:
        shell.close()
    for said in re.findall(r"shell prints `([^`]+)`", page):
        deadline = time.monotonic() + READ_PATIENCE_SECONDS
        while said not in (
            printed := [walk.as_shown(line) for p in backgrounds for line in p.printed]
        ):
            assert time.monotonic() < deadline, f"no receiver printed {said!r}, only {printed}"
            time.sleep(0.05)
    assert requests_shown, "the Quick start shows no request a receiver gets"
    for shown in requests_shown:
        _compare_delivery(shown, server, admin_key)


def _run_and_compare(shell: Shell, walk: Walkthrough, command: Command) -> None:
    is_read = command.line.startswith("curl") and not re.search(r" -X | -d ", command.line)
    deadline = time.monotonic() + (READ_PATIENCE_SECONDS if is_read else 0)
    while True:
        actual = walk.as_shown(shell.run(walk.command(command.line)))
        if walk.bindings.matches(command.shown, actual):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"$ {command.line}\nshown:\n{command.shown}\nbut it answered:\n{actual}"
            )
        time.sleep(0.2)


def _compare_delivery(shown: str, server: ServerProcess, admin_key: str) -> None:
    """The request shown is what a receiver at 127.0.0.1:9000/hook gets for the message
    sent just before it (a fresh receiver and sender, so nothing else changes)."""
    body = json.loads(shown.split("\n\n", 1)[1])["body"]
    delivery = asyncio.run(_one_delivery(server, admin_key, body))
    port = re.search(r"^Host: 127\.0\.0\.1:(\d+)$", delivery, re.MULTILINE)
    assert port is not None, delivery
    delivery = delivery.replace(f"127.0.0.1:{port.group(1)}", "127.0.0.1:9000")
    assert Bindings().matches(shown.rstrip("\n"), delivery), (
        f"the request shown:\n{shown}\nbut a receiver got:\n{delivery}"
    )


async def _one_delivery(server: ServerProcess, admin_key: str, body: str) -> str:
    receiver = await Receiver().start()
    headers = {"Authorization": f"Bearer {admin_key}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as http:
            client = SeedClient(http, server.url)
            receiver_id = await client.connect_receiver(receiver.url)
            sender = await client.connect_sender()
            await client.send(sender, body)
            (got,) = await receiver.wait_for(1)
            await client.disconnect(receiver_id)
            await client.disconnect(sender)
    finally:
        await receiver.stop()
    lines = [f"POST {receiver.path} HTTP/1.1", *(f"{k}: {v}" for k, v in got.headers.items())]
    return "\n".join(lines) + "\n\n" + json.dumps(got.body, separators=(",", ":"))
