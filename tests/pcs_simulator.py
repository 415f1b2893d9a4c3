"""In-process Intel PCS/PCCS v4 and AMD KDS simulators serving the real vector files.

They answer on the real URL paths with the real headers (issuer chains as URL-encoded PEM), 404
for what they do not hold, and have knobs for failures: 5xx answers, timeouts, slow or dribbled
bodies, oversized bodies. Use them through ``httpx.MockTransport`` (:meth:`transport`) or as a real
HTTP(S) server on 127.0.0.1 in a thread (:meth:`serve`). Never anything beyond loopback.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509

__all__ = ["VECTORS", "KdsSimulator", "PcsSimulator", "Reply", "case_json"]

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors"
INTEL_CDP_HOST = "certificates.trustedservices.intel.com"
INTEL_CDP_PATH = "/IntelSGXRootCA.der"


def case_json(case: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / case / "case.json").read_text())
    return data


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def _encode_chain(pem: bytes, safe: str) -> str:
    return urllib.parse.quote(pem.decode("ascii"), safe=safe)


class _Simulator(ABC):
    """Request log, failure knobs and the two ways of serving, shared by PCS and KDS."""

    def __init__(self) -> None:
        self.requests: list[str] = []  # "host/path?query" of every request, in order
        self.fail_next = 0  # answer this many upcoming requests with `fail_status`
        self.fail_status = 500
        self.always_fail = False
        self.timeouts_next = 0  # MockTransport only: raise httpx.ReadTimeout this many times
        self.delay = 0.0  # seconds to wait before answering
        self.dribble = 0.0  # real server: seconds between 1-byte writes of the body
        self.oversize: int | None = None  # answer 200 with this many bytes instead
        self.chunked = False  # no Content-Length (MockTransport: a byte stream; server: EOF)
        self._lock = threading.Lock()
        self._n = 0

    @abstractmethod
    def respond(self, host: str, path: str, query: dict[str, str]) -> Reply:
        """The answer to one GET (after the failure knobs had their say)."""

    def _answer(self, netloc: str, path: str, raw_query: str) -> Reply:
        with self._lock:
            self._n += 1
            n = self._n
            self.requests.append(f"{netloc}{path}" + (f"?{raw_query}" if raw_query else ""))
            failing = self.always_fail or self.fail_next > 0
            if self.fail_next > 0:
                self.fail_next -= 1
        if self.delay:
            time.sleep(self.delay)
        rid = {"Request-ID": f"sim-{n}"}
        if failing:
            return Reply(self.fail_status, b"simulated failure", {"Error-Code": "Sim", **rid})
        if self.oversize is not None:
            return Reply(200, b"x" * self.oversize, rid)
        query = dict(urllib.parse.parse_qsl(raw_query, keep_blank_values=True))
        reply = self.respond(urllib.parse.urlsplit(f"//{netloc}").hostname or "", path, query)
        reply.headers.update(rid)
        return reply

    # -- httpx.MockTransport ----------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        def handler(request: httpx.Request) -> httpx.Response:
            if self.timeouts_next > 0:
                with self._lock:
                    self.timeouts_next -= 1
                    self.requests.append(f"{request.url.netloc.decode()}{request.url.path}")
                raise httpx.ReadTimeout("simulated timeout", request=request)
            reply = self._answer(
                request.url.netloc.decode(), request.url.path, request.url.query.decode("ascii")
            )
            if self.chunked:
                body = reply.body

                def chunks() -> Iterator[bytes]:
                    for i in range(0, len(body), 64 * 1024):
                        yield body[i : i + 64 * 1024]

                return httpx.Response(reply.status, headers=reply.headers, content=chunks())
            return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

        return httpx.MockTransport(handler)

    # -- a real server on 127.0.0.1 ---------------------------------------------------------

    @contextmanager
    def serve(self, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
        """Serve on 127.0.0.1 (an ephemeral port) in a thread; yields the base URL."""
        sim = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                reply = sim._answer(self.headers.get("Host", "?"), parts.path, parts.query)
                try:
                    self.send_response(reply.status)
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    if not sim.chunked:
                        self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    if sim.dribble:
                        for i in range(len(reply.body)):
                            self.wfile.write(reply.body[i : i + 1])
                            self.wfile.flush()
                            time.sleep(sim.dribble)
                    else:
                        self.wfile.write(reply.body)
                except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    pass  # the client stopped reading (size limit, deadline): expected

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        scheme = "http"
        if tls is not None:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(certfile=str(tls[0]), keyfile=str(tls[1]))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
            scheme = "https"
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"{scheme}://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


class PcsSimulator(_Simulator):
    """Intel PCS / PCCS API v4 as of one vector case: serves that case's collateral.

    ``pccs=True`` adds the PCCS-only ``rootcacrl`` route; the Root CA CRL is always also at Intel's
    CRL distribution point (``certificates.trustedservices.intel.com``, MockTransport only).
    """

    def __init__(self, case: str, *, pccs: bool = True) -> None:
        super().__init__()
        self.dir = VECTORS / case
        meta = case_json(case)
        self.tee: str = meta["tee"]
        self.fmspc: str = meta["key_claims"]["fmspc"].lower()
        leaf = x509.load_pem_x509_certificates(self.file("pck_crl_issuer_chain.pem"))[0]
        cn = str(leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)
        self.ca = "processor" if "Processor" in cn else "platform"
        self.serve_rootcacrl = pccs
        self.rootcacrl_hex = False  # some PCCS versions answer hex text
        self.legacy_tcb_header = False  # SGX-TCB-Info-Issuer-Chain instead of TCB-Info-...
        self.chain_safe = ""  # characters left unescaped in chain headers ("+/=" like some PCCS)
        self.omit_chain = False

    def file(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def _chain(self, header: str, name: str) -> dict[str, str]:
        if self.omit_chain:
            return {}
        return {header: _encode_chain(self.file(name), self.chain_safe)}

    def respond(self, host: str, path: str, query: dict[str, str]) -> Reply:
        if host == INTEL_CDP_HOST:
            if path == INTEL_CDP_PATH:
                return Reply(
                    200, self.file("root_ca_crl.der"), {"Content-Type": "application/pkix-crl"}
                )
            return Reply(404)
        parts = path.split("/")  # "", tee, "certification", "v4", endpoint...
        if (
            len(parts) < 5
            or parts[2:4] != ["certification", "v4"]
            or parts[1] not in ("sgx", "tdx")
        ):
            return Reply(404, b"no such route")
        tee, endpoint = parts[1], "/".join(parts[4:])
        json_type = {"Content-Type": "application/json"}
        if endpoint == "tcb":
            fmspc = query.get("fmspc", "")
            if len(fmspc) != 12:
                return Reply(400, b"bad fmspc", {"Error-Code": "InvalidRequestSyntax"})
            if tee != self.tee or fmspc.lower() != self.fmspc:
                return Reply(404, b"", {"Error-Code": "NotFound", "Error-Message": "No TCB info"})
            header = (
                "SGX-TCB-Info-Issuer-Chain" if self.legacy_tcb_header else "TCB-Info-Issuer-Chain"
            )
            chain = self._chain(header, "tcb_info_issuer_chain.pem")
            return Reply(200, self.file("tcb_info.json"), {**json_type, **chain})
        if endpoint == "qe/identity" and tee == self.tee:
            chain = self._chain("SGX-Enclave-Identity-Issuer-Chain", "qe_identity_issuer_chain.pem")
            return Reply(200, self.file("qe_identity.json"), {**json_type, **chain})
        if endpoint == "pckcrl" and tee == "sgx":
            ca = query.get("ca", "")
            if ca not in ("processor", "platform"):
                return Reply(400, b"bad ca")
            if ca != self.ca or query.get("encoding") != "der":
                return Reply(404)
            chain = self._chain("SGX-PCK-CRL-Issuer-Chain", "pck_crl_issuer_chain.pem")
            return Reply(
                200, self.file("pck_crl.der"), {"Content-Type": "application/pkix-crl", **chain}
            )
        if endpoint == "rootcacrl" and tee == "sgx" and self.serve_rootcacrl:
            body = self.file("root_ca_crl.der")
            return Reply(200, body.hex().encode() if self.rootcacrl_hex else body)
        return Reply(404)


class KdsSimulator(_Simulator):
    """AMD KDS for one SNP vector case: the VCEK only for the case's chip id and TCB levels.

    What it expects comes from ``case.json`` (chip_id, reported_tcb_decoded), not from the report.
    """

    def __init__(self, case: str, product: str) -> None:
        super().__init__()
        self.dir = VECTORS / case
        meta = case_json(case)
        claims = meta["key_claims"]
        self.product = product
        self.chip_id: str = claims["chip_id"].lower()
        tcb = claims["reported_tcb_decoded"]
        self.expected = {
            "blSPL": tcb["bootloader"],
            "teeSPL": tcb["tee"],
            "snpSPL": tcb["snp"],
            "ucodeSPL": tcb["microcode"],
        }
        self.vlek = claims["signing_key"] == "VLEK"

    def respond(self, host: str, path: str, query: dict[str, str]) -> Reply:
        parts = path.split("/")  # "", vcek|vlek, "v1", product, hwid|cert_chain
        if len(parts) != 5 or parts[2] != "v1" or parts[3] != self.product:
            return Reply(404, b"unknown product or route")
        key, last = parts[1], parts[4]
        if last == "cert_chain":
            if key == ("vlek" if self.vlek else "vcek"):
                return Reply(200, (self.dir / "cert_chain.pem").read_bytes())
            return Reply(404)
        if key != "vcek" or self.vlek:
            return Reply(404)
        try:
            levels = {k: int(v) for k, v in query.items()}
        except ValueError:
            return Reply(400, b"bad SPL")
        if last.lower() != self.chip_id or levels != self.expected:
            return Reply(404, b"no such VCEK")
        return Reply(
            200,
            (self.dir / "vcek.der").read_bytes(),
            {"Content-Type": "application/x-x509-ca-cert"},
        )
