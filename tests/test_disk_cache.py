"""The on-disk collateral cache: hits, tampering, re-validation on read, corrupt files, bounds,
threads; and the re-verification of real vector items (nacre.collateral.recheck)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from nacre.collateral.disk_cache import CachedItem, DiskCache
from nacre.collateral.pcs import Fetched
from nacre.collateral.recheck import collateral_validator
from nacre.collateral.trust import TrustRoots
from nacre.errors import CollateralError, NacreError, UsageError
from pcs_simulator import VECTORS, case_json
from threads_support import run_threads

T0 = datetime(2025, 7, 4, 10, 0, tzinfo=UTC)
URL = "https://pccs.test:8081/sgx/certification/v4/tcb?fmspc=00A067110000"


def accept_all(item: CachedItem, now: datetime) -> None:
    """A validator that accepts everything (the cache mechanics alone)."""


def younger_than_an_hour(item: CachedItem, now: datetime) -> None:
    if now - item.fetched_at > timedelta(hours=1):
        raise CollateralError("too old", code="COLLATERAL_EXPIRED", field="fetched_at")


class Origin:
    """A fetch function that counts calls and serves numbered bodies."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> Fetched:
        self.calls += 1
        return Fetched(URL, f"body {self.calls}".encode(), b"-----BEGIN CERTIFICATE-----\n...")


def test_hit_returns_the_stored_bytes_without_fetching(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", validate=accept_all)
    origin = Origin()
    first = cache.get_or_fetch(URL, "tcb_info", origin, now=T0)
    second = cache.get_or_fetch(URL, "tcb_info", origin, now=T0 + timedelta(minutes=5))
    assert origin.calls == 1
    assert second == first
    assert second.body == b"body 1"
    assert second.issuer_chain == b"-----BEGIN CERTIFICATE-----\n..."
    assert second.fetched_at == T0
    assert second.kind == "tcb_info"


def test_files_are_named_by_url_hash_private_and_json(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c", validate=accept_all)
    cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    path = tmp_path / "c" / f"{hashlib.sha256(URL.encode()).hexdigest()}.json"
    assert cache.path_for(URL) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o700
    env = json.loads(path.read_text())
    assert env["url"] == URL
    assert base64.b64decode(env["body"]) == b"body 1"
    assert env["fetched_at"] == T0.isoformat()
    assert len(env["sha256"]) == 64
    assert [p.name for p in (tmp_path / "c").iterdir()] == [path.name]  # no temp files left


def _rewrite(path: Path, **changes: object) -> None:
    env = json.loads(path.read_text())
    env.update(changes)
    path.write_text(json.dumps(env))


@pytest.mark.parametrize(
    "changes",
    [
        {"body": base64.b64encode(b"body X").decode()},
        {"issuer_chain": base64.b64encode(b"another chain").decode()},
        {"issuer_chain": None},
        {"fetched_at": (T0 + timedelta(seconds=1)).isoformat()},
        {"kind": "qe_identity"},
        {"sha256": "0" * 64},
    ],
)
def test_tampered_entry_is_detected_dropped_and_refetched(
    tmp_path: Path, changes: dict[str, object]
) -> None:
    drops: list[tuple[str, str]] = []
    cache = DiskCache(tmp_path, validate=accept_all, on_drop=lambda u, r: drops.append((u, r)))
    origin = Origin()
    cache.get_or_fetch(URL, "tcb_info", origin, now=T0)
    _rewrite(cache.path_for(URL), **changes)
    assert cache.get(URL, now=T0) is None
    assert not cache.path_for(URL).exists()
    assert drops == [(URL, "cache entry does not match its SHA-256 (tampered or damaged)")]
    again = cache.get_or_fetch(URL, "tcb_info", origin, now=T0)
    assert origin.calls == 2
    assert again.body == b"body 2"


def test_entry_for_another_url_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    other = URL.replace("00A067110000", "00906ED50000")
    cache.get_or_fetch(other, "tcb_info", Origin(), now=T0)
    os.replace(cache.path_for(other), cache.path_for(URL))  # a file swapped into place
    assert cache.get(URL, now=T0) is None
    assert not cache.path_for(URL).exists()


def test_item_that_no_longer_validates_is_dropped_and_refetched(tmp_path: Path) -> None:
    drops: list[str] = []
    cache = DiskCache(tmp_path, validate=younger_than_an_hour, on_drop=lambda u, r: drops.append(r))
    origin = Origin()
    cache.get_or_fetch(URL, "tcb_info", origin, now=T0)
    assert cache.get_or_fetch(URL, "tcb_info", origin, now=T0 + timedelta(minutes=59)).body == (
        b"body 1"
    )
    later = T0 + timedelta(hours=2)
    item = cache.get_or_fetch(URL, "tcb_info", origin, now=later)
    assert origin.calls == 2
    assert (item.body, item.fetched_at) == (b"body 2", later)
    assert drops == ["cached tcb_info no longer verifies: too old"]
    assert cache.get(URL, now=later) == item  # the refetched item replaced the old one


def test_fresh_item_that_does_not_validate_is_not_stored(tmp_path: Path) -> None:
    def reject(item: CachedItem, now: datetime) -> None:
        raise CollateralError("bad signature", code="TCB_INFO_SIGNATURE_INVALID")

    cache = DiskCache(tmp_path, validate=reject)
    with pytest.raises(CollateralError):
        cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    assert len(cache) == 0


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b'{"format": "nacre-collateral-cache", "version": 1',
        b"[" * 100_000 + b"]" * 100_000,
        b"\xff\xfe garbage",
        json.dumps({"format": "something else"}).encode(),
        json.dumps({"format": "nacre-collateral-cache", "version": 2}).encode(),
        json.dumps({"format": "nacre-collateral-cache", "version": 1, "url": URL}).encode(),
    ],
)
def test_corrupt_envelope_is_a_miss_never_a_crash(tmp_path: Path, content: bytes) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    cache.path_for(URL).write_bytes(content)
    assert cache.get(URL, now=T0) is None
    assert not cache.path_for(URL).exists()
    origin = Origin()
    assert cache.get_or_fetch(URL, "tcb_info", origin, now=T0).body == b"body 1"


@pytest.mark.parametrize(
    "changes",
    [
        {"body": "not base64!"},
        {"body": 12},
        {"fetched_at": "yesterday"},
        {"fetched_at": "2025-07-04T10:00:00"},  # no time zone
        {"issuer_chain": 5},
    ],
)
def test_envelope_with_bad_fields_is_a_miss(tmp_path: Path, changes: dict[str, object]) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    _rewrite(cache.path_for(URL), **changes)
    assert cache.get(URL, now=T0) is None


def test_directory_in_place_of_an_entry_is_a_miss(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    cache.path_for(URL).mkdir()
    assert cache.get(URL, now=T0) is None


def test_naive_now_is_refused(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    with pytest.raises(UsageError):
        cache.get(URL, now=datetime(2025, 1, 1))


def _put(cache: DiskCache, url: str, body: bytes, mtime: int) -> None:
    cache.put(CachedItem.create(url=url, kind="vcek", body=body, issuer_chain=None, fetched_at=T0))
    os.utime(cache.path_for(url), (mtime, mtime))


def test_bounded_in_entries_evicting_the_oldest(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all, max_entries=2)
    urls = [f"https://kds.test/vcek/{i}" for i in range(3)]
    for i, url in enumerate(urls):
        _put(cache, url, b"x", 1_000_000 + i)
    assert len(cache) == 2
    assert cache.get(urls[0], now=T0) is None
    assert cache.get(urls[1], now=T0) is not None
    assert cache.get(urls[2], now=T0) is not None


def test_bounded_in_bytes_evicting_the_oldest(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all, max_bytes=3000)
    urls = [f"https://kds.test/vcek/{i}" for i in range(3)]
    for i, url in enumerate(urls):
        _put(cache, url, bytes(700), 1_000_000 + i)
    sizes = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert sizes <= 3000
    assert cache.get(urls[0], now=T0) is None
    assert cache.get(urls[2], now=T0) is not None


def test_stale_temp_files_are_cleaned_up(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    leftover = tmp_path / ".tmp-crashed.json"
    leftover.write_bytes(b"half")
    os.utime(leftover, (1_000_000, 1_000_000))
    cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    assert not leftover.exists()


def test_concurrent_readers_and_writers(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all, max_entries=5)
    results: list[bytes] = []

    def worker(n: int) -> None:
        for i in range(40):
            url = f"https://kds.test/item/{(n + i) % 8}"

            def fetch(url: str = url) -> Fetched:
                return Fetched(url, url.encode(), None)

            item = cache.get_or_fetch(url, "vcek", fetch, now=T0)
            results.append(item.body)
            if item.body != url.encode():
                raise AssertionError(f"{url} served {item.body!r}")

    assert run_threads(worker, 8) == []
    assert len(results) == 320
    assert len(cache) <= 5
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_clear_and_drop(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path, validate=accept_all)
    cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    cache.get_or_fetch(URL + "x", "tcb_info", Origin(), now=T0)
    cache.drop(URL)
    assert len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_unwritable_cache_dir_is_a_usage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    cache = DiskCache(blocker / "sub", validate=accept_all)
    with pytest.raises(UsageError) as info:
        cache.get_or_fetch(URL, "tcb_info", Origin(), now=T0)
    assert info.value.field == "--cache-dir"


# -- re-verification of real vector items ----------------------------------------------------

DCAP_CASE = "sgx-v3-phala-processor-ca"
SNP_CASE = "snp-v3-genoa-azure-trustee"


def case_time(case: str) -> datetime:
    return datetime.fromisoformat(case_json(case)["verification_time"].replace("Z", "+00:00"))


def vector_item(case: str, kind: str, now: datetime | None = None) -> CachedItem:
    d = VECTORS / case
    body_file, chain_file = {
        "tcb_info": ("tcb_info.json", "tcb_info_issuer_chain.pem"),
        "qe_identity": ("qe_identity.json", "qe_identity_issuer_chain.pem"),
        "pck_crl": ("pck_crl.der", "pck_crl_issuer_chain.pem"),
        "root_ca_crl": ("root_ca_crl.der", None),
        "vcek": ("vcek.der", None),
        "amd_cert_chain": ("cert_chain.pem", None),
    }[kind]
    return CachedItem.create(
        url=f"https://test/{kind}",
        kind=kind,
        body=(d / body_file).read_bytes(),
        issuer_chain=None if chain_file is None else (d / chain_file).read_bytes(),
        fetched_at=now or case_time(case),
    )


@pytest.mark.parametrize(
    ("case", "kind"),
    [
        (DCAP_CASE, "tcb_info"),
        (DCAP_CASE, "qe_identity"),
        (DCAP_CASE, "pck_crl"),
        (DCAP_CASE, "root_ca_crl"),
        ("tdx-v5-gtg-90c06f-uptodate", "tcb_info"),
        ("tdx-v5-gtg-90c06f-uptodate", "qe_identity"),
        ("sgx-v3-automata-godcap-platform-ca-tcbinfo-v2", "tcb_info"),
        ("sgx-v3-automata-godcap-platform-ca", "pck_crl"),
        (SNP_CASE, "vcek"),
        (SNP_CASE, "amd_cert_chain"),
        ("snp-v2-milan-virtee", "amd_cert_chain"),
    ],
)
def test_real_items_verify_at_their_case_time(case: str, kind: str) -> None:
    collateral_validator()(vector_item(case, kind), case_time(case))


def test_tcb_info_with_a_changed_byte_fails_its_signature() -> None:
    item = vector_item(DCAP_CASE, "tcb_info")
    body = item.body.replace(b'"tcbType":0', b'"tcbType":1', 1)
    assert body != item.body
    forged = CachedItem.create(
        url=item.url,
        kind=item.kind,
        body=body,
        issuer_chain=item.issuer_chain,
        fetched_at=item.fetched_at,
    )
    with pytest.raises(CollateralError) as info:
        collateral_validator()(forged, item.fetched_at)
    assert info.value.code == "TCB_INFO_SIGNATURE_INVALID"


def test_tcb_info_after_next_update_has_expired() -> None:
    later = datetime(2025, 7, 30, tzinfo=UTC)  # the case's tcbInfo nextUpdate is 2025-07-19
    item = vector_item(DCAP_CASE, "tcb_info", now=later)
    with pytest.raises(CollateralError) as info:
        collateral_validator()(item, later)
    assert info.value.code == "COLLATERAL_EXPIRED"


def test_items_older_than_max_age_are_stale() -> None:
    item = vector_item(DCAP_CASE, "qe_identity")
    validate = collateral_validator(max_age=timedelta(hours=1))
    validate(item, item.fetched_at + timedelta(minutes=30))
    with pytest.raises(CollateralError) as info:
        validate(item, item.fetched_at + timedelta(hours=2))
    assert info.value.code == "COLLATERAL_STALE"


def test_items_stamped_in_the_future_are_refused() -> None:
    item = vector_item(DCAP_CASE, "root_ca_crl")
    with pytest.raises(CollateralError):
        collateral_validator()(item, item.fetched_at - timedelta(hours=1))


def test_issuer_chain_of_another_item_is_refused() -> None:
    item = vector_item(DCAP_CASE, "pck_crl")
    swapped = CachedItem.create(
        url=item.url,
        kind=item.kind,
        body=item.body,
        issuer_chain=(VECTORS / DCAP_CASE / "tcb_info_issuer_chain.pem").read_bytes(),
        fetched_at=item.fetched_at,
    )
    with pytest.raises(CollateralError) as info:
        collateral_validator()(swapped, item.fetched_at)
    assert info.value.code == "CRL_INVALID"


def test_chains_must_end_in_a_trusted_root() -> None:
    item = vector_item(DCAP_CASE, "tcb_info")
    amd_only = TrustRoots(intel=(), amd=TrustRoots.default().amd)
    with pytest.raises(CollateralError) as info:
        collateral_validator(amd_only)(item, item.fetched_at)
    assert info.value.code == "CERT_CHAIN_INVALID"
    snp = vector_item(SNP_CASE, "amd_cert_chain")
    intel_only = TrustRoots(intel=TrustRoots.default().intel, amd={})
    with pytest.raises(CollateralError):
        collateral_validator(intel_only)(snp, snp.fetched_at)


def test_amd_chain_in_the_wrong_order_is_refused() -> None:
    item = vector_item(SNP_CASE, "amd_cert_chain")
    certs = x509.load_pem_x509_certificates(item.body)
    reversed_pem = certs[1].public_bytes(Encoding.PEM) + certs[0].public_bytes(Encoding.PEM)
    bad = CachedItem.create(
        url=item.url,
        kind=item.kind,
        body=reversed_pem,
        issuer_chain=None,
        fetched_at=item.fetched_at,
    )
    with pytest.raises(NacreError):
        collateral_validator()(bad, item.fetched_at)


def test_unknown_kind_is_refused() -> None:
    item = CachedItem.create(url="u", kind="mystery", body=b"", issuer_chain=None, fetched_at=T0)
    with pytest.raises(CollateralError):
        collateral_validator()(item, T0)


def test_cache_with_real_validator_drops_expired_item_and_refetches(tmp_path: Path) -> None:
    item = vector_item(DCAP_CASE, "tcb_info")
    cache = DiskCache(tmp_path, validate=collateral_validator(max_age=timedelta(days=365)))
    cache.put(item)
    assert cache.get(item.url, now=item.fetched_at) == item
    assert cache.get(item.url, now=datetime(2025, 7, 30, tzinfo=UTC)) is None
    assert len(cache) == 0


@pytest.mark.parametrize("kind", ["tcb_info", "pck_crl", "amd_cert_chain", "vcek", "root_ca_crl"])
def test_damaged_items_fail_only_with_nacre_errors(kind: str) -> None:
    """Byte flips anywhere in a body or chain: a NacreError (the cache drops it), never a crash."""
    case = SNP_CASE if kind in ("amd_cert_chain", "vcek") else DCAP_CASE
    item = vector_item(case, kind)
    validate = collateral_validator()
    target = "issuer_chain" if item.issuer_chain is not None else "body"
    data = item.issuer_chain if item.issuer_chain is not None else item.body
    assert data is not None
    outcomes = {"rejected": 0, "accepted": 0}
    for pos in range(0, len(data), max(1, len(data) // 150)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x04
        fields = {"body": item.body, "issuer_chain": item.issuer_chain, target: bytes(flipped)}
        damaged = CachedItem.create(
            url=item.url,
            kind=item.kind,
            body=fields["body"] or b"",
            issuer_chain=fields["issuer_chain"],
            fetched_at=item.fetched_at,
        )
        try:
            validate(damaged, item.fetched_at)
            outcomes["accepted"] += 1  # e.g. a flip inside PEM armour text or an unsigned field
        except NacreError:
            outcomes["rejected"] += 1
    if kind == "vcek":  # only its validity is checked here (its signature needs the ASK)
        assert outcomes["rejected"] > 0
    else:
        assert outcomes["rejected"] > outcomes["accepted"]
