"""EAR (IETF RATS "EAT Attestation Results", draft-ietf-rats-ear) as an ES256 JWT.

Issued token, header ``{"alg": "ES256", "kid": <RFC 7638 thumbprint>, "typ": "JWT"}`` (no ``jwk``
member: Trustee's KBS then insists on an ``x5c`` chain, while a ``kid`` resolves against its
``trusted_jwk_sets``, i.e. our JWKS), claims::

    eat_profile      "tag:github.com,2023:veraison/ear"
    iat, exp         NumericDate (seconds)
    jti              random id (audit correlation)
    iss              when the issuer names itself
    eat_nonce        when the relying party sent a nonce (RFC 9711: 8..88 characters)
    ear.verifier-id  {"developer": "nacre", "build": "nacre <version>"}
    submods          {"cpu0": Appraisal}

    Appraisal = {
      "ear.status": "affirming" | "warning" | "contraindicated",
      "ear.trustworthiness-vector": {AR4SI claim: int8},
      "ear.appraisal-policy-id": str,
      "ear.veraison.annotated-evidence": {
          <tee>: {verified claims},                     # e.g. "sgx": {"mrenclave": ...}
          "runtime_data_claims": {"tee-pubkey": JWK, "nonce": ..., ...},
          "init_data_claims": {...}                     # when init-data was bound
      },
      "nacre.sim": bool                                 # true when simulation trust verified it
    }

The submodule is named ``cpu0`` by default and the annotated evidence is laid out as Trustee's
Attestation Service lays it out, so a KBS reading the TEE key at
``/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey`` (Trustee
``kbs/src/token/mod.rs``) finds it in our tokens too.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from types import MappingProxyType
from typing import Any, Final, Literal, get_args

import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey

from nacre.token.errors import (
    TOKEN_ALG_REFUSED,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    TOKEN_UNKNOWN_KEY,
    KeyringError,
    TokenError,
)
from nacre.token.keyring import Keyring, SigningKey, b64url_decode, b64url_encode

__all__ = [
    "AR4SI_CLAIMS",
    "DEFAULT_LEEWAY",
    "DEFAULT_SUBMOD",
    "EAR_PROFILE",
    "EAR_STATUSES",
    "MAX_TOKEN_BYTES",
    "EarAppraisal",
    "EarClaims",
    "EarInput",
    "EarStatus",
    "issue_ear",
    "issue_ear_with_claims",
    "status_of_claim",
    "verify_ear",
]

EAR_PROFILE: Final = "tag:github.com,2023:veraison/ear"
#: Submodule name; Trustee names CPU appraisals ``cpu0`` and its KBS looks for the TEE key there.
DEFAULT_SUBMOD: Final = "cpu0"
#: Largest token accepted or issued (Trustee trims its tokens to stay below HTTP header limits).
MAX_TOKEN_BYTES: Final = 64 * 1024
#: Clock difference tolerated on exp/iat/nbf.
DEFAULT_LEEWAY: Final = timedelta(seconds=60)
#: AR4SI trustworthiness claims (draft-ietf-rats-ar4si §2.3), in their usual order.
AR4SI_CLAIMS: Final = (
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
)

EarStatus = Literal["none", "affirming", "warning", "contraindicated"]
#: Every status EAR defines, least to most severe. nacre issues only the last three.
EAR_STATUSES: Final[tuple[str, ...]] = get_args(EarStatus)
_ISSUABLE: Final = frozenset({"affirming", "warning", "contraindicated"})
_SEVERITY: Final = {status: rank for rank, status in enumerate(EAR_STATUSES)}
_DEVELOPER: Final = "nacre"
_ALG: Final = "ES256"
_MIN_NONCE: Final = 8
_MAX_NONCE: Final = 88
#: 9999-12-31T23:59:59Z, the last instant a datetime can hold.
_MAX_NUMERIC_DATE: Final = 253402300799

try:
    _BUILD = f"nacre {version('nacre')}"
except PackageNotFoundError:  # pragma: no cover - running from a bare source tree
    _BUILD = "nacre unknown"


def status_of_claim(value: int) -> str:
    """The AR4SI tier of one trustworthiness claim value (draft-ietf-rats-ar4si §2.3.1)."""
    magnitude = value if value >= 0 else -value - 1  # -2..-32 mirror 2..31, etc.
    if -1 <= value <= 1:
        return "none"
    if magnitude <= 31:
        return "affirming"
    if magnitude <= 95:
        return "warning"
    return "contraindicated"


def _check_vector(vector: Mapping[str, Any], code: str | None) -> None:
    for name, item in vector.items():
        if name not in AR4SI_CLAIMS:
            raise TokenError(
                "unknown trustworthiness claim",
                code=code,
                field=f"ear.trustworthiness-vector.{name}",
                expected=" | ".join(AR4SI_CLAIMS),
                actual=name,
            )
        if isinstance(item, bool) or not isinstance(item, int) or not -128 <= item <= 127:
            raise TokenError(
                "trustworthiness claim is not an int8",
                code=code,
                field=f"ear.trustworthiness-vector.{name}",
                expected="integer in [-128, 127]",
                actual=repr(item),
            )


def _frozen_json(value: Any, where: str) -> Any:
    """A JSON round trip: proves the value is JSON, and detaches it from the caller's objects."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TokenError(
            "value is not JSON-serialisable", field=where, actual=type(exc).__name__
        ) from None


def _json_copy(value: Any) -> Any:
    """A detached deep copy of a value :func:`_frozen_json` has already proven JSON (string
    keys, no NaN): orjson's round trip, or the json module's for what orjson refuses (integers
    over 64 bits)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except orjson.JSONEncodeError:
        return json.loads(json.dumps(value))


def _payload(claims: dict[str, Any]) -> bytes:
    """The JWT payload: compact UTF-8 JSON (orjson; the json module for integers over 64 bits)."""
    try:
        return orjson.dumps(claims)
    except orjson.JSONEncodeError:
        return json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True, slots=True)
class EarInput:
    """What an appraisal concluded about one TEE, as the token will state it."""

    tee: str
    status: str
    trustworthiness_vector: Mapping[str, int]
    claims: Mapping[str, Any]
    policy_id: str
    tee_pubkey: Mapping[str, Any] | None = None
    runtime_data: Mapping[str, Any] | None = None
    init_data_claims: Mapping[str, Any] | None = None
    nonce: str | None = None
    sim: bool = False
    submod: str = DEFAULT_SUBMOD

    def __post_init__(self) -> None:
        if not self.tee or not isinstance(self.tee, str):
            raise TokenError("tee name is required", field="tee", actual=repr(self.tee))
        if self.status not in _ISSUABLE:
            raise TokenError(
                "status cannot be issued",
                field="ear.status",
                expected="affirming | warning | contraindicated",
                actual=self.status,
            )
        _check_vector(self.trustworthiness_vector, None)
        worst = max(
            (status_of_claim(v) for v in self.trustworthiness_vector.values()),
            key=_SEVERITY.__getitem__,
            default="none",
        )
        if _SEVERITY[worst] > _SEVERITY[self.status]:
            raise TokenError(
                "status is better than the trustworthiness vector allows",
                field="ear.status",
                expected=f"at least {worst}",
                actual=self.status,
            )
        if not self.policy_id or not isinstance(self.policy_id, str):
            raise TokenError("policy id is required", field="ear.appraisal-policy-id")
        if self.nonce is not None and not (
            isinstance(self.nonce, str) and _MIN_NONCE <= len(self.nonce) <= _MAX_NONCE
        ):
            raise TokenError(
                "eat_nonce must be a string of 8 to 88 characters (RFC 9711 §4.1)",
                field="eat_nonce",
                expected="8..88 characters",
                actual=repr(self.nonce)[:100],
            )
        if self.tee_pubkey is not None and any(
            member in self.tee_pubkey for member in ("d", "p", "q", "dp", "dq", "qi", "k")
        ):
            raise TokenError("tee-pubkey carries private key members", field="tee-pubkey")
        if not self.submod or not isinstance(self.submod, str):
            raise TokenError("submodule name is required", field="submod")
        for name in (
            "trustworthiness_vector",
            "claims",
            "tee_pubkey",
            "runtime_data",
            "init_data_claims",
        ):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, MappingProxyType(_frozen_json(dict(value), name)))

    def annotated_evidence(self) -> dict[str, Any]:
        evidence: dict[str, Any] = {self.tee: dict(self.claims)}
        if self.runtime_data is not None or self.tee_pubkey is not None:
            runtime = dict(self.runtime_data or {})
            if self.tee_pubkey is not None:
                runtime["tee-pubkey"] = dict(self.tee_pubkey)
            evidence["runtime_data_claims"] = runtime
        if self.init_data_claims is not None:
            evidence["init_data_claims"] = dict(self.init_data_claims)
        return _json_copy(evidence)  # type: ignore[no-any-return]


def _numeric_date(moment: datetime, name: str) -> int:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise TokenError("times must be timezone-aware", field=name, actual=moment.isoformat())
    return int(moment.timestamp())


#: joserfc keys of ring keys, by (kid, private): joserfc serialises a key to a JWK (private
#: numbers included) the first time it uses it, on every new ECKey. Entries hold the ring key
#: they came from and are used only for that very object.
_JOSE_KEYS: dict[tuple[str, bool], tuple[ec.EllipticCurvePrivateKey, ECKey]] = {}
_JOSE_KEYS_MAX: Final = 64
_jose_keys_lock = threading.Lock()


def _jose_key(key: SigningKey, *, private: bool) -> ECKey:
    """The joserfc key for ``key`` (its private half to sign, else its public half)."""
    slot = (key.kid, private)
    cached = _JOSE_KEYS.get(slot)
    if cached is not None and cached[0] is key.private_key:
        return cached[1]
    raw = key.private_key if private else key.private_key.public_key()
    jose = ECKey(raw, raw)
    with _jose_keys_lock:
        if len(_JOSE_KEYS) >= _JOSE_KEYS_MAX:
            _JOSE_KEYS.clear()
        _JOSE_KEYS[slot] = (key.private_key, jose)
    return jose


def issue_ear(
    result: EarInput,
    keyring: Keyring,
    now: datetime,
    ttl: timedelta,
    *,
    issuer: str | None = None,
) -> str:
    """Sign an EAR JWT for ``result`` with the keyring's current key, valid ``[now, now + ttl]``.

    ``ttl`` may not exceed ``keyring.max_token_ttl``: the keyring retires keys on that promise.
    """
    return issue_ear_with_claims(result, keyring, now, ttl, issuer=issuer)[0]


def issue_ear_with_claims(
    result: EarInput,
    keyring: Keyring,
    now: datetime,
    ttl: timedelta,
    *,
    issuer: str | None = None,
) -> tuple[str, EarClaims]:
    """:func:`issue_ear`, and the claims :func:`verify_ear` will find in the token (for a
    :class:`~nacre.token.verified_tokens.VerifiedTokens` memo: no need to parse it back)."""
    if not timedelta(0) < ttl <= keyring.max_token_ttl:
        raise KeyringError(
            "token TTL outside what the keyring retires keys for",
            field="ttl",
            expected=f"0 < ttl <= {keyring.max_token_ttl}",
            actual=str(ttl),
        )
    key = keyring.signing_key(now)
    iat = _numeric_date(now, "iat")
    appraisal: dict[str, Any] = {
        "ear.status": result.status,
        "ear.trustworthiness-vector": dict(result.trustworthiness_vector),
        "ear.appraisal-policy-id": result.policy_id,
        "ear.veraison.annotated-evidence": result.annotated_evidence(),
        "nacre.sim": result.sim,
    }
    claims: dict[str, Any] = {
        "eat_profile": EAR_PROFILE,
        "iat": iat,
        "exp": iat + int(ttl.total_seconds()),
        "jti": b64url_encode(os.urandom(16)),
        "ear.verifier-id": {"developer": _DEVELOPER, "build": _BUILD},
        "submods": {result.submod: appraisal},
    }
    if issuer is not None:
        claims["iss"] = issuer
    if result.nonce is not None:
        claims["eat_nonce"] = result.nonce
    payload = _payload(claims)
    header = {"alg": _ALG, "kid": key.kid, "typ": "JWT"}
    token = jws.serialize_compact(header, payload, _jose_key(key, private=True), algorithms=[_ALG])
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError(
            "token would exceed the size limit",
            field="token",
            expected=f"<= {MAX_TOKEN_BYTES} bytes",
            actual=len(token),
            hint="leave bulky evidence (additional-evidence, certificates) out of the claims",
        )
    # The claims signed are JSON values already (EarInput holds JSON round trips): they read
    # back from the token as they are.
    return token, _ear_claims(key.kid, claims)


@dataclass(frozen=True, slots=True)
class EarAppraisal:
    """One verified submodule appraisal."""

    status: str
    trustworthiness_vector: Mapping[str, int]
    policy_id: str | None
    annotated_evidence: Mapping[str, Any]
    sim: bool

    @property
    def tee_pubkey(self) -> Mapping[str, Any] | None:
        runtime = self.annotated_evidence.get("runtime_data_claims")
        key = runtime.get("tee-pubkey") if isinstance(runtime, Mapping) else None
        return key if isinstance(key, Mapping) else None


@dataclass(frozen=True, slots=True)
class EarClaims:
    """A verified EAR: its signer, times and appraisals. ``raw`` is the whole claims set."""

    kid: str
    profile: str
    issued_at: datetime
    expires_at: datetime
    verifier_id: Mapping[str, Any]
    submods: Mapping[str, EarAppraisal]
    nonce: str | None
    issuer: str | None
    raw: Mapping[str, Any] = field(repr=False)

    def appraisal(self, submod: str = DEFAULT_SUBMOD) -> EarAppraisal:
        try:
            return self.submods[submod]
        except KeyError:
            raise TokenError(
                "token has no such submodule",
                field="submods",
                expected=submod,
                actual=", ".join(self.submods),
            ) from None

    @property
    def tee_pubkey(self) -> Mapping[str, Any] | None:
        """The TEE public key at Trustee's EAR path (``cpu0``'s runtime data claims)."""
        appraisal = self.submods.get(DEFAULT_SUBMOD)
        return appraisal.tee_pubkey if appraisal is not None else None


def _invalid(message: str, **kwargs: Any) -> TokenError:
    return TokenError(message, code=TOKEN_INVALID, **kwargs)


def _json_object(segment: str, name: str) -> dict[str, Any]:
    try:
        value = json.loads(b64url_decode(segment))
    except ValueError:
        raise _invalid(f"JWT {name} is not base64url JSON", field=name) from None
    if not isinstance(value, dict):
        raise _invalid(f"JWT {name} is not a JSON object", field=name, actual=type(value).__name__)
    return value


def _find_jwk(source: Mapping[str, Any], kid: str) -> ECKey | None:
    keys = source.get("keys")
    if not isinstance(keys, list):
        raise _invalid("JWKS has no keys array", field="jwks.keys")
    for jwk in keys:
        if not isinstance(jwk, Mapping) or jwk.get("kid") != kid:
            continue
        if jwk.get("kty") != "EC" or jwk.get("crv") != "P-256" or "d" in jwk:
            return None
        if jwk.get("alg", _ALG) != _ALG or jwk.get("use", "sig") != "sig":
            return None
        try:
            return ECKey.import_key({k: jwk[k] for k in ("kty", "crv", "x", "y")})
        except (JoseError, ValueError, KeyError):
            return None
    return None


def _timestamp(claims: Mapping[str, Any], name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid("time claim missing or not a NumericDate", field=name, actual=repr(value))
    if not 0 <= value <= _MAX_NUMERIC_DATE:
        raise _invalid(
            "time claim out of range",
            field=name,
            expected=f"0..{_MAX_NUMERIC_DATE}",
            actual=repr(value)[:40],
        )
    return int(value)


def verify_ear(
    token: str,
    jwks_or_keyring: Mapping[str, Any] | Keyring,
    now: datetime,
    *,
    leeway: timedelta = DEFAULT_LEEWAY,
    issuer: str | None = None,
    nonce: str | None = None,
) -> EarClaims:
    """Verify an EAR JWT: ES256 only, known kid, signature, times (with ``leeway``), profile.

    ``issuer``/``nonce``, when given, must equal the token's ``iss``/``eat_nonce``.
    """
    _numeric_date(now, "now")  # refuses a naive time
    # 1. Bounded, well-formed compact JWS.
    if not isinstance(token, str) or not token.isascii():
        raise _invalid("token is not an ASCII string", field="token")
    if len(token) > MAX_TOKEN_BYTES:
        raise _invalid(
            "token exceeds the size limit",
            field="token",
            expected=f"<= {MAX_TOKEN_BYTES} bytes",
            actual=len(token),
        )
    parts = token.split(".")
    if len(parts) != 3:
        raise _invalid(
            "token is not a compact JWS", field="token", expected="3 parts", actual=len(parts)
        )
    header = _json_object(parts[0], "header")

    # 2. Algorithm: ES256 and nothing else (no "none", no HS*, no RS*).
    alg = header.get("alg")
    if alg != _ALG:
        raise TokenError(
            "token signing algorithm refused",
            code=TOKEN_ALG_REFUSED,
            field="alg",
            expected=_ALG,
            actual=repr(alg),
        )
    if "crit" in header:
        raise _invalid(
            "token carries critical header parameters", field="crit", actual=header["crit"]
        )

    # 3. Known, still-published key.
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError(
            "token names no key", code=TOKEN_UNKNOWN_KEY, field="kid", actual=repr(kid)
        )
    key: ECKey | None
    if isinstance(jwks_or_keyring, Keyring):
        signing_key = jwks_or_keyring.get(kid, now)
        key = None if signing_key is None else _jose_key(signing_key, private=False)
    else:
        key = _find_jwk(jwks_or_keyring, kid)
    if key is None:
        raise TokenError(
            "token signed by a key this service does not publish",
            code=TOKEN_UNKNOWN_KEY,
            field="kid",
            actual=kid,
            hint="a token from another service, or from a key retired after its tokens expired",
        )
    if not isinstance(key.raw_value, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        raise TokenError("key is not an EC key", code=TOKEN_UNKNOWN_KEY, field="kid", actual=kid)

    # 4. Signature.
    try:
        jws.deserialize_compact(token, key, algorithms=[_ALG])
    except (JoseError, ValueError) as exc:
        raise _invalid(
            "token signature does not verify", field="signature", actual=type(exc).__name__
        ) from None
    claims = _json_object(parts[1], "payload")
    # 5. Times: exp required, iat required, nbf optional.
    _check_times(claims, now, leeway)
    # 6. EAR shape.
    ear = _ear_claims(kid, claims)
    check_ear_binding(ear, issuer=issuer, nonce=nonce)
    return ear


def check_ear_times(ear: EarClaims, now: datetime, leeway: timedelta = DEFAULT_LEEWAY) -> None:
    """Check a verified EAR's ``exp``/``iat``/``nbf`` against ``now`` again (a remembered
    token: its signature was checked once, its times are checked at every use)."""
    _numeric_date(now, "now")
    _check_times(ear.raw, now, leeway)


def check_ear_binding(ear: EarClaims, *, issuer: str | None, nonce: str | None) -> None:
    """``issuer``/``nonce``, when given, must equal the token's ``iss``/``eat_nonce``."""
    if issuer is not None and ear.raw.get("iss") != issuer:
        raise _invalid(
            "token issuer differs", field="iss", expected=issuer, actual=repr(ear.raw.get("iss"))
        )
    token_nonce = ear.raw.get("eat_nonce")
    if nonce is not None and token_nonce != nonce:
        raise _invalid(
            "token nonce differs", field="eat_nonce", expected=nonce, actual=repr(token_nonce)
        )


def _check_times(claims: Mapping[str, Any], now: datetime, leeway: timedelta) -> None:
    now_ts = now.astimezone(UTC).timestamp()
    slack = leeway.total_seconds()
    exp = _timestamp(claims, "exp")
    iat = _timestamp(claims, "iat")
    nbf = _timestamp(claims, "nbf") if "nbf" in claims else None
    if now_ts > exp + slack:
        raise TokenError(
            "token has expired",
            code=TOKEN_EXPIRED,
            field="exp",
            expected=f"> {now.astimezone(UTC).isoformat()} (leeway {leeway})",
            actual=datetime.fromtimestamp(exp, UTC).isoformat(),
        )
    if iat > now_ts + slack:
        raise _invalid(
            "token was issued in the future",
            field="iat",
            expected=f"<= {now.astimezone(UTC).isoformat()} (leeway {leeway})",
            actual=datetime.fromtimestamp(iat, UTC).isoformat(),
        )
    if nbf is not None and nbf > now_ts + slack:
        raise _invalid(
            "token is not valid yet",
            field="nbf",
            expected=f"<= {now.astimezone(UTC).isoformat()} (leeway {leeway})",
            actual=datetime.fromtimestamp(nbf, UTC).isoformat(),
        )


def _ear_claims(kid: str, claims: dict[str, Any]) -> EarClaims:
    """The EAR shape of a claims set whose times were parsed (exp and iat present)."""
    if claims.get("eat_profile") != EAR_PROFILE:
        raise _invalid(
            "token is not an EAR of this profile",
            field="eat_profile",
            expected=EAR_PROFILE,
            actual=repr(claims.get("eat_profile")),
        )
    verifier_id = claims.get("ear.verifier-id")
    if not isinstance(verifier_id, dict):
        raise _invalid("token has no verifier id", field="ear.verifier-id")
    token_nonce = claims.get("eat_nonce")
    raw_submods = claims.get("submods")
    if not isinstance(raw_submods, dict) or not raw_submods:
        raise _invalid("token has no submodule appraisals", field="submods")
    submods: dict[str, EarAppraisal] = {}
    for name, body in raw_submods.items():
        where = f"submods.{name}"
        if not isinstance(body, dict):
            raise _invalid("appraisal is not an object", field=where)
        status = body.get("ear.status")
        if status not in EAR_STATUSES:
            raise _invalid(
                "appraisal status unknown",
                field=f"{where}.ear.status",
                expected=" | ".join(EAR_STATUSES),
                actual=repr(status),
            )
        vector = body.get("ear.trustworthiness-vector", {})
        if not isinstance(vector, dict):
            raise _invalid(
                "trustworthiness vector is not an object",
                field=f"{where}.ear.trustworthiness-vector",
            )
        _check_vector(vector, TOKEN_INVALID)
        policy_id = body.get("ear.appraisal-policy-id")
        evidence = body.get("ear.veraison.annotated-evidence", {})
        if not isinstance(evidence, dict):
            raise _invalid(
                "annotated evidence is not an object",
                field=f"{where}.ear.veraison.annotated-evidence",
            )
        submods[name] = EarAppraisal(
            status=status,
            trustworthiness_vector=MappingProxyType(vector),
            policy_id=policy_id if isinstance(policy_id, str) else None,
            annotated_evidence=MappingProxyType(evidence),
            sim=body.get("nacre.sim") is True,
        )
    return EarClaims(
        kid=kid,
        profile=EAR_PROFILE,
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        verifier_id=MappingProxyType(verifier_id),
        submods=MappingProxyType(submods),
        nonce=token_nonce if isinstance(token_nonce, str) else None,
        issuer=claims.get("iss") if isinstance(claims.get("iss"), str) else None,
        raw=MappingProxyType(claims),
    )
