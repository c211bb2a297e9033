"""HTTPS for tests: a private CA made on the spot (trustme), with a certificate for the
broker to serve, and a receiver served over HTTPS with a certificate from such a CA."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from aiohttp import web

from tests.support.receiver import Behaviour, Receiver, accept

# What the certificates are issued for: the addresses tests connect to.
HOSTS = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class Authority:
    """A private CA and one certificate it issued for HOSTS, written as PEM files."""

    ca: trustme.CA
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA (and only it)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context


def make_authority(directory: Path, name: str = "ca") -> Authority:
    """A fresh CA in `directory`, with a server certificate for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert(*HOSTS)
    ca_pem = directory / f"{name}.pem"
    cert_pem = directory / f"{name}-server-cert.pem"
    key_pem = directory / f"{name}-server-key.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    issued.cert_chain_pems[0].write_to_path(str(cert_pem))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_pem), append=True)
    issued.private_key_pem.write_to_path(str(key_pem))
    return Authority(ca, ca_pem, cert_pem, key_pem)


class HttpsReceiver(Receiver):
    """A Receiver served over HTTPS on 127.0.0.1 with a certificate from `authority`."""

    def __init__(
        self, authority: Authority, behaviour: Behaviour = accept, path: str = "/hook"
    ) -> None:
        super().__init__(behaviour, path)
        self._context = authority.server_context()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}{self.path}"

    async def start(self, port: int = 0) -> HttpsReceiver:
        app = web.Application()
        app.router.add_post(self.path, self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port or self.port, ssl_context=self._context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self
