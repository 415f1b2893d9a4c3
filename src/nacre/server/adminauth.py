"""Admin authentication: signed JWTs (EdDSA over Ed25519, or ES256) from registered admin keys.

An admin key is registered with its public JWK and roles in the ``admin_keys`` table (public
material only), so every replica sharing the database authenticates it, and a revocation
(``revoked_at``) takes effect on every replica at its next request. A client signs a short-lived
JWT with the private key::

    header  {"alg": "EdDSA" | "ES256", "typ": "JWT", "kid": <RFC 7638 thumbprint of the key>}
    claims  {"aud": "nacre-admin", "iat": int, "exp": int (<= iat + 15 min), "role"?: str}

The roles come from the registry (never from the token); a ``role`` claim narrows the token to
one of them. On first start (no admin key in the database) the server creates
``<data_dir>/admin.key`` (Ed25519, PKCS#8 PEM, mode 0600) and registers its public key with role
``admin``; the private key never leaves that file.

Upgrade path: a ``<data_dir>/admin_keys.json`` registry of an earlier nacre is imported into the
database on first start (keys not registered yet), then renamed ``admin_keys.json.migrated``.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from nacre.errors import UsageError
from nacre.store import AdminKeyRecord, Store
from nacre.token import jwk_thumbprint

__all__ = [
    "ADMIN_AUDIENCE",
    "ADMIN_KEY_FILE",
    "ADMIN_REGISTRY_FILE",
    "ROLES",
    "AdminAuthError",
    "AdminIdentity",
    "AdminKey",
    "AdminKeyRegistry",
    "AdminPrivateKey",
    "Role",
    "ensure_bootstrap_admin",
    "generate_admin_key",
    "load_admin_key",
    "public_jwk_of",
    "sign_admin_token",
]

Role = Literal["admin", "secret-writer", "key-user", "auditor"]
ROLES: Final[tuple[str, ...]] = get_args(Role)
ADMIN_AUDIENCE: Final = "nacre-admin"
ADMIN_KEY_FILE: Final = "admin.key"
#: The registry file of earlier versions, imported once and renamed with :data:`MIGRATED_SUFFIX`.
ADMIN_REGISTRY_FILE: Final = "admin_keys.json"
MIGRATED_SUFFIX: Final = ".migrated"
_KID: Final = re.compile(r"[A-Za-z0-9_-]{43}")
_FORMAT: Final = "nacre.server.admin-keys/v1"
_LEEWAY: Final = timedelta(seconds=60)
#: Largest admin JWT accepted.
MAX_ADMIN_TOKEN_BYTES: Final = 8 * 1024
#: Registered admin keys.
MAX_ADMIN_KEYS: Final = 256

AdminPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
AdminPublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class AdminAuthError(UsageError):
    """An admin request whose credentials are missing, malformed, unknown, expired or too weak."""

    default_code = "ADMIN_AUTH"


def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(text: str) -> bytes:
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk_of(key: AdminPrivateKey | AdminPublicKey) -> dict[str, str]:
    """The public JWK of an admin key (OKP Ed25519 or EC P-256)."""
    if isinstance(key, ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey):
        key = key.public_key()
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": _b64u(raw)}
    if not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(
            "admin EC keys are P-256 (ES256)", field="crv", expected="P-256", actual=key.curve.name
        )
    numbers = key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64u(numbers.x.to_bytes(32, "big")),
        "y": _b64u(numbers.y.to_bytes(32, "big")),
    }


def _public_key_from_jwk(jwk: Mapping[str, Any]) -> AdminPublicKey:
    if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
        return ed25519.Ed25519PublicKey.from_public_bytes(_b64u_decode(str(jwk["x"])))
    if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
        x = int.from_bytes(_b64u_decode(str(jwk["x"])), "big")
        y = int.from_bytes(_b64u_decode(str(jwk["y"])), "big")
        return ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
    raise UsageError(
        "admin keys are Ed25519 or EC P-256",
        field="jwk",
        expected="OKP/Ed25519 or EC/P-256",
        actual=f"{jwk.get('kty')}/{jwk.get('crv')}",
    )


def generate_admin_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _private_pem(key: AdminPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_admin_key(path: str | Path) -> AdminPrivateKey:
    """Read an admin private key (PKCS#8 PEM, Ed25519 or EC P-256)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise UsageError(
            f"cannot read the admin key {p}: {exc.strerror}",
            field="--admin-key",
            expected="a readable private key PEM file",
            actual=str(p),
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            "the admin key is not an unencrypted PEM private key",
            field="--admin-key",
            expected="PKCS#8 PEM (Ed25519 or EC P-256)",
            actual=str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        ) from None
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise UsageError(
        "admin keys are Ed25519 or EC P-256",
        field="--admin-key",
        expected="Ed25519 or EC P-256",
        actual=type(key).__name__,
    )


def sign_admin_token(
    key: AdminPrivateKey,
    *,
    now: datetime,
    ttl: timedelta = timedelta(minutes=5),
    role: str | None = None,
) -> str:
    """A compact JWS admin token signed with ``key`` (what ``--admin-key`` makes)."""
    jwk = public_jwk_of(key)
    alg = "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey) else "ES256"
    iat = int(now.timestamp())
    claims: dict[str, Any] = {
        "aud": ADMIN_AUDIENCE,
        "iat": iat,
        "exp": iat + int(ttl.total_seconds()),
    }
    if role is not None:
        claims["role"] = role
    header = {"alg": alg, "typ": "JWT", "kid": jwk_thumbprint(jwk)}
    signing_input = (
        _b64u(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64u(json.dumps(claims, separators=(",", ":")).encode())
    ).encode("ascii")
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(signing_input)
    else:
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return signing_input.decode("ascii") + "." + _b64u(signature)


@dataclass(frozen=True, slots=True)
class AdminKey:
    kid: str
    name: str
    jwk: Mapping[str, str]
    roles: tuple[str, ...]
    created_at: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kid": self.kid,
            "name": self.name,
            "jwk": dict(self.jwk),
            "roles": list(self.roles),
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class AdminIdentity:
    """Who made an admin request: the key and the roles this token carries."""

    kid: str
    name: str
    roles: frozenset[str]

    @property
    def actor(self) -> str:
        return f"admin:{self.name}:{self.kid[:16]}"


def _entry(record: AdminKeyRecord) -> AdminKey:
    return AdminKey(
        kid=record.kid,
        name=record.name,
        jwk=dict(record.jwk),
        roles=record.roles,
        created_at=record.created_at.isoformat(),
    )


def _deny(message: str, **kwargs: Any) -> AdminAuthError:
    return AdminAuthError(message, **kwargs)


class AdminKeyRegistry:
    """The registered admin keys: rows of the ``admin_keys`` table, so every replica sharing the
    database sees a registration or revocation at its next request (no cache to go stale)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def entries(self) -> list[AdminKey]:
        return [_entry(r) for r in self.store.list_admin_keys()]

    def register(
        self,
        public_jwk: Mapping[str, str],
        roles: tuple[str, ...],
        *,
        name: str,
        now: datetime,
        actor: str,
        event: str = "register",
    ) -> AdminKey:
        """Add (or replace the roles of) a key; returns the stored entry. Audited by the store
        (``admin_key.register``) in the same transaction."""
        _public_key_from_jwk(public_jwk)  # refuses other key types
        bad = [r for r in roles if r not in ROLES]
        if not roles or bad:
            raise UsageError(
                "unknown admin role",
                field="roles",
                expected=", ".join(ROLES),
                actual=", ".join(bad) or "none",
            )
        if not name or len(name) > 64 or not name.replace("-", "").replace("_", "").isalnum():
            raise UsageError(
                "invalid admin key name",
                field="name",
                expected="1-64 of [A-Za-z0-9_-]",
                actual=name,
            )
        jwk = {k: str(public_jwk[k]) for k in ("kty", "crv", "x", "y") if k in public_jwk}
        record = self.store.put_admin_key(
            jwk_thumbprint(jwk),
            name,
            jwk,
            tuple(dict.fromkeys(roles)),
            actor=actor,
            max_keys=MAX_ADMIN_KEYS,
            event=event,
            now=now,
        )
        return _entry(record)

    def remove(self, kid: str, *, actor: str, now: datetime) -> bool:
        """Revoke a key (audited ``admin_key.remove``); False when no such active key."""
        if not isinstance(kid, str) or not _KID.fullmatch(kid):
            return False
        return self.store.revoke_admin_key(kid, actor=actor, now=now)

    def migrate_file(self, data_dir: Path, now: datetime) -> int:
        """Import ``<data_dir>/admin_keys.json`` (earlier versions' registry) into the database:
        keys not registered yet are added (audited ``admin_key.migrate``), then the file is
        renamed ``admin_keys.json.migrated``. Returns how many keys this call added."""
        path = data_dir / ADMIN_REGISTRY_FILE
        if not path.exists():
            return 0
        doc = json.loads(path.read_text("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
            raise UsageError(
                "the admin key registry is damaged",
                field=str(path),
                expected=_FORMAT,
                actual=str(doc.get("format") if isinstance(doc, dict) else type(doc).__name__),
            )
        known = {r.kid for r in self.store.list_admin_keys(include_revoked=True)}
        added = 0
        for item in doc["keys"]:
            jwk = {str(a): str(b) for a, b in item["jwk"].items()}
            if jwk_thumbprint(jwk) in known:
                continue
            roles = tuple(str(r) for r in item["roles"])
            self.register(
                jwk, roles, name=str(item["name"]), now=now, actor="system", event="migrate"
            )
            added += 1
        path.replace(path.with_name(path.name + MIGRATED_SUFFIX))
        path.with_suffix(".lock").unlink(missing_ok=True)
        return added

    def authenticate(self, token: str, now: datetime) -> AdminIdentity:
        """Verify an admin JWT (steps numbered as they run) and return who it is."""
        # 1. A bounded compact JWS with a JSON header and payload.
        if not isinstance(token, str) or not token.isascii() or len(token) > MAX_ADMIN_TOKEN_BYTES:
            raise _deny("admin token is not a compact JWS of acceptable size", field="token")
        parts = token.split(".")
        if len(parts) != 3:
            raise _deny("admin token is not a compact JWS", field="token", expected="3 parts")
        try:
            header = json.loads(_b64u_decode(parts[0]))
            claims = json.loads(_b64u_decode(parts[1]))
            signature = _b64u_decode(parts[2])
        except ValueError:
            raise _deny("admin token segments are not base64url JSON", field="token") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise _deny("admin token header/claims are not JSON objects", field="token")
        # 2. Algorithm: EdDSA or ES256 only, matching the registered key type.
        alg = header.get("alg")
        if alg not in ("EdDSA", "ES256") or "crit" in header:
            raise _deny(
                "admin token algorithm refused",
                field="alg",
                expected="EdDSA or ES256",
                actual=repr(alg),
            )
        # 3. A registered key.
        kid = header.get("kid")
        record = self.store.get_admin_key(kid) if isinstance(kid, str) else None
        entry = None if record is None else _entry(record)
        if entry is None:
            raise _deny(
                "admin token signed by an unregistered key",
                field="kid",
                expected="a registered admin key",
                actual=repr(kid)[:80],
            )
        public = _public_key_from_jwk(entry.jwk)
        # 4. Signature.
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        try:
            if isinstance(public, ed25519.Ed25519PublicKey):
                if alg != "EdDSA":
                    raise InvalidSignature
                public.verify(signature, signing_input)
            else:
                if alg != "ES256" or len(signature) != 64:
                    raise InvalidSignature
                der = encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise _deny("admin token signature does not verify", field="signature") from None
        # 5. Audience and times: short-lived, current.
        if claims.get("aud") != ADMIN_AUDIENCE:
            raise _deny(
                "admin token audience",
                field="aud",
                expected=ADMIN_AUDIENCE,
                actual=repr(claims.get("aud")),
            )
        iat, exp = claims.get("iat"), claims.get("exp")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (iat, exp)):
            raise _deny("admin token needs integer iat and exp", field="exp")
        assert isinstance(iat, int)
        assert isinstance(exp, int)
        from nacre.server.config import ADMIN_TOKEN_MAX_TTL

        ts = now.astimezone(UTC).timestamp()
        slack = _LEEWAY.total_seconds()
        if exp - iat > ADMIN_TOKEN_MAX_TTL.total_seconds() or exp <= iat:
            raise _deny(
                "admin token lifetime too long",
                field="exp",
                expected=f"0 < exp - iat <= {int(ADMIN_TOKEN_MAX_TTL.total_seconds())} s",
                actual=f"{exp - iat} s",
            )
        if ts > exp + slack:
            raise _deny(
                "admin token has expired",
                code="ADMIN_TOKEN_EXPIRED",
                field="exp",
                expected=f"> {now.isoformat()}",
                actual=datetime.fromtimestamp(exp, UTC).isoformat(),
            )
        if iat > ts + slack:
            raise _deny(
                "admin token issued in the future",
                field="iat",
                actual=datetime.fromtimestamp(iat, UTC).isoformat(),
            )
        # 6. Roles: those registered, narrowed by a role claim.
        roles = frozenset(entry.roles)
        role = claims.get("role")
        if role is not None:
            if role not in roles:
                raise _deny(
                    "admin token asks for a role its key does not hold",
                    field="role",
                    expected=", ".join(entry.roles),
                    actual=repr(role),
                )
            roles = frozenset({str(role)})
        return AdminIdentity(kid=entry.kid, name=entry.name, roles=roles)


def ensure_bootstrap_admin(
    data_dir: Path, registry: AdminKeyRegistry, now: datetime
) -> AdminKey | None:
    """Create ``data_dir/admin.key`` (0600) and register it as admin when no admin key is
    registered in the database yet (of replicas starting together exactly one registers; a
    replica that lost removes the key file it had just created).

    Returns the newly registered key, or None when an admin key was already registered.
    """
    if registry.store.list_admin_keys():
        return None
    path = data_dir / ADMIN_KEY_FILE
    created = False
    if path.exists():
        key = load_admin_key(path)
    else:
        key = generate_admin_key()
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            key = load_admin_key(path)
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(_private_pem(key))
                handle.flush()
                os.fsync(handle.fileno())
            created = True
    jwk = public_jwk_of(key)
    record = registry.store.bootstrap_admin_key(
        jwk_thumbprint(jwk), "bootstrap", jwk, ("admin",), now=now
    )
    if record is None:
        if created:
            path.unlink(missing_ok=True)
        return None
    return _entry(record)
