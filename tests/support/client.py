"""The seed protocol from a client's side, as plain HTTP calls."""

from __future__ import annotations

from typing import Any

import aiohttp


class SeedClient:
    """Speaks the MQ Go protocol to one server and checks each answer is a 200."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def post(self, path: str, body: Any) -> tuple[int, dict[str, Any]]:
        async with self.http.post(self.base_url + path, json=body) as response:
            return response.status, await response.json(content_type=None)

    async def _ok(self, path: str, body: Any) -> dict[str, Any]:
        status, data = await self.post(path, body)
        assert status == 200, (path, status, data)
        return data

    async def connect_receiver(self, url: str, **fields: Any) -> int:
        """`fields`: the optional members of /connect, such as `start_at`."""
        data = await self._ok("/connect", {"ClientURL": url, "mode": "receive", **fields})
        return int(data["id"])

    async def connect_sender(self) -> int:
        data = await self._ok("/connect", {"ClientURL": "", "mode": "send"})
        return int(data["id"])

    async def send(self, sender_id: int, body: str) -> dict[str, Any]:
        return await self._ok("/send", {"id": sender_id, "body": body})

    async def disconnect(self, connection_id: int) -> dict[str, Any]:
        return await self._ok("/disconnect", {"id": connection_id})

    async def dead_letters(self) -> list[dict[str, Any]]:
        async with self.http.get(self.base_url + "/v1/dead-letters") as response:
            assert response.status == 200
            data = await response.json()
            return list(data["dead_letters"])

    async def redrive(self, receiver_id: int | None = None) -> int:
        body = {} if receiver_id is None else {"receiver_id": receiver_id}
        data = await self._ok("/v1/dead-letters/redrive", body)
        return int(data["redriven"])
