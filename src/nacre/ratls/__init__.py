"""RA-TLS: TLS whose certificates carry TEE evidence that binds their keys (``DESIGN.md`` §3).

    key, cert = create_ratls_certificate(nacre.tee.current(), subject_cn="my service")
    verifier = RatlsVerifier(collateral=bundle, trust=TrustRoots.default(), policy=check_mrenclave)
    ctx = server_context(key, cert, verify_client=verifier)          # mutual: clients attest too
    conn, addr = accept_verified(listener, ctx)                      # attested before any data
    sock = wrap_client(socket.create_connection(addr), verifier, key=ck, cert=ccert)
    sock.ratls_peer.claims["mrenclave"]

Certificates: :mod:`nacre.ratls._cert` (extension formats, CBOR tags, key binding).
Connections: :mod:`nacre.ratls._tls` (how the standard ``ssl`` module is made to attest every peer,
and the in-channel client attestation used for mutual RA-TLS).

This package lives beside :mod:`nacre.tee` rather than inside it: relying parties (the key broker,
plain clients) verify RA-TLS peers without importing any TEE backend, and a workload passes its
``nacre.tee`` backend to :func:`create_ratls_certificate` through the :class:`Quoter` protocol.
"""

from __future__ import annotations

from nacre.ratls._cert import (
    CBOR_TAG_INTEL_TEE_QUOTE,
    CERT_BACKDATE,
    GRAMINE_LEGACY_QUOTE_OID,
    HASH_ALG_IDS,
    LEGACY_SGX_QUOTE_OID,
    MAX_RATLS_CERT_BYTES,
    TCG_DICE_TAGGED_EVIDENCE_OID,
    CollateralSource,
    PrivateKey,
    Quoter,
    RatlsError,
    RatlsEvidence,
    claims_buffer_for,
    create_ratls_certificate,
    extract_evidence,
    load_certificate,
    spki_der,
    verify_ratls_certificate,
)
from nacre.ratls._tls import (
    CLIENT_AUTH_MAGIC,
    HANDSHAKE_TIMEOUT_SECONDS,
    RatlsContext,
    RatlsSocket,
    RatlsVerifier,
    Verifier,
    accept_verified,
    client_context,
    server_context,
    wrap_client,
    wrap_server,
)

__all__ = [
    "CBOR_TAG_INTEL_TEE_QUOTE",
    "CERT_BACKDATE",
    "CLIENT_AUTH_MAGIC",
    "GRAMINE_LEGACY_QUOTE_OID",
    "HANDSHAKE_TIMEOUT_SECONDS",
    "HASH_ALG_IDS",
    "LEGACY_SGX_QUOTE_OID",
    "MAX_RATLS_CERT_BYTES",
    "TCG_DICE_TAGGED_EVIDENCE_OID",
    "CollateralSource",
    "PrivateKey",
    "Quoter",
    "RatlsContext",
    "RatlsError",
    "RatlsEvidence",
    "RatlsSocket",
    "RatlsVerifier",
    "Verifier",
    "accept_verified",
    "claims_buffer_for",
    "client_context",
    "create_ratls_certificate",
    "extract_evidence",
    "load_certificate",
    "server_context",
    "spki_der",
    "verify_ratls_certificate",
    "wrap_client",
    "wrap_server",
]
