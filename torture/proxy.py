"""A TCP proxy the torture suite controls, between a broker node and PostgreSQL: `cut()`
stops every byte both ways (and holds new connections unanswered), as a network
partition does; `restore()` lets them flow again. What was sent meanwhile is held, not
dropped, as TCP would retransmit it once the network is back."""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 64 * 1024


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> None:
        self._open.clear()

    def restore(self) -> None:
        self._open.set()

    async def close(self) -> None:
        """Stop listening and close every connection (its pumps then end)."""
        if self._server is not None:
            self._server.close()
        self._open.set()  # a connection waiting for the network sees it closed instead
        for writer in list(self._writers):
            writer.close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5.0)

    async def _serve(
        self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(client)
        try:
            await self._open.wait()
            server_reader, server = await asyncio.open_connection(*self.upstream)
            self._writers.add(server)
            try:
                await asyncio.gather(
                    self._pump(client_reader, server), self._pump(server_reader, client)
                )
            finally:
                server.close()
                self._writers.discard(server)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            client.close()
            self._writers.discard(client)
            self._tasks.discard(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(CHUNK):
            await self._open.wait()
            sink.write(data)
            await sink.drain()
        with contextlib.suppress(OSError):
            sink.write_eof()
