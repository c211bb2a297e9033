"""TLS both ways, with certificates the test makes (trustme): the broker serving HTTPS
with --tls-cert/--tls-key, and deliveries to an HTTPS receiver whose certificate comes
from a private CA, trusted only with --receiver-ca."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ServerFactory
from tests.support.client import SeedClient
from tests.support.load import FAST_RETRIES, wait_until
from tests.support.server import ServerProcess
from tests.support.tls import Authority, HttpsReceiver, make_authority


@pytest.fixture
def authority(tmp_path: Path) -> Authority:
    return make_authority(tmp_path / "pki", "broker")


@pytest.fixture
async def trusting_http(authority: Authority) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that trusts the test's CA and nothing else."""
    connector = aiohttp.TCPConnector(ssl=authority.client_context())
    async with aiohttp.ClientSession(connector=connector) as session:
        yield session


async def test_the_server_answers_https_for_a_client_trusting_its_ca(
    start_server: ServerFactory,
    authority: Authority,
    trusting_http: aiohttp.ClientSession,
) -> None:
    server = start_server(
        "--tls-cert", str(authority.cert_pem), "--tls-key", str(authority.key_pem)
    )
    assert server.url.startswith("https://127.0.0.1:"), server.log
    assert re.search(r"listening on https://", server.log), server.log

    async with trusting_http.get(server.url + "/dashboard") as response:
        assert response.status == 200
    # The seed protocol works unchanged over HTTPS.
    client = SeedClient(trusting_http, server.url)
    sender = await client.connect_sender()
    await client.send(sender, "over TLS")
    async with trusting_http.get(server.url.replace("127.0.0.1", "localhost") + "/dashboard") as r:
        assert r.status == 200


async def test_plain_http_to_the_https_port_fails(
    start_server: ServerFactory, authority: Authority, http: aiohttp.ClientSession
) -> None:
    server = start_server(
        "--tls-cert", str(authority.cert_pem), "--tls-key", str(authority.key_pem)
    )
    plain = server.url.replace("https://", "http://", 1)
    with pytest.raises(aiohttp.ClientError):
        async with http.get(plain + "/dashboard") as response:
            pytest.fail(f"a plain HTTP request to the HTTPS port was answered {response.status}")
    assert server.running


async def test_a_client_not_trusting_the_ca_refuses_the_server(
    start_server: ServerFactory, authority: Authority, http: aiohttp.ClientSession
) -> None:
    server = start_server(
        "--tls-cert", str(authority.cert_pem), "--tls-key", str(authority.key_pem)
    )
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        async with http.get(server.url + "/dashboard") as response:
            pytest.fail(f"an untrusted certificate was accepted ({response.status})")
    assert server.running


def failed_attempts(server: ServerProcess) -> list[str]:
    return [line for line in server.lines if "failed (attempt" in line]


async def test_an_https_receiver_from_a_private_ca_needs_receiver_ca(
    start_server: ServerFactory,
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    receiver_ca = make_authority(tmp_path / "receiver-pki", "receivers")
    receiver = await HttpsReceiver(receiver_ca).start()
    servers: list[ServerProcess] = []
    try:
        first = start_server(*FAST_RETRIES)
        servers.append(first)
        client = SeedClient(http, first.url)
        await client.connect_receiver(receiver.url)
        sender = await client.connect_sender()
        sent = (await client.send(sender, "through a private CA"))["message_id"]

        # Without --receiver-ca the receiver's certificate is not trusted: every
        # attempt fails the TLS handshake and is retried.
        await wait_until(
            lambda: len(failed_attempts(first)) >= 2, 20, "two failed delivery attempts"
        )
        assert all("certificate verify failed" in line for line in failed_attempts(first)), (
            first.log
        )
        assert receiver.attempts == []
        assert first.terminate() == 0

        # The same delivery, once the broker trusts the receivers' CA.
        second = start_server(
            *FAST_RETRIES, "--receiver-ca", str(receiver_ca.ca_pem), data_dir=first.data_dir
        )
        servers.append(second)
        [record] = await receiver.wait_for(1, timeout=20)
        assert record.message_id == sent
        assert record.text == "through a private CA"
        assert failed_attempts(second) == []
    finally:
        # The brokers go first: an HTTPS connection a broker still holds would outlive
        # the receiver half-closed (asyncio waits for the peer's close_notify) and be
        # reported as an unclosed transport once this test's event loop is gone.
        for server in servers:
            server.kill()
        await receiver.stop()
