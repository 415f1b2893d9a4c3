"""Intel PCS / PCCS API v4 client: TCB info, QE identity, PCK CRL and the Intel SGX Root CA CRL.

Works against Intel's PCS (``https://api.trustedservices.intel.com``, the default) and against a
PCCS (``https://localhost:8081`` and the like), which serves the same v4 paths::

    GET {base}/{sgx|tdx}/certification/v4/tcb?fmspc=<12 hex>   TCB-Info-Issuer-Chain
                                                               (older: SGX-TCB-Info-Issuer-Chain)
    GET {base}/{sgx|tdx}/certification/v4/qe/identity          SGX-Enclave-Identity-Issuer-Chain
    GET {base}/sgx/certification/v4/pckcrl?ca=processor|platform&encoding=der
                                                               SGX-PCK-CRL-Issuer-Chain
    GET {base}/sgx/certification/v4/rootcacrl                  (PCCS only; hex or DER)

Intel's PCS has no ``rootcacrl`` route: the Root CA CRL is at the CRL distribution point of the root
certificate (``https://certificates.trustedservices.intel.com/IntelSGXRootCA.der``). On a PCCS the
``rootcacrl`` route is tried first, then the distribution point.

Bodies are kept exactly as served (signatures cover the served bytes; a CRL may come as DER, PEM or
hex, which :func:`nacre.collateral.certs.load_crl` reads). Nothing fetched is trusted: every item is
verified against the trust roots when it is used. See :mod:`nacre.collateral._http` for the
transport rules (TLS always verified, timeouts, size limit, bounded retries).
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

import httpx
from cryptography import x509

from nacre.collateral._http import Fetched, HttpGetter, Request, ServiceClient, check_url
from nacre.errors import CollateralFetchError, UsageError
from nacre.limits import (
    FETCH_BACKOFF_SECONDS,
    FETCH_DEADLINE_SECONDS,
    FETCH_RETRIES,
    FETCH_TIMEOUT_SECONDS,
    MAX_FETCH_BYTES,
)

__all__ = [
    "INTEL_PCS_URL",
    "INTEL_ROOT_CA_CRL_URL",
    "PCCS_DEFAULT_URL",
    "CaKind",
    "DcapTee",
    "Fetched",
    "PcsClient",
    "Request",
    "crl_distribution_point",
]

#: Intel's Provisioning Certification Service.
INTEL_PCS_URL: Final = "https://api.trustedservices.intel.com"
#: Where a PCCS listens by default (its own TLS certificate: pass ``ca_bundle``).
PCCS_DEFAULT_URL: Final = "https://localhost:8081"
#: The CRL distribution point in the Intel SGX Root CA certificate.
INTEL_ROOT_CA_CRL_URL: Final = "https://certificates.trustedservices.intel.com/IntelSGXRootCA.der"

DcapTee = Literal["sgx", "tdx"]
CaKind = Literal["processor", "platform"]
Service = Literal["pcs", "pccs"]
Update = Literal["standard", "early"]

_TCB_CHAIN_HEADERS: Final = ("TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain")
_QE_CHAIN_HEADERS: Final = ("SGX-Enclave-Identity-Issuer-Chain",)
_CRL_CHAIN_HEADERS: Final = ("SGX-PCK-CRL-Issuer-Chain",)
_HEX = frozenset("0123456789abcdefABCDEF")


def _fmspc_hex(fmspc: bytes | str) -> str:
    text = fmspc.hex() if isinstance(fmspc, bytes) else fmspc
    if len(text) != 12 or not set(text) <= _HEX:
        raise UsageError(
            "FMSPC must be 6 bytes (12 hex digits)",
            field="fmspc",
            expected="12 hex digits, e.g. 00906ED50000",
            actual=repr(fmspc),
        )
    return text.upper()


def _tee(tee: str) -> DcapTee:
    if tee == "sgx":
        return "sgx"
    if tee == "tdx":
        return "tdx"
    raise UsageError(
        "Intel collateral exists for SGX and TDX only",
        field="tee",
        expected="sgx or tdx",
        actual=repr(tee),
    )


def crl_distribution_point(cert: x509.Certificate) -> str | None:
    """The first https:// URI among ``cert``'s CRL distribution points, if any."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    except x509.ExtensionNotFound:
        return None
    for point in ext.value:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(
                "https://"
            ):
                return name.value
    return None


class PcsClient(ServiceClient):
    """Synchronous Intel PCS / PCCS API v4 client.

    ``service`` is ``"pcs"`` for Intel's service and ``"pccs"`` for a caching service; by default it
    is ``"pcs"`` exactly when the host is ``api.trustedservices.intel.com``. ``update`` adds
    ``update=standard|early`` to TCB info and QE identity requests. ``client`` (an ``httpx.Client``,
    used as given) or ``transport`` (for tests) replace the default client, which verifies TLS
    against the default store plus ``ca_bundle``.
    """

    def __init__(
        self,
        base_url: str = INTEL_PCS_URL,
        *,
        service: Service | None = None,
        update: Update | None = None,
        client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
        ca_bundle: str | Path | None = None,
        timeout: float = FETCH_TIMEOUT_SECONDS,
        deadline: float = FETCH_DEADLINE_SECONDS,
        max_bytes: int = MAX_FETCH_BYTES,
        retries: int = FETCH_RETRIES,
        backoff: float = FETCH_BACKOFF_SECONDS,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        check_url(base_url, field="PCS/PCCS URL")
        parts = urllib.parse.urlsplit(base_url)
        if parts.query or parts.fragment:
            raise UsageError(
                "the PCS/PCCS base URL must not carry a query or fragment",
                field="PCS/PCCS URL",
                expected="scheme://host[:port][/prefix]",
                actual=base_url,
            )
        self.base_url = base_url.rstrip("/")
        self.service: Service = service or (
            "pcs" if parts.hostname == urllib.parse.urlsplit(INTEL_PCS_URL).hostname else "pccs"
        )
        self.update = update
        label = "Intel PCS" if self.service == "pcs" else f"the PCCS at {self.base_url}"
        self._http = HttpGetter(
            service=label,
            client=client,
            transport=transport,
            ca_bundle=ca_bundle,
            timeout=timeout,
            deadline=deadline,
            max_bytes=max_bytes,
            retries=retries,
            backoff=backoff,
            sleep=sleep,
        )

    # -- lifecycle -------------------------------------------------------------------------------

    # -- requests (their URLs are the cache keys) ----------------------------------------------

    def _url(self, path: str, query: dict[str, str] | None = None) -> str:
        q = dict(query or {})
        url = f"{self.base_url}{path}"
        return f"{url}?{urllib.parse.urlencode(q)}" if q else url

    def _update_query(self) -> dict[str, str]:
        return {} if self.update is None else {"update": self.update}

    def tcb_info_request(self, tee: str, fmspc: bytes | str) -> Request:
        t = _tee(tee)
        fm = _fmspc_hex(fmspc)
        url = self._url(f"/{t}/certification/v4/tcb", {"fmspc": fm, **self._update_query()})
        where = "Intel" if self.service == "pcs" else f"the PCCS at {self.base_url}"
        return Request(
            url=url,
            what=f"{t.upper()} TCB info for FMSPC {fm}",
            accept="application/json",
            chain_headers=_TCB_CHAIN_HEADERS,
            not_found=f"{where} has no {t.upper()} TCB info for FMSPC {fm}",
            not_found_hint=(
                "Intel publishes TCB info only for FMSPCs of supported platforms: check that the "
                "evidence is a genuine quote for this TEE"
                + (
                    "; a PCCS must also be able to reach Intel PCS (or be loaded with this "
                    "platform's collateral in OFFLINE mode)"
                    if self.service == "pccs"
                    else ""
                )
            ),
        )

    def qe_identity_request(self, tee: str) -> Request:
        t = _tee(tee)
        url = self._url(f"/{t}/certification/v4/qe/identity", self._update_query())
        return Request(
            url=url,
            what=f"{t.upper()} QE identity",
            accept="application/json",
            chain_headers=_QE_CHAIN_HEADERS,
            not_found_hint=f"check that the URL serves the Intel PCS API v4 ({t} paths)",
        )

    def pck_crl_request(self, ca: str) -> Request:
        if ca not in ("processor", "platform"):
            raise UsageError(
                "the PCK CRL is published per PCK CA",
                field="ca",
                expected="processor or platform",
                actual=repr(ca),
            )
        url = self._url("/sgx/certification/v4/pckcrl", {"ca": ca, "encoding": "der"})
        return Request(
            url=url,
            what=f"PCK {ca.capitalize()} CA CRL",
            accept="*/*",
            chain_headers=_CRL_CHAIN_HEADERS,
            not_found_hint="check that the URL serves the Intel PCS API v4",
        )

    def root_ca_crl_request(self, root: x509.Certificate | None = None) -> Request:
        """The Root CA CRL: PCCS ``rootcacrl`` then the root's CRL distribution point; PCS: the DP.

        ``root`` is the Intel SGX Root CA certificate (from an issuer chain); without it, Intel's
        published distribution point is used.
        """
        if root is None:
            dp = INTEL_ROOT_CA_CRL_URL
        else:
            found = crl_distribution_point(root)
            if found is None and self.service == "pccs":
                # A private or simulation root without a distribution point: only the PCCS
                # route can serve its CRL.
                return Request(
                    url=self._url("/sgx/certification/v4/rootcacrl"),
                    what="Root CA CRL",
                    accept="*/*",
                    not_found_hint="the root names no CRL distribution point; serve the CRL at "
                    "the PCCS rootcacrl route",
                )
            if found is None:
                raise CollateralFetchError(
                    "the root certificate names no https:// CRL distribution point",
                    code="COLLATERAL_FETCH_FAILED",
                    field="root CA CRL distribution point",
                    expected="an https:// URI in the CRL Distribution Points extension",
                    actual=root.subject.rfc4514_string(),
                    hint="is this the Intel SGX Root CA? Intel's is at " + INTEL_ROOT_CA_CRL_URL,
                )
            dp = found
        check_url(dp, field="root CA CRL distribution point")
        at_dp = Request(
            url=dp,
            what="Intel SGX Root CA CRL",
            accept="*/*",
            not_found=f"no Root CA CRL at its distribution point {dp}",
            not_found_hint="Intel moved or withdrew the CRL: check the root certificate",
        )
        if self.service == "pcs":
            return at_dp
        return Request(
            url=self._url("/sgx/certification/v4/rootcacrl"),
            what="Intel SGX Root CA CRL",
            accept="*/*",
            fallback=at_dp,
        )

    # -- fetching ----------------------------------------------------------------------------------

    def fetch(self, request: Request) -> Fetched:
        """Perform ``request`` (built by one of the ``*_request`` methods)."""
        return self._http.get(request)

    def get_tcb_info(self, tee: str, fmspc: bytes | str) -> Fetched:
        return self.fetch(self.tcb_info_request(tee, fmspc))

    def get_qe_identity(self, tee: str) -> Fetched:
        return self.fetch(self.qe_identity_request(tee))

    def get_pck_crl(self, ca: str) -> Fetched:
        return self.fetch(self.pck_crl_request(ca))

    def get_root_ca_crl(self, root: x509.Certificate | None = None) -> Fetched:
        return self.fetch(self.root_ca_crl_request(root))
