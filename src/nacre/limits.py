"""Named limits. Anything larger or deeper is refused with a typed error naming the limit."""

from __future__ import annotations

from typing import Final

__all__ = [
    "DISK_CACHE_MAX_AGE_SECONDS",
    "DISK_CACHE_MAX_BYTES",
    "DISK_CACHE_MAX_ENTRIES",
    "FETCH_BACKOFF_SECONDS",
    "FETCH_DEADLINE_SECONDS",
    "FETCH_RETRIES",
    "FETCH_TIMEOUT_SECONDS",
    "MAX_CERT_CHAIN_DEPTH",
    "MAX_COLLATERAL_FILE_BYTES",
    "MAX_CRL_BYTES",
    "MAX_EVIDENCE_BYTES",
    "MAX_FETCH_BYTES",
    "MAX_PEM_CHAIN_BYTES",
    "VERIFY_CACHE_ENTRIES",
]

#: A DCAP quote with an embedded PCK chain is about 5 KiB; a 64 KiB quote is not a quote.
MAX_EVIDENCE_BYTES: Final = 64 * 1024
#: Certificates in one chain, leaf and root included (Intel's are 3, AMD's 3).
MAX_CERT_CHAIN_DEPTH: Final = 5
#: PEM text of one certificate chain.
MAX_PEM_CHAIN_BYTES: Final = 32 * 1024
#: One collateral file (TCB info JSON, QE identity, issuer chain).
MAX_COLLATERAL_FILE_BYTES: Final = 1024 * 1024
#: One CRL (Intel's PCK CRLs are small; a platform CA CRL with many entries stays well below this).
MAX_CRL_BYTES: Final = 4 * 1024 * 1024
#: One HTTP response body from PCS/PCCS/KDS.
MAX_FETCH_BYTES: Final = 4 * 1024 * 1024
#: Collateral-side verification results kept in the in-process cache.
VERIFY_CACHE_ENTRIES: Final = 256
#: Connect/read/write timeout of one HTTP attempt to PCS/PCCS/KDS.
FETCH_TIMEOUT_SECONDS: Final = 10.0
#: Wall-clock bound on one whole HTTP attempt, body included (a server dribbling bytes can't hold us).
FETCH_DEADLINE_SECONDS: Final = 30.0
#: Retries after the first attempt, on 5xx/429 answers, timeouts and connection errors only.
FETCH_RETRIES: Final = 2
#: First backoff between attempts; it doubles on each retry (0.5 s, then 1 s by default).
FETCH_BACKOFF_SECONDS: Final = 0.5
#: Collateral items kept in the on-disk cache; the oldest are evicted first.
DISK_CACHE_MAX_ENTRIES: Final = 1024
#: Total size of the on-disk cache's files.
DISK_CACHE_MAX_BYTES: Final = 64 * 1024 * 1024
#: A cached item older than this is refetched even if it still verifies (CRLs change daily).
DISK_CACHE_MAX_AGE_SECONDS: Final = 24 * 60 * 60
