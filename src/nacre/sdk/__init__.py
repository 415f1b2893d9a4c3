"""Workload-side clients: fetch secrets from a key broker with this process's TEE evidence.

    from nacre.sdk import KbsClient
    secret = KbsClient("https://kbs.example").get_resource("models/llm/key")

:class:`KbsClient` speaks the Confidential Containers KBS protocol v0.4.0 (nacre's key broker and
Trustee's), quoting through a :mod:`nacre.tee` backend (``nacre.tee.current()`` by default).
"""

from __future__ import annotations

from nacre.sdk.errors import (
    KbsDeniedError,
    KbsError,
    KbsNotFoundError,
    KbsProtocolError,
    KbsSessionError,
    KbsUnavailableError,
)
from nacre.sdk.kbs import (
    KBS_PROTOCOL_VERSION,
    SESSION_COOKIE,
    KbsClient,
    check_kbs_url,
    parse_resource_path,
)

__all__ = [
    "KBS_PROTOCOL_VERSION",
    "SESSION_COOKIE",
    "KbsClient",
    "KbsDeniedError",
    "KbsError",
    "KbsNotFoundError",
    "KbsProtocolError",
    "KbsSessionError",
    "KbsUnavailableError",
    "check_kbs_url",
    "parse_resource_path",
]
