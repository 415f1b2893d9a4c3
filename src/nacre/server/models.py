"""Pydantic models of the HTTP edge only (request bodies and their OpenAPI schemas).

KBS bodies use Trustee's hyphenated member names (``extra-params``, ``runtime-data``,
``tee-pubkey``, ``tee-evidence``, ``init-data``) as aliases and accept members they do not name
(newer guest components send more), as Trustee's serde structs do.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AdminKeyBody",
    "AttestationRequest",
    "KbsAttestRequest",
    "KbsAuthRequest",
    "KbsRuntimeData",
    "PolicyBody",
    "ResourceBody",
]


class KbsAuthRequest(BaseModel):
    """``POST /kbs/v0/auth`` (kbs-types ``Request``)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    version: str
    tee: str
    extra_params: Any = Field(default=None, alias="extra-params")


class KbsRuntimeData(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")

    nonce: str
    tee_pubkey: dict[str, Any] = Field(alias="tee-pubkey")


class KbsAttestRequest(BaseModel):
    """``POST /kbs/v0/attest`` (kbs-types ``Attestation``)."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    runtime_data: KbsRuntimeData = Field(alias="runtime-data")
    tee_evidence: Any = Field(alias="tee-evidence")
    init_data: Any = Field(default=None, alias="init-data")


class AttestationRequest(BaseModel):
    """``POST /attestation/v1/{tee}``: base64 evidence, optional runtime data and policy id.

    ``runtime_data``: ``{"raw": base64}`` or ``{"structured": JSON}`` (hashed with
    ``hash_algorithm`` after RFC 8785 canonicalisation, zero-padded to 64 bytes, and required to
    equal the evidence's report_data), as Trustee's attestation service takes it.
    """

    model_config = ConfigDict(extra="forbid")

    evidence: str = Field(max_length=256 * 1024)
    runtime_data: dict[str, Any] | None = None
    hash_algorithm: str = "sha384"
    policy_id: str | None = None
    nonce: str | None = None


class ResourceBody(BaseModel):
    """``PUT /admin/v1/resources/{repo}/{type}/{tag}``: the secret in base64 and its policy."""

    model_config = ConfigDict(extra="forbid")

    data: str
    policy_id: str | None = None
    policy: str | None = None


class PolicyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str
    document: str


class AdminKeyBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwk: dict[str, str]
    roles: list[str]
