"""The :class:`Kms`: HSM-like keys kept in the :class:`nacre.store.Store`, used only inside it.

Every public method takes the :class:`Caller` first and runs the same steps:

1. the caller is authorised (management: role ``admin``; use: the key's policy, see
   :mod:`nacre.kms.policy`; export: an attested workload, an exportable key, the policy);
2. the key's lifecycle allows the operation (enabled, unexpired; verify is allowed on an expired
   key, since it needs only the public key);
3. the operation runs on material unwrapped from the store for this call only;
4. the outcome — allowed, denied, refused or failed — goes to the store's hash-chained audit log,
   with the key id, version, operation and caller subject, never key material or data.
   Management operations that succeed are audited by the store itself (``key.create``,
   ``key.rotate``, ``key.disabled`` ...), in the same transaction as the change.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from threading import Lock
from typing import Any, Final, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key, load_der_public_key

from nacre.errors import LimitExceededError, NacreError, UsageError
from nacre.kms import _crypto
from nacre.kms.errors import (
    AccessDeniedError,
    CiphertextError,
    KeyImportError,
    KeyStateError,
    KeyUsageError,
)
from nacre.kms.models import (
    Ciphertext,
    DataKey,
    ExportedKey,
    ImportWrappingKey,
    Plaintext,
    Signature,
    Verification,
    WrappedKey,
)
from nacre.kms.policy import Caller, KeyPolicy, check_workload, parse_key_policy
from nacre.store import (
    ConflictError,
    KeyInfo,
    KeyType,
    KeyVersionInfo,
    LifecycleError,
    NotFoundError,
    Store,
)
from nacre.token.errors import JweError
from nacre.token.jwe import decrypt as jwe_decrypt
from nacre.token.jwe import encrypt_for_tee_key, public_jwk

__all__ = [
    "DEFAULT_USE_ROLES",
    "IMPORT_KEY_ID",
    "KEY_TYPES",
    "MAX_AAD_BYTES",
    "MAX_DATA_BYTES",
    "RESERVED_PREFIX",
    "Kms",
]

T = TypeVar("T")

KEY_TYPES: Final[tuple[KeyType, ...]] = (
    "AES-256",
    "EC-P256",
    "EC-P384",
    "Ed25519",
    "secp256k1",
    "RSA-3072",
)
#: Largest plaintext, message or key to wrap handed to one operation.
MAX_DATA_BYTES: Final = 64 * 1024
#: Largest additional authenticated data.
MAX_AAD_BYTES: Final = 8 * 1024
#: Data key sizes generate_data_key hands out.
_DATA_KEY_BYTES: Final = (16, 24, 32)
#: Key ids under this prefix belong to the service (the import key).
RESERVED_PREFIX: Final = "nacre."
#: The service's import key (EC P-384; material arrives as ECDH-ES+A256KW JWE to it).
IMPORT_KEY_ID: Final = "nacre.kms.import"
#: Principal roles that may use keys (subject to the key policy's ``admin_use``).
DEFAULT_USE_ROLES: Final = frozenset({"admin", "key-user"})
_LIST_ROLES: Final = frozenset({"admin", "auditor", "key-user"})
#: Compiled key policies kept (by policy id and version).
_POLICY_CACHE_SIZE: Final = 1024
_ROTATION_ACTOR: Final = "system:rotation"
_DELETION_ACTOR: Final = "system:deletion"
_STATE_CODES: Final = {
    "disabled": "KEY_DISABLED",
    "pending_deletion": "KEY_PENDING_DELETION",
    "destroyed": "KEY_DESTROYED",
}


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _bytes(field: str, value: object, limit: int) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise UsageError(
            f"{field} is bytes", field=field, expected="bytes", actual=type(value).__name__
        )
    if len(value) > limit:
        raise LimitExceededError(
            f"{field} is too large",
            field=field,
            expected=f"<= {limit} bytes",
            actual=f"{len(value)} bytes",
        )
    return bytes(value)


def _need_type(info: KeyInfo, allowed: frozenset[str] | tuple[str, ...], op: str) -> None:
    if info.type not in allowed:
        raise KeyUsageError(
            f"{op} does not apply to a {info.type} key",
            field="type",
            expected=" | ".join(sorted(allowed)),
            actual=info.type,
        )


class Kms:
    """HSM-like key management over a :class:`Store` (opened with a sealer).

    ``now_fn`` is the clock (tests pass a fixed one); ``use_roles`` the principal roles that may
    use keys whose policy allows admin use (or that have no policy).
    """

    def __init__(
        self,
        store: Store,
        *,
        now_fn: Callable[[], datetime] = _utc_now,
        use_roles: frozenset[str] = DEFAULT_USE_ROLES,
    ) -> None:
        self._store = store
        self._now_fn = now_fn
        self._use_roles = frozenset(use_roles)
        self._policies: dict[tuple[str, int], KeyPolicy] = {}
        self._lock = Lock()

    @property
    def store(self) -> Store:
        return self._store

    # -- plumbing ----------------------------------------------------------------------------

    def _now(self) -> datetime:
        now = self._now_fn()
        if now.tzinfo is None:
            raise UsageError(
                "the clock is timezone-aware", field="now", expected="aware", actual=now
            )
        return now

    @staticmethod
    def _check_caller(caller: object) -> Caller:
        if not isinstance(caller, Caller):
            raise UsageError(
                "every KMS operation takes a Caller",
                field="caller",
                expected="Caller",
                actual=type(caller).__name__,
            )
        return caller

    def _audit(
        self,
        caller: Caller,
        op: str,
        target: str,
        outcome: str,
        now: datetime,
        detail: Mapping[str, Any],
    ) -> None:
        self._store.record(
            actor=caller.subject,
            action=f"kms.{op}",
            target=str(target)[:512],
            outcome=outcome,
            detail=dict(detail),
            now=now,
        )

    def _audit_failure(
        self, caller: object, op: str, target: str, exc: NacreError, now: datetime
    ) -> None:
        if not isinstance(caller, Caller):
            return  # no subject to record against; the UsageError says so
        if isinstance(exc, AccessDeniedError):
            outcome = "denied"
        elif isinstance(exc, LifecycleError):
            outcome = "refused"
        else:
            outcome = "failed"
        detail: dict[str, Any] = {"code": exc.code, "check": exc.field, "reason": exc.message[:300]}
        if caller.ear is not None:
            detail["attested"] = True
        self._audit(caller, op, target, outcome, now, detail)

    def _run(
        self,
        caller: object,
        op: str,
        target: str,
        body: Callable[[Caller, datetime], tuple[T, Mapping[str, Any] | None]],
    ) -> T:
        """Run ``body``; audit a failure always, a success when ``body`` returns a detail (None:
        the store audited it in its own transaction)."""
        now = self._now()
        try:
            checked = self._check_caller(caller)
            result, detail = body(checked, now)
        except NacreError as exc:
            self._audit_failure(caller, op, target, exc, now)
            raise
        if detail is not None:
            self._audit(checked, op, target, "allowed", now, detail)
        return result

    @staticmethod
    def _require_admin(caller: Caller) -> None:
        if caller.ear is not None or "admin" not in caller.roles:
            raise AccessDeniedError(
                "key management needs the admin role",
                field="role",
                expected="admin",
                actual="attested workload"
                if caller.ear is not None
                else ", ".join(sorted(caller.roles)) or "none",
            )

    def _key(self, key_id: str, *, reserved_ok: bool = False) -> KeyInfo:
        if not reserved_ok and isinstance(key_id, str) and key_id.startswith(RESERVED_PREFIX):
            raise KeyUsageError(
                "this key belongs to the service",
                field="key id",
                expected=f"a key id not starting with {RESERVED_PREFIX!r}",
                actual=key_id,
            )
        return self._store.get_key(key_id)

    def _policy(self, info: KeyInfo) -> KeyPolicy | None:
        if info.policy_id is None:
            return None
        stored = self._store.get_policy(info.policy_id)
        cache_key = (stored.id, stored.version)
        with self._lock:
            cached = self._policies.get(cache_key)
        if cached is not None:
            return cached
        compiled = parse_key_policy(stored.id, stored.version, stored.document)
        with self._lock:
            if len(self._policies) >= _POLICY_CACHE_SIZE:
                self._policies.clear()
            self._policies[cache_key] = compiled
        return compiled

    def _authorize_use(self, caller: Caller, info: KeyInfo, now: datetime) -> None:
        policy = self._policy(info)
        if caller.ear is not None:
            check_workload(caller.ear, policy, now, info.id)
            return
        if not caller.roles & self._use_roles:
            raise AccessDeniedError(
                "using a key needs a key-user role or an attested workload",
                field="role",
                expected=" | ".join(sorted(self._use_roles)),
                actual=", ".join(sorted(caller.roles)) or "none",
            )
        if policy is not None and not policy.admin_use:
            raise AccessDeniedError(
                f"policy {policy.policy_id} admits attested workloads only",
                field="policy.admin_use",
                expected=True,
                actual=False,
                hint='set "admin_use": true in the key policy to let principals use the key',
            )

    @staticmethod
    def _check_state(info: KeyInfo, now: datetime, *, allow_expired: bool = False) -> None:
        if info.state != "enabled":
            extra = ""
            if info.state == "pending_deletion" and info.deletion_date is not None:
                extra = f" (destroyed at {info.deletion_date.isoformat()})"
            raise KeyStateError(
                f"key {info.id} is {info.state}{extra}",
                code=_STATE_CODES[info.state],
                field="state",
                expected="enabled",
                actual=info.state,
                hint="cancel_delete then enable" if info.state == "pending_deletion" else None,
            )
        if not allow_expired and info.expires_at is not None and info.expires_at <= now:
            raise KeyStateError(
                f"key {info.id} expired",
                code="KEY_EXPIRED",
                field="expires_at",
                expected=f"> {now.isoformat()}",
                actual=info.expires_at.isoformat(),
            )

    def _prepare_use(
        self, caller: Caller, key_id: str, now: datetime, *, allow_expired: bool = False
    ) -> KeyInfo:
        info = self._key(key_id)
        self._authorize_use(caller, info, now)
        self._check_state(info, now, allow_expired=allow_expired)
        return info

    def _version(self, info: KeyInfo, version: int | None) -> KeyVersionInfo:
        want = info.current_version if version is None else version
        for found in self._store.key_versions(info.id):
            if found.version == want:
                if found.state != "enabled":
                    raise KeyStateError(
                        f"key {info.id} version {want} is {found.state}",
                        code="KEY_VERSION_STATE",
                        field="version state",
                        expected="enabled",
                        actual=found.state,
                    )
                return found
        raise CiphertextError(
            "no such key version",
            field="version",
            expected=f"1..{info.current_version}",
            actual=want,
        )

    def _material(self, info: KeyInfo, version: int | None, now: datetime) -> tuple[int, bytes]:
        kv, material = self._store.key_material(info.id, version=version, now=now)
        return kv.version, material

    @staticmethod
    def _parse(info: KeyInfo, blob: bytes, kinds: tuple[int, ...]) -> _crypto.CiphertextHeader:
        parsed = _crypto.parse_ciphertext(blob)
        if parsed.key_id != info.id:
            raise CiphertextError(
                "the ciphertext was made with another key",
                field="ciphertext.key_id",
                expected=info.id,
                actual=parsed.key_id,
            )
        if parsed.kind not in kinds:
            raise CiphertextError(
                "the ciphertext is of another kind",
                field="ciphertext.kind",
                expected=" | ".join(_crypto.KIND_NAMES[k] for k in kinds),
                actual=parsed.algorithm,
            )
        if parsed.version > info.current_version:
            raise CiphertextError(
                "the ciphertext names a key version that does not exist",
                field="ciphertext.version",
                expected=f"1..{info.current_version}",
                actual=parsed.version,
            )
        return parsed

    # -- management --------------------------------------------------------------------------

    def create_key(
        self,
        caller: Caller,
        type: KeyType,
        *,
        name: str,
        policy_id: str | None = None,
        exportable: bool = False,
        rotation_days: int | None = None,
        expires_at: datetime | None = None,
    ) -> KeyInfo:
        """A new key of ``type`` (material generated here), version 1, enabled. ``name`` is its id."""

        def body(c: Caller, now: datetime) -> tuple[KeyInfo, None]:
            self._require_admin(c)
            self._check_new(type, name, policy_id, rotation_days)
            material, public = _crypto.generate_material(type)
            return self._create(
                c,
                name,
                type,
                material,
                public,
                policy_id,
                exportable,
                rotation_days,
                expires_at,
                now,
            ), None

        return self._run(caller, "create", str(name), body)

    def _check_new(
        self, key_type: str, name: str, policy_id: str | None, rotation_days: int | None
    ) -> None:
        if key_type not in KEY_TYPES:
            raise KeyUsageError(
                "unknown key type", field="type", expected=", ".join(KEY_TYPES), actual=key_type
            )
        if not isinstance(name, str) or name.startswith(RESERVED_PREFIX):
            raise UsageError(
                "key names starting with the reserved prefix belong to the service",
                field="name",
                expected=f"not starting with {RESERVED_PREFIX!r}",
                actual=name,
            )
        if rotation_days is not None and (
            isinstance(rotation_days, bool)
            or not isinstance(rotation_days, int)
            or rotation_days < 1
        ):
            raise UsageError(
                "rotation_days is a positive integer",
                field="rotation_days",
                expected=">= 1",
                actual=rotation_days,
            )
        if policy_id is not None:
            self._policy_by_id(policy_id)  # exists and compiles as a key policy

    def _policy_by_id(self, policy_id: str) -> KeyPolicy:
        stored = self._store.get_policy(policy_id)
        if stored.kind != "resource":
            raise UsageError(
                f"policy {policy_id} is an {stored.kind} policy",
                field="policy_id",
                expected="a resource policy (key policies are resource policies)",
                actual=stored.kind,
            )
        return parse_key_policy(stored.id, stored.version, stored.document)

    def _create(
        self,
        c: Caller,
        name: str,
        key_type: KeyType,
        material: bytes,
        public: bytes | None,
        policy_id: str | None,
        exportable: bool,
        rotation_days: int | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> KeyInfo:
        return self._store.create_key(
            name,
            key_type,
            material,
            public_key=public,
            exportable=bool(exportable),
            policy_id=policy_id,
            rotation_period=None if rotation_days is None else timedelta(days=rotation_days),
            expires_at=expires_at,
            actor=c.subject,
            now=now,
        )

    def rotate(self, caller: Caller, key_id: str) -> KeyVersionInfo:
        """A new version with fresh material becomes current; older versions still decrypt,
        unwrap and verify."""

        def body(c: Caller, now: datetime) -> tuple[KeyVersionInfo, None]:
            self._require_admin(c)
            info = self._key(key_id)
            self._check_state(info, now, allow_expired=True)
            return self._rotate(info, c.subject, now), None

        return self._run(caller, "rotate", key_id, body)

    def _rotate(
        self, info: KeyInfo, actor: str, now: datetime, *, scheduled: bool = False
    ) -> KeyVersionInfo:
        material, public = _crypto.generate_material(info.type)
        return self._store.rotate_key(
            info.id,
            material,
            public_key=public,
            actor=actor,
            now=now,
            due_by=now if scheduled else None,
        )

    def rotate_due(self, now: datetime | None = None) -> list[KeyVersionInfo]:
        """Rotate every enabled, unexpired key whose rotation date has come (the scheduler's job;
        audited as ``system:rotation``)."""
        at = self._now() if now is None else now
        done: list[KeyVersionInfo] = []
        for info in self._store.keys_due_for_rotation(now=at):
            if info.expires_at is not None and info.expires_at <= at:
                continue
            try:
                done.append(self._rotate(info, _ROTATION_ACTOR, at, scheduled=True))
            except LifecycleError:
                continue  # disabled, or already rotated, by another replica meanwhile
        return done

    def destroy_due(self, now: datetime | None = None) -> list[str]:
        """Destroy keys whose deletion waiting period is over (the scheduler's job)."""
        at = self._now() if now is None else now
        return self._store.destroy_due_keys(actor=_DELETION_ACTOR, now=at)

    def list_keys(self, caller: Caller, *, include_destroyed: bool = False) -> list[KeyInfo]:
        """The service's keys (roles admin, auditor or key-user; never the reserved import key)."""

        def body(c: Caller, now: datetime) -> tuple[list[KeyInfo], dict[str, Any]]:
            if c.ear is not None or not c.roles & _LIST_ROLES:
                raise AccessDeniedError(
                    "listing keys needs the admin, auditor or key-user role",
                    field="role",
                    expected=" | ".join(sorted(_LIST_ROLES)),
                    actual="attested workload"
                    if c.ear is not None
                    else ", ".join(sorted(c.roles)) or "none",
                )
            keys = [
                k
                for k in self._store.list_keys(include_destroyed=include_destroyed)
                if not k.id.startswith(RESERVED_PREFIX)
            ]
            return keys, {"count": len(keys)}

        return self._run(caller, "list", "*", body)

    def versions(self, caller: Caller, key_id: str) -> list[KeyVersionInfo]:
        """A key's versions (same roles as :meth:`list_keys`)."""

        def body(c: Caller, now: datetime) -> tuple[list[KeyVersionInfo], dict[str, Any]]:
            if c.ear is not None or not c.roles & _LIST_ROLES:
                raise AccessDeniedError(
                    "listing key versions needs the admin, auditor or key-user role",
                    field="role",
                    expected=" | ".join(sorted(_LIST_ROLES)),
                    actual=", ".join(sorted(c.roles)) or "attested workload",
                )
            return self._store.key_versions(self._key(key_id).id), {}

        return self._run(caller, "versions", key_id, body)

    def _admin_transition(
        self, caller: Caller, op: str, key_id: str, step: Callable[[str, datetime, str], KeyInfo]
    ) -> KeyInfo:
        def body(c: Caller, now: datetime) -> tuple[KeyInfo, None]:
            self._require_admin(c)
            info = self._key(key_id)
            return step(info.id, now, c.subject), None

        return self._run(caller, op, key_id, body)

    def disable(self, caller: Caller, key_id: str) -> KeyInfo:
        return self._admin_transition(
            caller,
            "disable",
            key_id,
            lambda k, now, actor: self._store.disable_key(k, actor=actor, now=now),
        )

    def enable(self, caller: Caller, key_id: str) -> KeyInfo:
        return self._admin_transition(
            caller,
            "enable",
            key_id,
            lambda k, now, actor: self._store.enable_key(k, actor=actor, now=now),
        )

    def schedule_delete(self, caller: Caller, key_id: str, days: int) -> KeyInfo:
        """Pending deletion, destroyed ``days`` (7..30) later by :meth:`destroy_due`."""
        return self._admin_transition(
            caller,
            "schedule_delete",
            key_id,
            lambda k, now, actor: self._store.schedule_key_deletion(
                k, waiting_days=days, actor=actor, now=now
            ),
        )

    def cancel_delete(self, caller: Caller, key_id: str) -> KeyInfo:
        """Pending deletion → disabled (enable it explicitly afterwards)."""
        return self._admin_transition(
            caller,
            "cancel_delete",
            key_id,
            lambda k, now, actor: self._store.cancel_key_deletion(k, actor=actor, now=now),
        )

    def public_key(self, key_id: str, *, version: int | None = None) -> str:
        """The PEM (SubjectPublicKeyInfo) of an asymmetric key's current (or given) version, in any
        lifecycle state. Public parts are not secret: no caller, no audit entry."""
        info = self._key(key_id)
        _need_type(info, _crypto.ASYMMETRIC_TYPES, "public_key")
        want = info.current_version if version is None else version
        for found in self._store.key_versions(info.id):
            if found.version == want and found.public_key is not None:
                return _crypto.public_pem(found.public_key)
        raise KeyUsageError(
            "no public key for this version",
            field="version",
            expected=f"1..{info.current_version}",
            actual=want,
        )

    # -- import ------------------------------------------------------------------------------

    def import_wrapping_key(self, caller: Caller) -> ImportWrappingKey:
        """The public JWK to wrap import material to (created on first use; admin only)."""

        def body(c: Caller, now: datetime) -> tuple[ImportWrappingKey, dict[str, Any]]:
            self._require_admin(c)
            info = self._import_key(c, now)
            kv = self._version(info, None)
            assert kv.public_key is not None
            public = load_der_public_key(kv.public_key)
            assert isinstance(public, ec.EllipticCurvePublicKey)
            return ImportWrappingKey(info.id, kv.version, public_jwk(public)), {
                "version": kv.version
            }

        return self._run(caller, "import_wrapping_key", IMPORT_KEY_ID, body)

    def _import_key(self, c: Caller, now: datetime) -> KeyInfo:
        try:
            return self._key(IMPORT_KEY_ID, reserved_ok=True)
        except NotFoundError:
            pass
        material, public = _crypto.generate_material("EC-P384")
        try:
            return self._create(
                c, IMPORT_KEY_ID, "EC-P384", material, public, None, False, None, None, now
            )
        except ConflictError:  # another replica created it first
            return self._key(IMPORT_KEY_ID, reserved_ok=True)

    def import_key(
        self,
        caller: Caller,
        type: KeyType,
        wrapped: Mapping[str, Any],
        *,
        name: str,
        policy_id: str | None = None,
        exportable: bool = False,
        rotation_days: int | None = None,
        expires_at: datetime | None = None,
    ) -> KeyInfo:
        """Create a key from existing material, wrapped as a flattened JWE (ECDH-ES+A256KW,
        A256GCM) to :meth:`import_wrapping_key`. The JWE plaintext is the raw 32 bytes for
        AES-256, a PKCS#8 DER private key otherwise. Never accepted in clear."""

        def body(c: Caller, now: datetime) -> tuple[KeyInfo, dict[str, Any]]:
            self._require_admin(c)
            self._check_new(type, name, policy_id, rotation_days)
            try:
                wrapping = self._key(IMPORT_KEY_ID, reserved_ok=True)
            except NotFoundError:
                raise KeyImportError(
                    "the service has no import key yet",
                    field="import key",
                    expected=IMPORT_KEY_ID,
                    actual=None,
                    hint="call import_wrapping_key and wrap the material to its JWK",
                ) from None
            self._check_state(wrapping, now)
            wrapping_version, private_der = self._material(wrapping, None, now)
            private = load_der_private_key(private_der, password=None)
            assert isinstance(private, ec.EllipticCurvePrivateKey)
            try:
                clear = jwe_decrypt(wrapped, private)
            except JweError as exc:
                raise KeyImportError(
                    f"the import JWE does not open: {exc.message}",
                    field=f"wrapped.{exc.field}" if exc.field else "wrapped",
                    expected="a JWE to the service's import key",
                    actual=exc.code,
                ) from None
            material, public = _crypto.check_material(type, clear)
            return self._create(
                c,
                name,
                type,
                material,
                public,
                policy_id,
                exportable,
                rotation_days,
                expires_at,
                now,
            ), {"type": type, "version": 1, "wrapping_key_version": wrapping_version}

        return self._run(caller, "import", str(name), body)

    # -- use ---------------------------------------------------------------------------------

    def encrypt(
        self, caller: Caller, key_id: str, plaintext: bytes, *, aad: bytes = b""
    ) -> Ciphertext:
        """AES-256-GCM (AES keys) or RSA-OAEP-256 (RSA-3072 keys) under the current version."""

        def body(c: Caller, now: datetime) -> tuple[Ciphertext, dict[str, Any]]:
            data = _bytes("plaintext", plaintext, MAX_DATA_BYTES)
            extra = _bytes("aad", aad, MAX_AAD_BYTES)
            info = self._prepare_use(c, key_id, now)
            _need_type(info, ("AES-256", "RSA-3072"), "encrypt")
            if info.type == "AES-256":
                version, key = self._material(info, None, now)
                blob = _crypto.aes_encrypt(key, info.id, version, data, extra)
                algorithm = "AES-256-GCM"
            else:
                kv = self._version(info, None)
                assert kv.public_key is not None
                version = kv.version
                blob = _crypto.rsa_encrypt(kv.public_key, info.id, version, data, extra)
                algorithm = "RSA-OAEP-256"
            return Ciphertext(info.id, version, algorithm, blob), {
                "version": version,
                "algorithm": algorithm,
            }

        return self._run(caller, "encrypt", key_id, body)

    def decrypt(
        self, caller: Caller, key_id: str, ciphertext: bytes, *, aad: bytes = b""
    ) -> Plaintext:
        """Open a ciphertext of :meth:`encrypt` or :meth:`generate_data_key`, with the version its
        header names."""

        def body(c: Caller, now: datetime) -> tuple[Plaintext, dict[str, Any]]:
            blob = _bytes("ciphertext", ciphertext, MAX_DATA_BYTES + 1024)
            extra = _bytes("aad", aad, MAX_AAD_BYTES)
            info = self._prepare_use(c, key_id, now)
            _need_type(info, ("AES-256", "RSA-3072"), "decrypt")
            kind = _crypto.KIND_AES_GCM if info.type == "AES-256" else _crypto.KIND_RSA_OAEP
            parsed = self._parse(info, blob, (kind,))
            version, key = self._material(info, parsed.version, now)
            if kind == _crypto.KIND_AES_GCM:
                clear = _crypto.aes_decrypt(key, parsed, extra)
            else:
                clear = _crypto.rsa_decrypt(key, parsed, extra)
            return Plaintext(info.id, version, clear), {
                "version": version,
                "algorithm": parsed.algorithm,
            }

        return self._run(caller, "decrypt", key_id, body)

    def generate_data_key(
        self, caller: Caller, key_id: str, *, aad: bytes = b"", size: int = 32
    ) -> DataKey:
        """A fresh random data key (``size`` bytes), in clear and encrypted under an AES key."""

        def body(c: Caller, now: datetime) -> tuple[DataKey, dict[str, Any]]:
            if size not in _DATA_KEY_BYTES:
                raise KeyUsageError(
                    "unsupported data key size", field="size", expected="16 | 24 | 32", actual=size
                )
            extra = _bytes("aad", aad, MAX_AAD_BYTES)
            info = self._prepare_use(c, key_id, now)
            _need_type(info, ("AES-256",), "generate_data_key")
            version, key = self._material(info, None, now)
            data_key = os.urandom(size)
            blob = _crypto.aes_encrypt(key, info.id, version, data_key, extra)
            return DataKey(info.id, version, data_key, blob), {"version": version, "bytes": size}

        return self._run(caller, "generate_data_key", key_id, body)

    def wrap(self, caller: Caller, key_id: str, key_material: bytes) -> WrappedKey:
        """AES key wrap with padding (RFC 5649) of ``key_material`` under an AES key."""

        def body(c: Caller, now: datetime) -> tuple[WrappedKey, dict[str, Any]]:
            secret = _bytes("key_material", key_material, MAX_DATA_BYTES)
            if not secret:
                raise KeyUsageError(
                    "nothing to wrap", field="key_material", expected=">= 1 byte", actual="0 bytes"
                )
            info = self._prepare_use(c, key_id, now)
            _need_type(info, ("AES-256",), "wrap")
            version, key = self._material(info, None, now)
            return WrappedKey(
                info.id, version, "AES-KWP", _crypto.aes_wrap(key, info.id, version, secret)
            ), {
                "version": version,
                "algorithm": "AES-KWP",
            }

        return self._run(caller, "wrap", key_id, body)

    def unwrap(self, caller: Caller, key_id: str, wrapped: bytes) -> Plaintext:
        def body(c: Caller, now: datetime) -> tuple[Plaintext, dict[str, Any]]:
            blob = _bytes("wrapped", wrapped, MAX_DATA_BYTES + 1024)
            info = self._prepare_use(c, key_id, now)
            _need_type(info, ("AES-256",), "unwrap")
            parsed = self._parse(info, blob, (_crypto.KIND_AES_KWP,))
            version, key = self._material(info, parsed.version, now)
            return Plaintext(info.id, version, _crypto.aes_unwrap(key, parsed)), {
                "version": version
            }

        return self._run(caller, "unwrap", key_id, body)

    def sign(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        *,
        prehashed: bool = False,
        low_s: bool = False,
        deterministic: bool = False,
    ) -> Signature:
        """Sign with the current version: ECDSA (P-256/SHA-256, P-384/SHA-384, secp256k1/SHA-256),
        Ed25519, or RSA-PSS (SHA-256, MGF1-SHA-256, salt = 32). ``prehashed``: ``message`` is the
        digest (any 32/48-byte digest, e.g. Keccak-256 for Ethereum). ``low_s`` normalises ECDSA
        ``s`` to the lower half (BIP-62/EIP-2). ``deterministic``: RFC 6979 nonces."""

        def body(c: Caller, now: datetime) -> tuple[Signature, dict[str, Any]]:
            data = _bytes("message", message, MAX_DATA_BYTES)
            info = self._prepare_use(c, key_id, now)
            _need_type(info, _crypto.ASYMMETRIC_TYPES, "sign")
            is_ecdsa = info.type in ("EC-P256", "EC-P384", "secp256k1")
            if (low_s or deterministic) and not is_ecdsa:
                raise KeyUsageError(
                    "low_s and deterministic apply to ECDSA keys",
                    field="low_s",
                    expected="an ECDSA key",
                    actual=info.type,
                )
            version, material = self._material(info, None, now)
            signature, raw = _crypto.sign(
                info.type,
                material,
                data,
                prehashed=prehashed,
                normalize_s=low_s,
                deterministic=deterministic,
            )
            algorithm = _crypto.SIGNING_ALGORITHMS[info.type]
            return Signature(info.id, version, algorithm, signature, raw, low_s), {
                "version": version,
                "algorithm": algorithm,
            }

        return self._run(caller, "sign", key_id, body)

    def verify(
        self,
        caller: Caller,
        key_id: str,
        message: bytes,
        signature: bytes,
        *,
        version: int | None = None,
        prehashed: bool = False,
        signature_format: _crypto.SignatureFormat = "der",
        require_low_s: bool = False,
    ) -> Verification:
        """Check a signature with the given (default current) version's public key. Allowed on an
        expired key (public material only); a disabled, pending-deletion or destroyed key refuses.
        ``signature_format`` "raw" takes ECDSA ``r || s``."""

        def body(c: Caller, now: datetime) -> tuple[Verification, dict[str, Any]]:
            data = _bytes("message", message, MAX_DATA_BYTES)
            sig = _bytes("signature", signature, 4096)
            if signature_format not in ("der", "raw"):
                raise KeyUsageError(
                    "unknown signature format",
                    field="signature_format",
                    expected="der | raw",
                    actual=signature_format,
                )
            info = self._prepare_use(c, key_id, now, allow_expired=True)
            _need_type(info, _crypto.ASYMMETRIC_TYPES, "verify")
            kv = self._version(info, version)
            assert kv.public_key is not None
            valid = _crypto.verify(
                info.type,
                kv.public_key,
                data,
                sig,
                prehashed=prehashed,
                signature_format=signature_format,
                require_low_s=require_low_s,
            )
            algorithm = _crypto.SIGNING_ALGORITHMS[info.type]
            return Verification(info.id, kv.version, algorithm, valid), {
                "version": kv.version,
                "valid": valid,
            }

        return self._run(caller, "verify", key_id, body)

    # -- export ------------------------------------------------------------------------------

    def export_to_tee(self, caller: Caller, key_id: str) -> ExportedKey:
        """The current version's material as a flattened JWE to the caller's attested TEE key
        (``tee-pubkey`` of its EAR). Only exportable keys, only to attested workloads that satisfy
        the key's policy; never in clear."""

        def body(c: Caller, now: datetime) -> tuple[ExportedKey, dict[str, Any]]:
            if c.ear is None:
                raise AccessDeniedError(
                    "keys are exported only to attested workloads",
                    field="caller",
                    expected="an attested workload",
                    actual=f"principal {c.subject}",
                )
            info = self._key(key_id)
            if not info.exportable:
                raise AccessDeniedError(
                    f"key {info.id} is not exportable",
                    field="exportable",
                    expected=True,
                    actual=False,
                )
            self._authorize_use(c, info, now)
            self._check_state(info, now)
            tee_key = c.ear.tee_pubkey
            if tee_key is None:
                raise AccessDeniedError(
                    "the attestation token carries no TEE public key",
                    field="tee-pubkey",
                    expected="runtime_data_claims.tee-pubkey in the token",
                    actual=None,
                )
            version, material = self._material(info, None, now)
            try:
                jwe = encrypt_for_tee_key(material, tee_key)
            except JweError as exc:
                raise AccessDeniedError(
                    f"the attested TEE key is refused: {exc.message}",
                    field=f"tee-pubkey.{exc.field}" if exc.field else "tee-pubkey",
                    expected=exc.expected,
                    actual=exc.actual,
                ) from None
            fmt = "raw" if info.type == "AES-256" else "pkcs8-der"
            alg = tee_key.get("kty")
            return ExportedKey(info.id, version, info.type, fmt, jwe), {
                "version": version,
                "tee_key_type": alg,
            }

        return self._run(caller, "export", key_id, body)
