"""`make bench`: measure mq-py's publish and delivery throughput and its latency.

Every figure gets a fresh broker (`python -m mqpy serve --port 0` on a new data
directory, or on a new PostgreSQL database with `--store`/`--postgres`), a fresh sink
receiver (`bench.sink`) and, for the load, `bench.loadgen`, each in its own process.
The runner itself only starts them, makes a few control calls, and waits; it prints a
table and writes the figures as JSON.

    python -m bench.run [--quick] [--only publish,delivery,latency,batch]
                        [--store postgresql://... | --postgres] [--processes N]
                        [--server-args "--jobs 64"] [--profile DIR] [--profile-native]
                        [--compare 'NAME=COMMAND --port {port}']

Every broker runs with mq-py's defaults unless --server-args says otherwise. With
--compare, another broker that speaks the seed protocol (MQ Go, say) is measured on
the same figures in the same run, alternating with mq-py, and a second table shows
both and their ratio.

See bench/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from bench.cpu import Meter, Watch, machine_seconds
from bench.native_profile import NativeProfiler, require_perf
from bench.native_profile import describe as describe_parts
from bench.stores import (
    FigureStore,
    PostgresStores,
    SQLiteStores,
    StoreError,
    Stores,
    ThrowawayPostgres,
    is_postgres_url,
)
from mqpy.config import Settings, parse_processes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
LISTENING = f"listening on http://{HOST}:"
PHASES = ("publish", "delivery", "stream", "latency", "routing", "batch", "flaky", "pull")
# Messages per pull (and per ack) in the pull figure.
PULL_BATCH = 500
# What a broker speaking only the seed protocol can be measured on (--compare).
SEED_PHASES = ("publish", "delivery", "stream", "latency")
BATCH_TOPIC = "bench.batch"
ROUTING_TOPIC = "bench.routing"
DEFAULT_TOPIC = "default"  # the seed's: where a sender or receiver without a topic is
# Every broker runs with mq-py's own defaults: the figures are what `mqpy serve` does
# with no flags, unless --server-args says otherwise.
DEFAULT_SERVER_ARGS: tuple[str, ...] = ()
# Without a proxy handler urllib would honour http_proxy even for 127.0.0.1.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))
POLL_SECONDS = 0.05
# With --processes above 1, a connection made through one node is in force on the
# others within a second (the store tells them); the load waits that long.
SETTLE_SECONDS = 1.5


@dataclass(frozen=True)
class Plan:
    """How much load each figure gets."""

    publishers: int = 64
    publish_count: int = 20_000
    publish_seconds: float = 10.0
    publish_warmup: int = 1_000
    body_bytes: int = 100
    delivery_messages: int = 20_000
    receivers: int = 16
    latency_rate: float = 500.0
    latency_seconds: float = 10.0
    latency_warmup: float = 1.0
    latency_connections: int = 32
    batch_size: int = 1_000  # messages per batch publish (the most a batch may hold)
    batch_connections: int = 16
    batch_requests: int = 200
    delivery_timeout: float = 120.0
    routing_groups: int = 3
    routing_members: int = 2  # receivers in each group
    routing_receivers: int = 3  # receivers in no group
    flaky_messages: int = 300
    flaky_timeout: float = 2.0  # --delivery-timeout: how long a hang holds a delivery

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            publish_count=2_000,
            publish_seconds=3.0,
            publish_warmup=200,
            delivery_messages=2_000,
            latency_seconds=3.0,
            latency_warmup=0.5,
            delivery_timeout=30.0,
            batch_requests=20,
            flaky_messages=100,
        )


@dataclass(frozen=True)
class Floor:
    """A figure's floor from the issue: the figure must be at least (or below) it."""

    value: float
    at_least: bool
    text: str

    def verdict(self, figure: float | None) -> str:
        if figure is None:
            return "-"
        met = figure >= self.value if self.at_least else figure < self.value
        return "PASS" if met else "BELOW"


FLOORS: dict[str, Floor] = {
    "publish": Floor(4_000, True, ">= 4,000"),
    "delivery_1": Floor(3_000, True, ">= 3,000"),
    "latency_p99_ms": Floor(50, False, "< 50 ms"),
}


@dataclass
class Usage:
    """CPU used during a measured stretch, in cores (1.0 = one core busy throughout)."""

    server: float = 0.0  # the broker: with --processes, its supervisor and every node
    database: float | None = None  # PostgreSQL's processes; None with SQLite
    sink: float = 0.0
    loadgen: float = 0.0
    machine: float = 0.0  # every process on the machine, ours included
    seconds: float = 0.0  # how long the measured stretch was

    @classmethod
    def of(cls, readings: dict[str, float]) -> Usage:
        return cls(**{k: v for k, v in readings.items() if k in cls.__dataclass_fields__})

    @property
    def others(self) -> float:
        """What processes other than the bench's used: the noise in the figures."""
        ours = self.server + (self.database or 0.0) + self.sink + self.loadgen
        return max(0.0, self.machine - ours)

    def per_item_us(self, items: int) -> dict[str, float | None]:
        """CPU microseconds per message (or delivery) of the server and the database."""
        if items <= 0 or self.seconds <= 0:
            return {"server_us_per_message": None, "database_us_per_message": None}
        scale = self.seconds / items * 1e6
        database = None if self.database is None else self.database * scale
        return {"server_us_per_message": self.server * scale, "database_us_per_message": database}


@dataclass
class Figure:
    """One measured figure and what was seen while measuring it."""

    name: str
    value: float | None = None
    unit: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    error: str | None = None


# Processes.


class Server:
    """One `mqpy serve` on a fresh store: on an ephemeral port, or, as `processes`
    nodes under a supervisor, on a fixed port that was free a moment ago."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        args: Sequence[str],
        store: FigureStore,
        release: Callable[[FigureStore], None],
        processes: int = 1,
    ) -> None:
        self.store = store
        self._release: Callable[[FigureStore], None] | None = release
        self.processes = processes
        self.log_path = workdir / f"{name}-server.log"
        # Several nodes cannot share port 0 (each would get a port of its own).
        port = 0 if processes == 1 else free_port()
        command = [sys.executable, "-m", "mqpy", "serve", "--port", str(port)]
        command += [*store.server_args, *args]
        self.command = command
        with open(self.log_path, "wb") as log:
            self.process = _start(command, stdout=subprocess.DEVNULL, stderr=log)
        self.port = self._wait_for_port(timeout=30.0)
        self.url = f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_for_port(self, timeout: float) -> int:
        """The port, once every node has logged that it listens on it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.log_path.read_text(errors="replace").splitlines()
            ports = [
                int(line.split(LISTENING, 1)[1].split()[0].strip("/"))
                for line in lines
                if LISTENING in line
            ]
            if len(ports) >= self.processes:
                return ports[0]
            if self.process.poll() is not None:
                break
            time.sleep(POLL_SECONDS)
        self.stop()
        raise RuntimeError(f"the server did not start: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def connect(
        self,
        mode: str,
        client_url: str = "",
        topic: str | None = None,
        group: str | None = None,
        start_at: str | None = None,
    ) -> int:
        """`start_at`: "earliest" for a receiver that takes what was published before it
        connected (mq-py hands a new receiver only what follows, unless asked)."""
        request = {"ClientURL": client_url, "mode": mode}
        if topic is not None:
            request["topic"] = topic
        if group is not None:
            request["group"] = group
        if start_at is not None:
            request["start_at"] = start_at
        answer = http_json("POST", f"{self.url}/connect", request)
        return int(answer["id"])

    def stop(self) -> None:
        """Stop the broker, then remove its store (a PostgreSQL database is dropped)."""
        _stop_process(self.process)
        if self._release is not None:
            release, self._release = self._release, None
            release(self.store)


class ForeignServer(Server):
    """A broker that is not mq-py (`--compare`): started from a command with `{port}` in
    it, on a port that was free a moment ago, and spoken to in the seed protocol only
    (`/connect`, `/send`). It has no store of ours; whatever it keeps dies with it."""

    def __init__(self, workdir: Path, name: str, template: str) -> None:
        self.store = FigureStore(server_args=[], where="its own")
        self.processes = 1
        self.log_path = workdir / f"{name}-server.log"
        self.port = free_port()
        self.command = shlex.split(template.replace("{port}", str(self.port)))
        with open(self.log_path, "wb") as log:
            self.process = _start(self.command, stdout=log, stderr=log)
        self._wait_for_connections(timeout=30.0)
        self.url = f"http://{HOST}:{self.port}"
        # MQ Go serves its routes as /connect/ and /send/, and redirects /connect there.
        self.slash = "/" if _redirects_to_slash(f"{self.url}/connect") else ""

    def _wait_for_connections(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, self.port), timeout=1.0).close()
                return
            if self.process.poll() is not None:
                break
            time.sleep(POLL_SECONDS)
        self.stop()
        raise RuntimeError(f"{self.command[0]} did not start: {self.log_tail()}")

    def connect(
        self,
        mode: str,
        client_url: str = "",
        topic: str | None = None,
        group: str | None = None,
        start_at: str | None = None,
    ) -> int:
        # `start_at` is mq-py's, sent for a compared mq-py (another commit's): a seed
        # broker ignores the field and hands what waited to its first receiver anyway.
        if topic is not None or group is not None:
            raise RuntimeError("a compared broker speaks the seed protocol: no topics or groups")
        fields = {"ClientURL": client_url, "mode": mode}
        if start_at is not None:
            fields["start_at"] = start_at
        request = json.dumps(fields).encode()
        post = urllib.request.Request(f"{self.url}/connect{self.slash}", data=request)
        with _HTTP.open(post, timeout=30.0) as response:
            answer = response.read().decode(errors="replace")
        # MQ Go answers {'id': 3}, which is not JSON: take the number.
        found = re.search(r"id\W+(\d+)", answer)
        if found is None:
            raise RuntimeError(f"/connect answered {answer!r}: no id in it")
        return int(found.group(1))

    def stop(self) -> None:
        _stop_process(self.process)


def _redirects_to_slash(url: str) -> bool:
    """Whether a POST to `url` is redirected to `url/`."""

    class NoRedirects(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirects())
    try:
        with opener.open(urllib.request.Request(url, data=b"{}"), timeout=10.0):
            return False
    except urllib.error.HTTPError as answer:
        return answer.code in (301, 307, 308) and answer.headers.get("Location", "").endswith("/")


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the broker binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class Sink:
    """One `bench.sink` process and its control endpoints."""

    def __init__(self, max_seconds: float) -> None:
        command = [sys.executable, "-m", "bench.sink", "--max-seconds", f"{max_seconds:.0f}"]
        self.process = _start(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], 30.0)
        line = self.process.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            self.stop()
            raise RuntimeError(f"the sink did not start (it said {line!r})")
        self.port = int(line.split()[1])
        self.url = f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def receiver_url(self, number: int = 0) -> str:
        return f"{self.url}/r{number}"

    def path_url(self, name: str) -> str:
        """A receiver URL whose deliveries the sink counts under `/name`."""
        return f"{self.url}/{name}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = http_json("GET", f"{self.url}/_stats")
        return result

    def latencies_ns(self) -> list[int]:
        result: list[int] = http_json("GET", f"{self.url}/_latencies")
        return result

    def control(self, action: str) -> None:
        http_json("POST", f"{self.url}/_{action}", {})

    def wait_for(self, count: int, timeout: float, key: str = "count") -> dict[str, Any]:
        """Stats once `key` reaches `count`, or at the deadline."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats[key] < count and time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            stats = self.stats()
        return stats

    def stop(self) -> None:
        _stop_process(self.process)


# Every broker and sink started, so that an interrupted run (Ctrl-C, SIGTERM, an
# error half-way through starting one) still stops them all on the way out.
_CHILDREN: list[subprocess.Popen[bytes]] = []


def _start(
    command: list[str], stdout: int | IO[bytes], stderr: int | IO[bytes]
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, cwd=ROOT, stdout=stdout, stderr=stderr)
    _CHILDREN.append(process)
    return process


def stop_children() -> None:
    while _CHILDREN:
        _stop_process(_CHILDREN.pop())


def _stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20.0)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10.0)


def http_json(method: str, url: str, payload: object = None, timeout: float = 30.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with _HTTP.open(request, timeout=timeout) as response:
        return json.loads(response.read())


def run_loadgen(
    server: Server,
    target: Sequence[str],
    args: Sequence[str],
    budget: float,
    watches: dict[str, Watch],
) -> Any:
    """Run `bench.loadgen` against `server`, publishing to `target` (its --sender-id or
    --topic), and return its JSON result; it meters `watches` over its counted run."""
    command = [sys.executable, "-m", "bench.loadgen", *args, *target]
    command += ["--port", str(server.port)]
    for name, watch in watches.items():
        command += ["--watch", f"{name}={watch}"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, timeout=budget + 60.0)
    if done.returncode != 0:
        raise RuntimeError(f"the load generator failed: {done.stderr.decode()[-2000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


# Profiling with py-spy, when asked for.


class Profiler:
    """Runs `py-spy record` on the server for the measured part of each figure, and
    `perf record` too when `native` is enabled (native_profile.py)."""

    def __init__(
        self,
        directory: Path | None,
        output_format: str,
        subprocesses: bool = False,
        native: NativeProfiler | None = None,
    ) -> None:
        self.native = native
        self.directory = directory
        self.output_format = output_format
        self.subprocesses = subprocesses  # --processes N: the nodes are the supervisor's
        self.py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if directory is not None:
            if not Path(self.py_spy).exists():
                raise SystemExit(
                    "--profile needs py-spy: make bench installs it, or "
                    ".venv/bin/pip install -e '.[dev,bench]'"
                )
            directory.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def record(self, pid: int, name: str) -> Iterator[None]:
        native = contextlib.nullcontext() if self.native is None else self.native.record(pid, name)
        with native, self._py_spy(pid, name):
            yield

    @contextlib.contextmanager
    def _py_spy(self, pid: int, name: str) -> Iterator[None]:
        if self.directory is None:
            yield
            return
        suffix = {"flamegraph": "svg", "speedscope": "json", "raw": "txt"}[self.output_format]
        output = self.directory / f"{name}.{suffix}"
        command = [self.py_spy, "record", "--pid", str(pid), "--rate", "200", "--nonblocking"]
        command += ["--threads", "--format", self.output_format, "--output", str(output)]
        if self.subprocesses:
            command.append("--subprocesses")
        spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                spy.wait(timeout=60.0)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(timeout=10.0)
            print(f"  profile of the server: {output}", file=sys.stderr)


# The figures.


@dataclass
class Bench:
    plan: Plan
    server_args: list[str]
    workdir: Path
    profiler: Profiler
    stores: Stores = field(default_factory=SQLiteStores)
    processes: int = 1
    publish_api: str = "seed"  # or "native": POST /v1/topics/{topic}/messages
    servers_started: int = 0
    foreign: str | None = None  # --compare: the command of the broker measured instead

    def server(self, name: str, *extra: str) -> Server:
        """A broker on a store of its own: connections survive a restart, so a reused
        store would bring back the receivers of an earlier run. (With `foreign`, that
        broker instead; `extra` are mq-py flags, which it does not take.)"""
        if self.foreign is not None:
            self.servers_started += 1
            return ForeignServer(self.workdir, f"{self.servers_started}-{name}", self.foreign)
        args = [*DEFAULT_SERVER_ARGS, *extra, *self.server_args]
        for attempt in range(3):
            self.servers_started += 1
            label = f"{self.servers_started}-{name}"
            store = self.stores.open(self.workdir, label)
            try:
                return Server(self.workdir, label, args, store, self.stores.release, self.processes)
            except RuntimeError:
                # A fixed port was free when chosen; someone may have taken it since.
                if attempt == 2 or self.processes == 1 or not self._lost_port(label):
                    raise
        raise AssertionError("unreachable")

    def _lost_port(self, label: str) -> bool:
        log = self.workdir / f"{label}-server.log"
        return log.exists() and "cannot listen on" in log.read_text(errors="replace")

    def publisher(self, server: Server, topic: str | None = None) -> list[str]:
        """The load generator's target: a sender connected for /send (on `topic`), or,
        publishing natively, the topic itself."""
        if self.publish_api == "native":
            return ["--topic", topic or DEFAULT_TOPIC]
        sender = ["--sender-id", str(server.connect("send", topic=topic))]
        if isinstance(server, ForeignServer) and server.slash:
            sender += ["--send-path", "/send/"]
        return sender

    def _hint(self, result: dict[str, Any]) -> str:
        """Why a multi-process broker may answer 404 to /send."""
        if self.processes > 1 and self.publish_api == "seed" and "404" in result["statuses"]:
            return (
                " (with --processes, a node that does not know the sender answers /send "
                "with 404 unknown-connection: before 7e6cb11 a sender was known only to the "
                "node that took its /connect; --publish-api native publishes through any node)"
            )
        return ""

    def settle(self) -> None:
        """Let every node learn of the connections just made through one of them."""
        if self.processes > 1:
            time.sleep(SETTLE_SECONDS)

    def watches(self, server: Server, sink: Sink | None = None) -> dict[str, Watch]:
        """What to meter: the broker's process tree, the database, the sink."""
        watches: dict[str, Watch] = {"server": server.pid}
        if self.stores.database_watch is not None:
            watches["database"] = self.stores.database_watch
        if sink is not None:
            watches["sink"] = sink.pid
        return watches

    def publish(self) -> Figure:
        """200s per second from /send, `publishers` keep-alive connections, no receiver."""
        plan = self.plan
        figure = Figure("publish", unit="msg/s")
        server = self.server("publish")
        try:
            sender = self.publisher(server)
            self.settle()
            args = ["closed", "--connections", str(plan.publishers)]
            args += ["--count", str(plan.publish_count), "--duration", str(plan.publish_seconds)]
            args += ["--warmup", str(plan.publish_warmup), "--body-bytes", str(plan.body_bytes)]
            with self.profiler.record(server.pid, "publish"):
                watches = self.watches(server)
                result = run_loadgen(server, sender, args, plan.publish_seconds, watches)
            figure.usage = Usage.of(result["usage"])
            figure.value = result["rate"]
            figure.details = {
                "publishers": plan.publishers,
                "sent": result["sent"],
                "ok": result["ok"],
                "other_statuses": result["statuses"],
                "failures": result["failures"],
                "seconds": result["elapsed_s"],
                "body_bytes": plan.body_bytes,
                "warmup_requests": plan.publish_warmup,
                **figure.usage.per_item_us(result["ok"]),
            }
            _note_errors(figure, result, self._hint(result))
        finally:
            server.stop()
        return figure

    def batch_publish(self) -> Figure:
        """Messages per second published in batches of `batch_size` through the native
        batch route, from `batch_connections` keep-alive connections; each request is
        answered once its batch is committed."""
        plan = self.plan
        figure = Figure("batch", unit="msg/s")
        server = self.server("batch")
        try:
            args = ["closed", "--connections", str(plan.batch_connections)]
            args += ["--count", str(plan.batch_requests), "--duration", str(plan.publish_seconds)]
            args += ["--batch", str(plan.batch_size), "--body-bytes", str(plan.body_bytes)]
            args += ["--warmup", str(plan.batch_connections)]
            with self.profiler.record(server.pid, "batch"):
                watches = self.watches(server)
                result = run_loadgen(
                    server, ["--topic", BATCH_TOPIC], args, plan.publish_seconds, watches
                )
            figure.usage = Usage.of(result["usage"])
            messages = result["ok"] * plan.batch_size
            figure.value = result["rate"] * plan.batch_size
            figure.details = {
                "batch_size": plan.batch_size,
                "connections": plan.batch_connections,
                "requests": result["ok"],
                "requests_per_second": result["rate"],
                "messages": messages,
                "other_statuses": result["statuses"],
                "failures": result["failures"],
                "seconds": result["elapsed_s"],
                "body_bytes": plan.body_bytes,
                **figure.usage.per_item_us(messages),
            }
            _note_errors(figure, result)
        finally:
            server.stop()
        return figure

    def flaky_receiver(self) -> Figure:
        """Acknowledgements per second from a receiver that fails 60% of deliveries at
        random (bench/sink.py), on the issue's flags `--retry-max 1 --max-attempts 8`:
        the time runs from the first publish until every message is acknowledged or
        dead-lettered."""
        plan = self.plan
        figure = Figure("flaky", unit="acks/s")
        flags = ["--retry-max", "1", "--max-attempts", "8"]
        flags += ["--delivery-timeout", f"{plan.flaky_timeout:g}s"]
        server = self.server("flaky", *flags)
        sink = Sink(max_seconds=plan.delivery_timeout + 600)
        try:
            server.connect("receive", sink.path_url("flaky"))
            sender = self.publisher(server)
            self.settle()
            args = ["closed", "--connections", str(plan.publishers)]
            args += ["--count", str(plan.flaky_messages), "--duration", "600"]
            args += ["--body-bytes", str(plan.body_bytes)]
            with self.profiler.record(server.pid, figure.name):
                meter = Meter(self.watches(server, sink)).start()
                result = run_loadgen(server, sender, args, 600.0, {})
                acked, dead, stats = self._settled(server, sink, plan.flaky_messages)
                ended_ns = time.monotonic_ns()
                loadgen = result["usage"].get("loadgen", 0.0)
                figure.usage = Usage.of({**meter.usage(), "loadgen": loadgen})
            seconds = (ended_ns - result["started_ns"]) / 1e9
            if acked + dead >= plan.flaky_messages:
                figure.value = acked / seconds
            else:
                figure.error = (
                    f"after {seconds:.0f} s, {acked} acknowledged and {dead} dead-lettered "
                    f"of {plan.flaky_messages}"
                )
            figure.details = {
                "messages": plan.flaky_messages,
                "acknowledged": acked,
                "dead_lettered": dead,
                "seconds": seconds,
                "receiver_did": stats["flaky"],
                "most_hanging_at_once": stats["most_hanging"],
                "delivery_timeout_s": plan.flaky_timeout,
                **figure.usage.per_item_us(acked),
            }
            _note_errors(figure, result)
        finally:
            sink.stop()
            server.stop()
        return figure

    def _settled(self, server: Server, sink: Sink, messages: int) -> tuple[int, int, Any]:
        """Acknowledged and dead-lettered counts once they add up to `messages`, or at
        the deadline (dead letters as `/v1/status` counts them, up to a second late)."""
        deadline = time.monotonic() + self.plan.delivery_timeout
        while True:
            stats = sink.stats()
            dead = int(http_json("GET", f"{server.url}/v1/status")["dead_letters"])
            if stats["distinct"] + dead >= messages or time.monotonic() > deadline:
                return stats["distinct"], dead, stats
            time.sleep(POLL_SECONDS * 4)

    def preload(self, server: Server, messages: int) -> None:
        """Publish `messages` from 64 connections."""
        sender = self.publisher(server)
        self.settle()
        args = ["closed", "--connections", str(self.plan.publishers), "--count", str(messages)]
        args += ["--duration", "600", "--body-bytes", str(self.plan.body_bytes)]
        result = run_loadgen(server, sender, args, 600.0, self.watches(server))
        if result["ok"] != messages:
            answers = _answers(result)
            raise RuntimeError(
                f"pre-loading {messages} messages got {result['ok']} accepted ({answers})"
                f"{self._hint(result)}"
            )

    def delivery_to_one(self) -> Figure:
        """Pre-load N messages with nobody connected, connect one receiver, time the drain."""
        plan = self.plan
        figure = Figure("delivery_1", unit="deliv/s")
        server = self.server("delivery1")
        sink = Sink(max_seconds=plan.delivery_timeout + 600)
        try:
            self.preload(server, plan.delivery_messages)
            with self.profiler.record(server.pid, "delivery_1"):
                meter = Meter(self.watches(server, sink)).start()
                started_ns = time.monotonic_ns()
                server.connect("receive", sink.receiver_url(), start_at="earliest")
                connected_ns = time.monotonic_ns()
                stats = sink.wait_for(plan.delivery_messages, plan.delivery_timeout)
                figure.usage = Usage.of(meter.usage())
            _delivery_figure(figure, stats, plan.delivery_messages, started_ns, held=0)
            figure.details.update(figure.usage.per_item_us(stats["count"]))
            figure.details["connect_ms"] = (connected_ns - started_ns) / 1e6
            figure.details["first_delivery_ms"] = (stats["first_ns"] - started_ns) / 1e6
        finally:
            sink.stop()
            server.stop()
        return figure

    def pulled(self) -> Figure:
        """Messages per second one consumer pulls and acks, PULL_BATCH at a time, from a
        pull subscription holding N messages published before."""
        plan = self.plan
        figure = Figure("pull", unit="msg/s")
        server = self.server("pull")
        try:
            body = {"kind": "pull", "topic": DEFAULT_TOPIC}
            subscription = http_json("POST", f"{server.url}/v1/subscriptions", body)["id"]
            self.preload(server, plan.delivery_messages)
            base = f"{server.url}/v1/subscriptions/{subscription}"
            with self.profiler.record(server.pid, "pull"):
                meter = Meter(self.watches(server)).start()
                started = time.monotonic()
                taken = 0
                while taken < plan.delivery_messages:
                    if time.monotonic() - started > plan.delivery_timeout:
                        raise RuntimeError(f"pulled {taken} of {plan.delivery_messages} in time")
                    ask = {"max_messages": PULL_BATCH, "wait_seconds": 5}
                    messages = http_json("POST", f"{base}/pull", ask)["messages"]
                    if messages:
                        acks = {"ack_ids": [m["ack_id"] for m in messages]}
                        if http_json("POST", f"{base}/ack", acks)["expired"]:
                            raise RuntimeError("an ack id expired before its ack")
                    taken += len(messages)
                elapsed = time.monotonic() - started
                figure.usage = Usage.of(meter.usage())
            figure.value = taken / elapsed
            figure.details.update(figure.usage.per_item_us(taken))
            figure.details.update(messages=taken, batch=PULL_BATCH, seconds=elapsed)
        finally:
            server.stop()
        return figure

    def delivery_to_many(self) -> Figure:
        """Deliveries per second to `receivers` receivers, every delivery counted.

        Messages published while nobody is connected all go to the first receiver that
        connects, so this figure connects every receiver first, with the sink holding
        its answers, pre-loads the messages, and times the drain from the sink's
        release: the store holds the backlog, as in the one-receiver figure.
        """
        plan = self.plan
        receivers = plan.receivers
        messages = max(1, plan.delivery_messages // receivers)
        expected = messages * receivers
        figure = Figure(f"delivery_{receivers}", unit="deliv/s")
        # The held deliveries must not time out while the backlog is being built (and
        # a lease must outlast a delivery).
        hold = ("--delivery-timeout", "600s", "--lease-seconds", "610s")
        server = self.server(f"delivery{receivers}", *hold)
        sink = Sink(max_seconds=plan.delivery_timeout + 600)
        try:
            sink.control("pause")
            for number in range(receivers):
                server.connect("receive", sink.receiver_url(number))
            self.preload(server, messages)
            time.sleep(0.5)  # let the dispatcher fill its workers and stop
            with self.profiler.record(server.pid, figure.name):
                held = sink.stats()["held"]
                meter = Meter(self.watches(server, sink)).start()
                started_ns = time.monotonic_ns()
                sink.control("resume")
                stats = sink.wait_for(expected, plan.delivery_timeout)
                figure.usage = Usage.of(meter.usage())
            _delivery_figure(figure, stats, expected, started_ns, held=held)
            figure.details.update(figure.usage.per_item_us(stats["count"] - held))
            figure.details["receivers"] = receivers
            figure.details["messages"] = messages
            figure.details["per_receiver_min"] = min(stats["by_path"].values(), default=0)
        finally:
            sink.stop()
            server.stop()
        return figure

    def streamed(self, receivers: int) -> Figure:
        """Deliveries per second to `receivers` receivers while the messages are being
        published: everyone connects first, then the load generator publishes from
        `publishers` connections, and the figure is the deliveries divided by the time
        from the first publish to the last delivery. No backlog waits in a store first,
        so a broker that keeps messages only in memory is measured the same way."""
        plan = self.plan
        messages = max(1, plan.delivery_messages // receivers)
        expected = messages * receivers
        figure = Figure(f"stream_{receivers}", unit="deliv/s")
        server = self.server(f"stream{receivers}")
        sink = Sink(max_seconds=plan.delivery_timeout + 600)
        try:
            for number in range(receivers):
                server.connect("receive", sink.receiver_url(number))
            sender = self.publisher(server)
            self.settle()
            result, stats = self._publish_while_delivering(
                figure, server, sink, sender, messages, expected
            )
            figure.details.update(figure.usage.per_item_us(stats["count"]))
            figure.details["receivers"] = receivers
            figure.details["messages"] = messages
            figure.details["publish_rate"] = result["rate"]
            _note_errors(figure, result, self._hint(result))
        finally:
            sink.stop()
            server.stop()
        return figure

    def _publish_while_delivering(
        self,
        figure: Figure,
        server: Server,
        sink: Sink,
        sender: list[str],
        messages: int,
        expected: int,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Publish `messages` from `publishers` connections while the broker delivers,
        until the sink has `expected` deliveries; fills in the figure's value and CPU
        use, and returns the load generator's result and the sink's stats."""
        plan = self.plan
        args = ["closed", "--connections", str(plan.publishers), "--count", str(messages)]
        args += ["--duration", "600", "--body-bytes", str(plan.body_bytes)]
        with self.profiler.record(server.pid, figure.name):
            meter = Meter(self.watches(server, sink)).start()
            result = run_loadgen(server, sender, args, 600.0, {})
            stats = sink.wait_for(expected, plan.delivery_timeout)
            # The load generator's own CPU, so that "others" is only other processes.
            loadgen = result["usage"].get("loadgen", 0.0)
            figure.usage = Usage.of({**meter.usage(), "loadgen": loadgen})
        _delivery_figure(figure, stats, expected, result["started_ns"], held=0)
        return result, stats

    def routing(self) -> Figure:
        """Deliveries per second, and the publish rate meanwhile, on one topic taken by
        `routing_groups` consumer groups of `routing_members` receivers each and by
        `routing_receivers` receivers in no group: every message makes one delivery per
        group (to one of its members) and one per ungrouped receiver.

        Everyone connects first; then the load generator publishes from 64 connections
        while the deliveries run, and the figure is the deliveries divided by the time
        from the first publish to the last delivery's arrival.
        """
        plan = self.plan
        fan_out = plan.routing_groups + plan.routing_receivers
        messages = max(1, plan.delivery_messages // fan_out)
        expected = messages * fan_out
        figure = Figure("routing", unit="deliv/s")
        server = self.server("routing")
        sink = Sink(max_seconds=plan.delivery_timeout + 600)
        try:
            groups = {
                f"g{g}": [f"g{g}m{m}" for m in range(plan.routing_members)]
                for g in range(plan.routing_groups)
            }
            for group, members in groups.items():
                for member in members:
                    server.connect("receive", sink.path_url(member), ROUTING_TOPIC, group)
            alone = [f"u{r}" for r in range(plan.routing_receivers)]
            for name in alone:
                server.connect("receive", sink.path_url(name), ROUTING_TOPIC)
            sender = self.publisher(server, ROUTING_TOPIC)
            self.settle()
            result, stats = self._publish_while_delivering(
                figure, server, sink, sender, messages, expected
            )
            _routing_details(figure, stats, result, messages, groups, alone)
            # Per message published: its publish and its fan-out's deliveries.
            figure.details.update(figure.usage.per_item_us(result["ok"]))
            figure.details["groups_and_receivers"] = (
                f"{plan.routing_groups} groups of {plan.routing_members} "
                f"+ {plan.routing_receivers} receivers"
            )
            _note_errors(figure, result, self._hint(result))
        finally:
            sink.stop()
            server.stop()
        return figure

    def latency(self) -> Figure:
        """Send-to-delivery latency at a steady rate, one receiver, open loop."""
        plan = self.plan
        figure = Figure("latency", unit="ms")
        server = self.server("latency")
        sink = Sink(max_seconds=plan.latency_seconds + 600)
        try:
            server.connect("receive", sink.receiver_url())
            sender = self.publisher(server)
            self.settle()
            args = ["paced", "--rate", str(plan.latency_rate)]
            args += ["--duration", str(plan.latency_seconds), "--warmup", str(plan.latency_warmup)]
            args += ["--connections", str(plan.latency_connections)]
            with self.profiler.record(server.pid, "latency"):
                budget = plan.latency_seconds + plan.latency_warmup
                result = run_loadgen(server, sender, args, budget, self.watches(server, sink))
                stats = sink.wait_for(result["sent"], 10.0, key="latencies")
            figure.usage = Usage.of(result["usage"])
            latencies = sorted(ns / 1e6 for ns in sink.latencies_ns())
            figure.details = {
                "rate": plan.latency_rate,
                "seconds": plan.latency_seconds,
                "sent": result["sent"],
                "ok": result["ok"],
                "other_statuses": result["statuses"],
                "delivered": len(latencies),
                "duplicates": stats["count"] - stats["distinct"],
                "loadgen_max_lag_ms": result["max_lag_ms"],
                "p50_ms": _percentile(latencies, 50),
                "p90_ms": _percentile(latencies, 90),
                "p99_ms": _percentile(latencies, 99),
                "max_ms": latencies[-1] if latencies else None,
                # The meter saw the warm-up's messages too.
                **figure.usage.per_item_us(
                    result["ok"] + round(plan.latency_rate * plan.latency_warmup)
                ),
            }
            figure.value = figure.details["p99_ms"]
            _note_errors(figure, result, self._hint(result))
            if len(latencies) < result["ok"]:
                lost = f"{result['ok'] - len(latencies)} accepted messages were not delivered"
                figure.error = lost if figure.error is None else f"{figure.error}; {lost}"
        finally:
            sink.stop()
            server.stop()
        return figure


def _median(runs: list[Figure]) -> Figure:
    """The run whose figure is the median (a failed run, if any failed); every run's
    value is kept in its details."""
    failed = [run for run in runs if run.value is None or run.error]
    if failed or len(runs) == 1:
        chosen = failed[0] if failed else runs[0]
    else:
        # Lower is better for latency, higher for throughput; the median is the same.
        chosen = sorted(runs, key=lambda run: run.value or 0.0)[(len(runs) - 1) // 2]
    if len(runs) > 1:
        chosen.details["runs"] = [run.value for run in runs]
    return chosen


def _with_parts(figure: Figure, native: NativeProfiler | None, name: str) -> Figure:
    """`figure`, with the server's CPU by part if perf recorded its runs."""
    shares = None if native is None else native.mean_shares(name)
    if shares is not None:
        figure.details["cpu_by_part"] = shares
    return figure


def _delivery_figure(
    figure: Figure, stats: dict[str, Any], expected: int, started_ns: int, held: int
) -> None:
    # Deliveries the sink was holding at the start had already arrived: not counted.
    seconds = max(stats["last_ns"] - started_ns, 1) / 1e9
    figure.value = (stats["count"] - held) / seconds if stats["count"] >= expected else None
    figure.details.update(
        {
            "expected": expected,
            "delivered": stats["count"],
            "distinct": stats["distinct"],
            "held_at_start": held,
            "seconds": seconds,
        }
    )
    if stats["count"] < expected:
        figure.error = f"only {stats['count']} of {expected} deliveries arrived in time"


def _routing_details(
    figure: Figure,
    stats: dict[str, Any],
    result: dict[str, Any],
    messages: int,
    groups: dict[str, list[str]],
    alone: list[str],
) -> None:
    """Who got what: each group must get every message once between its members (more
    only after a retry), each ungrouped receiver every message."""
    by_path: dict[str, int] = stats["by_path"]
    group_totals = {
        group: sum(by_path.get(f"/{member}", 0) for member in members)
        for group, members in groups.items()
    }
    alone_counts = {name: by_path.get(f"/{name}", 0) for name in alone}
    figure.details.update(
        {
            "messages": messages,
            "publish_rate": result["rate"],
            "publish_ok": result["ok"],
            "publish_sent": result["sent"],
            "publish_seconds": result["elapsed_s"],
            "group_totals": group_totals,
            "ungrouped": alone_counts,
            "per_receiver": by_path,
            "member_min": min(
                (by_path.get(f"/{m}", 0) for members in groups.values() for m in members),
                default=0,
            ),
        }
    )
    short = [
        name
        for name, count in (group_totals | alone_counts).items()
        if count < messages and figure.error is None
    ]
    if short:
        figure.error = f"{', '.join(short)} got fewer than the {messages:,} messages published"


def _answers(result: dict[str, Any]) -> str:
    other = ", ".join(f"{count:,} {status}s" for status, count in result["statuses"].items())
    return f"other answers: {other or 'none'}; {result['failures']} connections lost"


def _note_errors(figure: Figure, result: dict[str, Any], hint: str = "") -> None:
    problems = []
    if result["statuses"]:
        problems.append(f"non-200 answers {result['statuses']}{hint}")
    if result["failures"]:
        problems.append(f"{result['failures']} connections lost")
    if result["timed_out"]:
        problems.append("the load generator timed out")
    if problems:
        figure.error = "; ".join(problems)


def _percentile(sorted_values: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * percent // 100))
    return sorted_values[int(rank) - 1]


# Output.


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:,.0f} {unit}"


TABLE_HEADINGS = ("figure", "result", "floor", "verdict", "server µs", "db µs")


def render_table(figures: dict[str, Figure], header: str, publishers: int) -> str:
    """The figures, one row each, with the server's and the database's CPU per message
    (per delivery for the delivery figures) in the last two columns."""
    rows: list[tuple[str, ...]] = [TABLE_HEADINGS]

    def row(
        label: str, key: str, value: float | None, unit: str, figure: Figure, cpu: bool = True
    ) -> None:
        floor = FLOORS.get(key)
        verdict = floor.verdict(value) if floor else "-"
        if figure.error is not None and value is None:
            verdict = "ERROR"  # the line below the table says what went wrong
        d = figure.details
        server = _fmt_us(d.get("server_us_per_message")) if cpu else ""
        database = _fmt_us(d.get("database_us_per_message")) if cpu else ""
        floor_text = floor.text if floor else "-"
        rows.append((label, _fmt(value, unit), floor_text, verdict, server, database))

    for name, figure in figures.items():
        if name == "publish":
            label = f"publish, {publishers} publishers, durable"
            row(label, "publish", figure.value, figure.unit, figure)
        elif name.startswith("delivery_"):
            receivers = name.split("_")[1]
            noun = "receiver" if receivers == "1" else "receivers"
            row(f"delivery to {receivers} {noun}", name, figure.value, figure.unit, figure)
        elif name.startswith("stream_"):
            receivers = name.split("_")[1]
            noun = "receiver" if receivers == "1" else "receivers"
            label = f"delivery to {receivers} {noun}, publishing"
            row(label, name, figure.value, figure.unit, figure)
        elif name == "routing":
            d = figure.details
            label = f"routing to {d.get('groups_and_receivers', 'groups and receivers')}"
            row(label, name, figure.value, figure.unit, figure, cpu=False)
            row("  publish rate meanwhile", name, d.get("publish_rate"), "msg/s", figure)
        elif name == "batch":
            size = figure.details.get("batch_size", 0)
            row(f"batch publish, {size:,} per request", name, figure.value, figure.unit, figure)
        elif name == "flaky":
            row("a receiver failing 60% at random", name, figure.value, figure.unit, figure)
        elif name == "pull":
            label = f"pulled and acked, {PULL_BATCH} at a time"
            row(label, name, figure.value, figure.unit, figure)
        elif name == "latency":
            rate = figure.details.get("rate", 0)
            for p in ("p50", "p99"):
                value = figure.details.get(f"{p}_ms")
                label = f"latency {p} at {rate:,.0f} msg/s"
                row(label, f"latency_{p}_ms", value, "ms", figure, cpu=p == "p50")
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE_HEADINGS))]
    lines = [header, ""]
    for number, r in enumerate(rows):
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  "
            f"{r[3]:<{widths[3]}}  {r[4]:>{widths[4]}}  {r[5]:>{widths[5]}}".rstrip()
        )
        if number == 0:
            lines.append("-" * (sum(widths) + 2 * (len(widths) - 1)))
    lines.append("")
    for name, figure in figures.items():
        lines.append(f"{name}: {_describe(figure)}")
    return "\n".join(lines)


def _fmt_us(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _describe(figure: Figure) -> str:
    d = figure.details
    u = figure.usage
    parts: list[str] = []
    if figure.name == "publish" and d:
        parts.append(f"{d['ok']:,} of {d['sent']:,} accepted in {d['seconds']:.2f} s")
    elif figure.name == "batch" and d:
        parts.append(
            f"{d['requests']:,} batches of {d['batch_size']:,} ({d['messages']:,} messages) "
            f"from {d['connections']} connections in {d['seconds']:.2f} s, "
            f"{d['requests_per_second']:,.1f} requests/s"
        )
    elif figure.name.startswith(("delivery", "stream")) and d:
        parts.append(f"{d['delivered']:,} deliveries ({d['distinct']:,} distinct)")
        parts.append(f"in {d['seconds']:.2f} s")
        if "connect_ms" in d:
            parts.append(f"(receiver /connect took {d['connect_ms']:.0f} ms)")
    elif figure.name == "routing" and d:
        parts.append(f"{d['delivered']:,} deliveries ({d['distinct']:,} distinct)")
        parts.append(f"of {d['messages']:,} messages in {d['seconds']:.2f} s")
        parts.append(f"publish {d['publish_ok']:,} of {d['publish_sent']:,} accepted")
        groups = ", ".join(f"{g} {n:,}" for g, n in d["group_totals"].items())
        parts.append(f"per group {groups}; least-served member {d['member_min']:,}")
    elif figure.name == "flaky" and d:
        parts.append(
            f"{d['acknowledged']:,} acknowledged and {d['dead_lettered']:,} dead-lettered "
            f"of {d['messages']:,} in {d['seconds']:.1f} s"
        )
        did = ", ".join(f"{kind} {n:,}" for kind, n in d["receiver_did"].items())
        parts.append(f"the receiver's answers: {did}")
        parts.append(
            f"at most {d['most_hanging_at_once']} hanging at once "
            f"(--delivery-timeout {d['delivery_timeout_s']:g}s)"
        )
    elif figure.name == "pull" and d:
        parts.append(
            f"{d['messages']:,} messages pulled and acked {d['batch']} at a time "
            f"in {d['seconds']:.2f} s"
        )
    elif figure.name == "latency" and d:
        parts.append(f"{d['delivered']:,} of {d['sent']:,} delivered")
        if d["p90_ms"] is not None:
            parts.append(f"p90 {d['p90_ms']:.1f} ms, max {d['max_ms']:.1f} ms")
        parts.append(f"loadgen max lag {d['loadgen_max_lag_ms']:.1f} ms")
    if d:
        database = "" if u.database is None else f"database {u.database:.2f}, "
        parts.append(
            f"CPU cores: server {u.server:.2f}, {database}sink {u.sink:.2f}, "
            f"loadgen {u.loadgen:.2f}, others {u.others:.2f}"
        )
        per = d.get("server_us_per_message")
        if per is not None:
            noun = "delivery" if figure.name.startswith(("delivery", "stream")) else "message"
            db = d.get("database_us_per_message")
            in_db = "" if db is None else f", database {db:,.0f} µs"
            parts.append(f"CPU per {noun}: server {per:,.0f} µs{in_db}")
    if "cpu_by_part" in d:
        per_item = d.get("server_us_per_message")
        parts.append(f"server CPU by part (perf): {describe_parts(d['cpu_by_part'], per_item)}")
    if len(d.get("runs", [])) > 1:
        shown = ", ".join(_fmt(value, figure.unit) for value in d["runs"])
        parts.append(f"median of runs {shown}")
    if figure.error:
        parts.append(f"PROBLEM: {figure.error}")
    return "; ".join(parts)


def _git_commit() -> str:
    """The commit measured; MQPY_BENCH_COMMIT names it instead of asking git (for a run
    beside others' git work, or outside a checkout)."""
    named = os.environ.get("MQPY_BENCH_COMMIT")
    if named:
        return named
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, timeout=10
        ).stdout.decode()
        dirty = subprocess.run(
            # No optional locks: a status beside someone's commit must not take the index.
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return commit.strip() + (" (with uncommitted changes)" if dirty.strip() else "")


def _mqpy_source() -> str:
    """Where the broker under test is imported from (PYTHONPATH can point elsewhere)."""
    try:
        found = subprocess.run(
            [sys.executable, "-c", "import mqpy; print(mqpy.__file__)"],
            cwd=ROOT,
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return str(Path(found.stdout.decode().strip() or "unknown").parent.parent)


def _busy_now(seconds: float) -> float:
    """Cores in use on the whole machine over the next `seconds`."""
    before = machine_seconds()
    time.sleep(seconds)
    return (machine_seconds() - before) / seconds


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Benchmark mq-py: publish throughput, delivery throughput, latency.",
    )
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke check")
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated figures to measure, of {', '.join(PHASES)} (default: all)",
    )
    parser.add_argument(
        "--server-args",
        default="",
        help="extra `mqpy serve` flags, after the defaults "
        f"{' '.join(DEFAULT_SERVER_ARGS)} (later flags win); write --server-args='--jobs 64'",
    )
    parser.add_argument(
        "--store",
        default=None,
        metavar="URL",
        help="run every figure on a fresh database on this PostgreSQL server "
        "(postgresql://user@host:port/db; it must be allowed to CREATE DATABASE); "
        "default: a fresh SQLite data directory per figure",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="start a throwaway PostgreSQL cluster (Debian's packages, fsync on) for the "
        "run and use it as --store",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="run each broker as N processes on one fixed port (mqpy serve --processes N), "
        "on SQLite or on --store/--postgres",
    )
    parser.add_argument(
        "--publish-api",
        choices=["seed", "native"],
        default="seed",
        help="how the load publishes: seed (POST /send as a connected sender; default) or "
        "native (POST /v1/topics/TOPIC/messages, no connection: any node takes it)",
    )
    parser.add_argument("--receivers", type=int, default=16, help="receivers of the fan-out figure")
    parser.add_argument(
        "--publish-count",
        type=int,
        default=None,
        help="publish: requests, however long they take (default: 20,000 or 10 s)",
    )
    parser.add_argument(
        "--delivery-messages",
        type=int,
        default=None,
        help="delivery: deliveries per figure (default 20,000)",
    )
    parser.add_argument(
        "--latency-seconds", type=float, default=None, help="latency: seconds of load (default 10)"
    )
    parser.add_argument(
        "--flaky-messages",
        type=int,
        default=None,
        help="flaky: messages for the failing receiver (default 300; issue 10 tried 5,000)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS / "latest.json",
        help="where to write the figures as JSON (default: bench/results/latest.json)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="record the server with py-spy during each measured stretch, into DIR",
    )
    parser.add_argument(
        "--profile-format",
        choices=["flamegraph", "speedscope", "raw"],
        default="flamegraph",
        help="py-spy output format (raw: collapsed stacks, one per line)",
    )
    parser.add_argument(
        "--profile-native",
        action="store_true",
        help="sample each broker with Linux perf during each measured stretch and show "
        "its CPU by part: the Python interpreter, the kernel, SQLite, ...",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="measure each figure this many times and report the median run",
    )
    parser.add_argument(
        "--compare",
        default=None,
        metavar="[NAME=]COMMAND",
        help="also measure another broker that speaks the seed protocol, started by "
        "COMMAND with {port} where its port goes (on 127.0.0.1), on the figures "
        f"{', '.join(SEED_PHASES)}, alternating with mq-py; e.g. "
        "'mq-go=/tmp/mqgo/mq-go -port {port}'",
    )
    parser.add_argument("--keep", action="store_true", help="keep data directories and logs")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        parser.error(f"--only: unknown figure {unknown[0]!r}; choose from {', '.join(PHASES)}")
    args.phases = phases
    args.compare_name, args.compare_command = None, None
    if args.compare is not None:
        name, equals, command = args.compare.partition("=")
        if not equals or " " in name or not name:
            name, command = Path(shlex.split(args.compare)[0]).name, args.compare
        if "{port}" not in command:
            parser.error("--compare: the command must say where its port goes, as {port}")
        args.compare_name, args.compare_command = name, command
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.store is not None and args.postgres:
        parser.error("--store and --postgres both name a store: give one")
    if args.store is not None and not is_postgres_url(args.store):
        parser.error(
            "--store takes a PostgreSQL URL (postgresql://user@host:port/db); without it "
            "every figure runs on a fresh SQLite data directory"
        )
    server_args = shlex.split(args.server_args)
    try:
        named = processes_in(server_args)
    except ValueError as exc:
        parser.error(f"--server-args: {exc}")
    if args.processes is not None and args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.processes is not None and named is None:
        server_args += ["--processes", str(args.processes)]
    args.server_arg_list = server_args
    # Without a number, mqpy serve runs its default, `auto`: as many as it will.
    args.process_count = named or args.processes or Settings().process_count
    return args


def processes_in(server_args: Sequence[str]) -> int | None:
    """The `--processes N` among broker flags (the last one wins, as in mqpy serve)."""
    found: int | None = None
    for number, arg in enumerate(server_args):
        value: str | None = None
        if arg in ("--processes", "-processes"):
            value = server_args[number + 1] if number + 1 < len(server_args) else ""
        elif arg.startswith(("--processes=", "-processes=")):
            value = arg.split("=", 1)[1]
        if value is not None:
            try:
                count = parse_processes(value)
            except ValueError:
                raise ValueError(
                    f"--processes takes a number of processes or auto, not {value!r}"
                ) from None
            found = Settings(processes=count).process_count
    return found


def open_stores(args: argparse.Namespace) -> Stores:
    if args.postgres:
        return ThrowawayPostgres(keep=args.keep)
    if args.store is not None:
        return PostgresStores.at(args.store, keep=args.keep)
    return SQLiteStores()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # On SIGTERM, unwind as on Ctrl-C, so every broker, sink and profiler is stopped.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    plan = Plan.quick() if args.quick else Plan()
    overrides = {
        "receivers": args.receivers,
        "publish_count": args.publish_count,
        "delivery_messages": args.delivery_messages,
        "latency_seconds": args.latency_seconds,
        "flaky_messages": args.flaky_messages,
    }
    plan = Plan(**{**asdict(plan), **{k: v for k, v in overrides.items() if v is not None}})
    if args.publish_count is not None:
        # A count asked for is a count measured, not cut short by the default duration.
        plan = Plan(**{**asdict(plan), "publish_seconds": max(plan.publish_seconds, 600.0)})
    load_before = os.getloadavg()
    source = _mqpy_source()
    elsewhere = "" if source == str(ROOT / "src") else f" (but mqpy from {source})"
    processes = args.process_count
    profiler = Profiler(args.profile, args.profile_format, subprocesses=processes > 1)
    if args.profile_native:
        require_perf()
    try:
        stores = open_stores(args)
    except StoreError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    try:
        return _measure(args, plan, stores, profiler, load_before, elsewhere)
    finally:
        stores.close()


def _measure(
    args: argparse.Namespace,
    plan: Plan,
    stores: Stores,
    profiler: Profiler,
    load_before: tuple[float, float, float],
    elsewhere: str,
) -> int:
    processes = args.process_count
    # The load average trails by a minute (and counts our own last run); what the
    # machine does right now is what matters.
    busy = _busy_now(2.0)
    if busy > 0.3:
        print(
            f"note: the machine is already busy ({busy:.2f} of {os.cpu_count()} cores in use); "
            "figures may come out low",
            file=sys.stderr,
        )
    header = (
        f"mq-py bench {time.strftime('%Y-%m-%d %H:%M')}, commit {_git_commit()}{elsewhere}, "
        f"{os.cpu_count()} CPUs, load average {load_before[0]:.2f}, "
        f"{busy:.2f} cores busy just before, Python {platform.python_version()}"
        f"{', uvloop' if _has_uvloop() else ''}\n"
        f"store: {stores.label}\n"
        f"broker: {processes} process{'es' if processes > 1 else ''}, publishing through "
        f"{'/send' if args.publish_api == 'seed' else '/v1/topics/{topic}/messages'}; "
        "server flags: "
        f"{' '.join([*DEFAULT_SERVER_ARGS, *args.server_arg_list]) or '(none: the defaults)'}"
        f"{' (quick)' if args.quick else ''}"
    )
    if args.compare_command is not None:
        header += f"\ncompared with {args.compare_name}: {args.compare_command}"
    workdir = Path(tempfile.mkdtemp(prefix="mqpy-bench-"))
    bench = Bench(
        plan,
        args.server_arg_list,
        workdir,
        profiler,
        stores,
        processes,
        args.publish_api,
    )
    steps = figure_steps(bench)
    # The other broker, if any, on the figures it can take, each right after mq-py's:
    # both see the machine as it is at that moment.
    # --profile-native: perf on both brokers, each its own record of their shares.
    profiler.native = NativeProfiler(workdir, "mqpy") if args.profile_native else None
    their_native = (
        NativeProfiler(workdir, args.compare_name or "other") if args.profile_native else None
    )
    their_profiler = Profiler(None, "raw", native=their_native)
    theirs = Bench(plan, [], workdir, their_profiler, foreign=args.compare_command)
    their_steps = figure_steps(theirs)
    figures: dict[str, Figure] = {}
    compared: dict[str, Figure] = {}
    try:
        for phase in args.phases:
            for index, (name, step) in enumerate(steps[phase]):
                runs: list[Figure] = []
                their_runs: list[Figure] = []
                compare = args.compare_command is not None and phase in SEED_PHASES
                for number in range(args.repeat):
                    of = f" ({number + 1} of {args.repeat})" if args.repeat > 1 else ""
                    print(f"measuring {name}{of} ...", file=sys.stderr)
                    runs.append(_attempt(name, step))
                    if compare:
                        print(f"measuring {name}{of} on {args.compare_name} ...", file=sys.stderr)
                        their_runs.append(_attempt(name, their_steps[phase][index][1]))
                figures[name] = _with_parts(_median(runs), profiler.native, name)
                if their_runs:
                    compared[name] = _with_parts(_median(their_runs), their_profiler.native, name)
    finally:
        stop_children()
        if args.keep:
            print(f"data directories and logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    table = render_table(figures, header, plan.publishers)
    print(table)
    if compared:
        print()
        print(render_comparison(figures, compared, args.compare_name or "other"))
    _write_json(args.output, plan, args, figures, load_before, stores.label, busy, compared)
    print(f"\nfigures written to {args.output}")
    return 0


def figure_steps(bench: Bench) -> dict[str, list[tuple[str, Callable[[], Figure]]]]:
    """Per phase of --only, its figures: each one's name and how `bench` measures it."""
    receivers = bench.plan.receivers
    return {
        "publish": [("publish", bench.publish)],
        "delivery": [
            ("delivery_1", bench.delivery_to_one),
            (f"delivery_{receivers}", bench.delivery_to_many),
        ],
        "stream": [
            ("stream_1", lambda: bench.streamed(1)),
            (f"stream_{receivers}", lambda: bench.streamed(receivers)),
        ],
        "latency": [("latency", bench.latency)],
        "routing": [("routing", bench.routing)],
        "batch": [("batch", bench.batch_publish)],
        "flaky": [("flaky", bench.flaky_receiver)],
        "pull": [("pull", bench.pulled)],
    }


def _attempt(name: str, step: Callable[[], Figure]) -> Figure:
    try:
        return step()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        return Figure(name, error=str(exc))


def render_comparison(ours: dict[str, Figure], theirs: dict[str, Figure], name: str) -> str:
    """mq-py's figures beside the other broker's, and mq-py's as a multiple of theirs
    (for latency, theirs divided by ours: above 1 is mq-py ahead on every row)."""
    rows: list[tuple[str, ...]] = [("figure", "mq-py", name, "mq-py ahead by")]
    for key, figure in theirs.items():
        mine = ours[key]
        if key == "latency":
            for p in ("p50", "p99"):
                a, b = mine.details.get(f"{p}_ms"), figure.details.get(f"{p}_ms")
                ratio = None if not a or b is None else b / a
                rows.append((f"latency {p} (ms)", _fmt(a, "ms"), _fmt(b, "ms"), _ratio(ratio)))
            continue
        ratio = None if not figure.value or mine.value is None else mine.value / figure.value
        label = {"publish": "publish"}.get(key) or _comparison_label(key)
        rows.append(
            (label, _fmt(mine.value, mine.unit), _fmt(figure.value, figure.unit), _ratio(ratio))
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
        for r in rows
    ]
    lines.insert(1, "-" * (sum(widths) + 6))
    lines.append("")
    lines.extend(f"{key} on {name}: {_describe(figure)}" for key, figure in theirs.items())
    return "\n".join(lines)


def _comparison_label(key: str) -> str:
    kind, receivers = key.split("_", 1)
    return f"delivery to {receivers}" + (", publishing" if kind == "stream" else "")


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _write_json(
    path: Path,
    plan: Plan,
    args: argparse.Namespace,
    figures: dict[str, Figure],
    load_before: tuple[float, float, float],
    store: str,
    busy_before: float,
    compared: dict[str, Figure],
) -> None:
    document = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": _git_commit(),
        "mqpy_source": _mqpy_source(),
        "machine": {
            "cpus": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": os.getloadavg(),
            "cores_busy_before": busy_before,
            "python": platform.python_version(),
            "uvloop": _has_uvloop(),
        },
        "plan": asdict(plan),
        "quick": args.quick,
        "server_args": [*DEFAULT_SERVER_ARGS, *args.server_arg_list],
        "store": store,
        "processes": args.process_count,
        "publish_api": args.publish_api,
        "floors": {name: asdict(floor) for name, floor in FLOORS.items()},
        "figures": {
            name: {
                **asdict(figure),
                "usage": {**asdict(figure.usage), "others": figure.usage.others},
                "verdict": FLOORS[name].verdict(figure.value) if name in FLOORS else None,
            }
            for name, figure in figures.items()
        },
    }
    if compared:
        document["compared_with"] = {
            "name": args.compare_name,
            "command": args.compare_command,
            "figures": {name: asdict(figure) for name, figure in compared.items()},
        }
    if "latency" in figures:
        value = figures["latency"].details.get("p99_ms")
        document["figures"]["latency"]["verdict"] = FLOORS["latency_p99_ms"].verdict(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
