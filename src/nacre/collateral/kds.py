"""AMD Key Distribution Service (KDS) client: VCEK certificates and the ASK/ASVK + ARK chains.

AMD KDS specification (pub. 57230)::

    GET {base}/vcek/v1/{product}/{hwid}?blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..   DER VCEK
        (Turin and later also fmcSPL=..; their hwid is the first 8 bytes of CHIP_ID)
    GET {base}/vcek/v1/{product}/cert_chain      PEM: ASK, then ARK
    GET {base}/vlek/v1/{product}/cert_chain      PEM: ASVK, then ARK

A VLEK is not served by hardware id: the cloud provider that loaded it must supply it. The
product line comes from the report's CPUID fields (versions 3 and later) or must be given, since
version 2 reports lack them. Transport rules (TLS always verified, timeouts, size limit, bounded
retries) are those of :mod:`nacre.collateral._http`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import httpx

from nacre.collateral._http import Fetched, HttpGetter, Request, ServiceClient, check_url
from nacre.errors import UsageError
from nacre.evidence.snp import SnpReport, TcbVersion, tcb_layout_for_product
from nacre.limits import (
    FETCH_BACKOFF_SECONDS,
    FETCH_DEADLINE_SECONDS,
    FETCH_RETRIES,
    FETCH_TIMEOUT_SECONDS,
    MAX_FETCH_BYTES,
)

__all__ = [
    "AMD_KDS_URL",
    "KDS_PRODUCTS",
    "Fetched",
    "KdsClient",
    "Request",
    "VcekQuery",
    "normalize_product",
]

#: AMD's Key Distribution Service.
AMD_KDS_URL: Final = "https://kdsintf.amd.com"
#: Product lines KDS serves VCEKs for, as KDS spells them (Bergamo/Siena use Genoa's).
KDS_PRODUCTS: Final = ("Milan", "Genoa", "Turin")
#: Turin and later: KDS takes only the first 8 bytes of CHIP_ID as the hardware id.
_TURIN_HWID_BYTES: Final = 8

KeyKind = Literal["vcek", "vlek"]


#: Product lines served under another's name (same ARK/ASK, same KDS path).
_ALIASES: Final = {"Bergamo": "Genoa", "Siena": "Genoa"}


def normalize_product(name: str) -> str:
    """``milan``/``Milan-B0``/``GENOA``/``Siena`` -> the KDS product name; else UsageError."""
    base = name.strip().split("-", 1)[0].capitalize()
    base = _ALIASES.get(base, base)
    if base not in KDS_PRODUCTS:
        raise UsageError(
            f"unknown AMD product line {name!r}",
            field="--product",
            expected=" | ".join(KDS_PRODUCTS),
            actual=name,
        )
    return base


@dataclass(frozen=True, slots=True)
class VcekQuery:
    """What KDS needs to find one VCEK: product line, CHIP_ID and the REPORTED_TCB levels."""

    product: str
    chip_id: bytes
    tcb: TcbVersion

    def __post_init__(self) -> None:
        product = normalize_product(self.product)
        object.__setattr__(self, "product", product)
        if len(self.chip_id) != 64:
            raise UsageError(
                "CHIP_ID must be 64 bytes",
                field="chip_id",
                expected="64 bytes",
                actual=f"{len(self.chip_id)} bytes",
            )
        turin = tcb_layout_for_product(product) == "turin"
        if turin != (self.tcb.fmc is not None):
            raise UsageError(
                f"{product} TCB levels {'need' if turin else 'have no'} an FMC level",
                field="reported_tcb",
                expected="fmc set" if turin else "fmc None",
                actual=repr(self.tcb.fmc),
            )

    @classmethod
    def from_report(cls, report: SnpReport, product: str) -> VcekQuery:
        """The query for ``report``'s VCEK; REPORTED_TCB is re-read in ``product``'s layout."""
        name = normalize_product(product)
        tcb = TcbVersion.from_bytes(report.reported_tcb.to_bytes(), tcb_layout_for_product(name))
        return cls(product=name, chip_id=report.chip_id, tcb=tcb)

    @property
    def hwid(self) -> str:
        """The hardware id in the URL: CHIP_ID in hex (Turin and later: its first 8 bytes)."""
        if self.tcb.fmc is not None:
            return self.chip_id[:_TURIN_HWID_BYTES].hex()
        return self.chip_id.hex()

    def query(self) -> dict[str, str]:
        q: dict[str, str] = {}
        if self.tcb.fmc is not None:
            q["fmcSPL"] = str(self.tcb.fmc)
        q.update(
            blSPL=str(self.tcb.bootloader),
            teeSPL=str(self.tcb.tee),
            snpSPL=str(self.tcb.snp),
            ucodeSPL=str(self.tcb.microcode),
        )
        return q


class KdsClient(ServiceClient):
    """Synchronous AMD KDS client. ``client``/``transport``/``ca_bundle`` as for PcsClient."""

    def __init__(
        self,
        base_url: str = AMD_KDS_URL,
        *,
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
        check_url(base_url, field="KDS URL")
        parts = urllib.parse.urlsplit(base_url)
        if parts.query or parts.fragment:
            raise UsageError(
                "the KDS base URL must not carry a query or fragment",
                field="KDS URL",
                expected="scheme://host[:port][/prefix]",
                actual=base_url,
            )
        self.base_url = base_url.rstrip("/")
        label = "AMD KDS" if base_url.rstrip("/") == AMD_KDS_URL else f"KDS at {self.base_url}"
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

    def vcek_request(self, q: VcekQuery) -> Request:
        url = f"{self.base_url}/vcek/v1/{q.product}/{q.hwid}?{urllib.parse.urlencode(q.query())}"
        levels = ", ".join(f"{k}={v}" for k, v in q.query().items())
        return Request(
            url=url,
            what=f"the {q.product} VCEK for this chip at {levels}",
            accept="application/x-x509-ca-cert, application/pkix-cert, */*",
            not_found=f"KDS has no {q.product} VCEK for chip {q.hwid[:16]}... at {levels}",
            not_found_hint=(
                "check the product line (--product) and that the report is not from a VLEK or "
                "masked-chip-id platform; an unreleased TCB level may not be served yet"
            ),
        )

    def cert_chain_request(self, product: str, key: KeyKind = "vcek") -> Request:
        name = normalize_product(product)
        middle = "ASK" if key == "vcek" else "ASVK"
        return Request(
            url=f"{self.base_url}/{key}/v1/{name}/cert_chain",
            what=f"the {name} {middle} + ARK certificate chain",
            accept="application/x-pem-file, */*",
            not_found_hint=f"KDS serves {key.upper()} chains for {', '.join(KDS_PRODUCTS)}",
        )

    def fetch(self, request: Request) -> Fetched:
        return self._http.get(request)

    def get_vcek(self, q: VcekQuery) -> Fetched:
        return self.fetch(self.vcek_request(q))

    def get_cert_chain(self, product: str, key: KeyKind = "vcek") -> Fetched:
        return self.fetch(self.cert_chain_request(product, key))
