"""Serve a simulated platform's collateral under the Intel PCS/PCCS API v4 paths.

    GET /{sgx,tdx}/certification/v4/tcb?fmspc=<hex>      TCB-Info-Issuer-Chain
    GET /{sgx,tdx}/certification/v4/qe/identity         SGX-Enclave-Identity-Issuer-Chain
    GET /{sgx,tdx}/certification/v4/pckcrl?ca=platform[&encoding=der]   SGX-PCK-CRL-Issuer-Chain
    GET /{sgx,tdx}/certification/v4/rootcacrl            (PCCS route; DER)

Issuer chains travel as percent-encoded PEM in the headers, as Intel's PCS sends them. The server
uses only the standard library (``http.server``) and listens on loopback unless told otherwise.
Collateral is re-signed when it is older than :data:`REFRESH` so that it never expires while
served.
"""

from __future__ import annotations

import threading
import urllib.parse
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.collateral.bundle import CollateralBundle
from nacre.sim.platform import SimPlatform, SimTee

__all__ = ["REFRESH", "CollateralServer", "make_server"]

#: Served collateral is re-signed after this long.
REFRESH: Final = timedelta(hours=1)
_PREFIX: Final = "/certification/v4/"


def _encode_chain(pem: bytes) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe="")


class CollateralServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the platform and its current bundles."""

    daemon_threads = True

    def __init__(self, platform: SimPlatform, address: tuple[str, int]) -> None:
        super().__init__(address, _Handler)
        self.platform = platform
        self._lock = threading.Lock()
        self._bundles: dict[str, tuple[datetime, CollateralBundle]] = {}

    @property
    def url(self) -> str:
        host, port = self.server_address[0], self.server_address[1]
        shown = f"[{host}]" if isinstance(host, str) and ":" in host else str(host)
        return f"http://{shown}:{port}"

    def bundle(self, tee: SimTee) -> CollateralBundle:
        now = datetime.now(UTC)
        with self._lock:
            cached = self._bundles.get(tee)
            if cached is None or now - cached[0] > REFRESH:
                cached = (now, self.platform.bundle(tee, now=now))
                self._bundles[tee] = cached
            return cached[1]


class _Handler(BaseHTTPRequestHandler):
    server: CollateralServer
    server_version = "nacre-sim-pcs/1"

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the CLI prints its own line per start-up, not per request."""

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode() + b"\n", "text/plain; charset=utf-8")

    def do_GET(self) -> None:
        parts = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(parts.query))
        path = parts.path.rstrip("/")
        tee_name, _, rest = path.lstrip("/").partition("/")
        if tee_name not in ("sgx", "tdx") or not ("/" + rest).startswith(_PREFIX):
            self._error(404, f"no such route: {parts.path}")
            return
        tee: SimTee = "sgx" if tee_name == "sgx" else "tdx"
        route = ("/" + rest)[len(_PREFIX) :]
        bundle = self.server.bundle(tee)
        files = bundle.files
        if route == "tcb":
            fmspc = query.get("fmspc", "")
            if fmspc.lower() != self.server.platform.fmspc.hex():
                self._error(404, f"no TCB info for FMSPC {fmspc or '(none)'}")
                return
            self._send(
                200,
                files["tcb_info.json"],
                "application/json",
                {"TCB-Info-Issuer-Chain": _encode_chain(files["tcb_info_issuer_chain.pem"])},
            )
        elif route == "qe/identity":
            self._send(
                200,
                files["qe_identity.json"],
                "application/json",
                {
                    "SGX-Enclave-Identity-Issuer-Chain": _encode_chain(
                        files["qe_identity_issuer_chain.pem"]
                    )
                },
            )
        elif route == "pckcrl":
            if query.get("ca", "").lower() != "platform":
                self._error(404, "the simulated platform has only a PCK Platform CA (ca=platform)")
                return
            crl = files["pck_crl.der"]
            if query.get("encoding") == "der":
                body, ctype = crl, "application/pkix-crl"
            else:
                pem = x509.load_der_x509_crl(crl).public_bytes(Encoding.PEM)
                body, ctype = pem, "application/x-pem-file"
            self._send(
                200,
                body,
                ctype,
                {"SGX-PCK-CRL-Issuer-Chain": _encode_chain(files["pck_crl_issuer_chain.pem"])},
            )
        elif route == "rootcacrl":
            self._send(200, files["root_ca_crl.der"], "application/pkix-crl")
        else:
            self._error(404, f"no such route: {parts.path}")


def make_server(
    platform: SimPlatform, host: str = "127.0.0.1", port: int = 8081
) -> CollateralServer:
    """A server bound to ``host:port`` (port 0: any free port); call ``serve_forever()``."""
    return CollateralServer(platform, (host, port))
