"""Domain types the store hands out: frozen, slotted, never carrying wrapped material."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from nacre.errors import UsageError

__all__ = [
    "AdminKeyRecord",
    "KeyInfo",
    "KeyState",
    "KeyType",
    "KeyVersionInfo",
    "KeyVersionState",
    "Policy",
    "PolicyKind",
    "Resource",
    "ResourceInfo",
    "ResourceName",
    "Session",
    "SessionState",
]

PolicyKind = Literal["resource", "appraisal"]
KeyType = Literal["AES-256", "EC-P256", "EC-P384", "Ed25519", "secp256k1", "RSA-3072"]
KeyState = Literal["enabled", "disabled", "pending_deletion", "destroyed"]
KeyVersionState = Literal["enabled", "disabled", "destroyed"]
SessionState = Literal["pending", "attested"]

#: One path segment of a KBS resource name (``repo/type/tag``).
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True, slots=True)
class ResourceName:
    """``repo/type/tag``, each segment ``[A-Za-z0-9][A-Za-z0-9._-]*`` and at most 128 characters."""

    repo: str
    type: str
    tag: str

    @classmethod
    def parse(cls, name: str) -> ResourceName:
        parts = name.split("/")
        if len(parts) != 3 or not all(_SEGMENT.fullmatch(p) for p in parts):
            raise UsageError(
                "a resource name is repo/type/tag",
                field="name",
                expected="repo/type/tag, segments of [A-Za-z0-9._-] starting alphanumeric",
                actual=name[:200],
            )
        return cls(parts[0], parts[1], parts[2])

    def __str__(self) -> str:
        return f"{self.repo}/{self.type}/{self.tag}"


@dataclass(frozen=True, slots=True)
class ResourceInfo:
    name: ResourceName
    policy_id: str | None
    current_version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Resource:
    """A resource version with its plaintext (kept in memory only by the caller)."""

    info: ResourceInfo
    version: int
    data: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"Resource(name={self.info.name!s}, version={self.version}, data=<{len(self.data)} bytes>)"


@dataclass(frozen=True, slots=True)
class Policy:
    id: str
    kind: PolicyKind
    document: str
    version: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class KeyVersionInfo:
    key_id: str
    version: int
    state: KeyVersionState
    public_key: bytes | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    type: KeyType
    state: KeyState
    current_version: int
    exportable: bool
    policy_id: str | None
    deletion_date: datetime | None
    rotation_period_s: int | None
    next_rotation_at: datetime | None
    expires_at: datetime | None
    created_at: datetime
    updated_at: datetime

    def to_json(self) -> dict[str, Any]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat()

        return {
            "id": self.id,
            "type": self.type,
            "state": self.state,
            "current_version": self.current_version,
            "exportable": self.exportable,
            "policy_id": self.policy_id,
            "deletion_date": iso(self.deletion_date),
            "rotation_period_s": self.rotation_period_s,
            "next_rotation_at": iso(self.next_rotation_at),
            "expires_at": iso(self.expires_at),
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    nonce: str
    tee: str
    state: SessionState
    created_at: datetime
    expires_at: datetime
    tee_pubkey: str | None
    token: str | None


@dataclass(frozen=True, slots=True)
class AdminKeyRecord:
    """A registered admin public key (``kid``: RFC 7638 thumbprint of ``jwk``)."""

    kid: str
    name: str
    jwk: Mapping[str, str]
    roles: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None
