"""KMS operations on SQLite and PostgreSQL: round trips per key type, rotation, import, export,
independent signature checks, and key material never in the database file."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from nacre.errors import LimitExceededError
from nacre.kms import (
    IMPORT_KEY_ID,
    CiphertextError,
    KeyImportError,
    KeyUsageError,
    Kms,
    parse_ciphertext,
)
from nacre.store import Store, open_store
from nacre.token import decrypt as jwe_decrypt
from nacre.token import encrypt_for_tee_key
from test_kms_support import ADMIN, KEY_USER, SGX_RULE, Attester, Clock, kms_on
from test_store_support import BACKENDS, make_sealer

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def kms(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Iterator[Kms]:
    with kms_on(str(request.param), tmp_path, clock) as (service, _store):
        yield service


def _public(kms: Kms, key_id: str, version: int | None = None) -> object:
    return serialization.load_pem_public_key(kms.public_key(key_id, version=version).encode())


# -- symmetric --------------------------------------------------------------------------------


def test_aes_encrypt_decrypt_data_key_wrap(kms: Kms) -> None:
    info = kms.create_key(ADMIN, "AES-256", name="aes")
    assert (info.type, info.state, info.current_version) == ("AES-256", "enabled", 1)
    ct = kms.encrypt(KEY_USER, "aes", b"hello", aad=b"ctx")
    assert (ct.key_id, ct.version, ct.algorithm) == ("aes", 1, "AES-256-GCM")
    header = parse_ciphertext(ct.ciphertext)
    assert (header.key_id, header.version) == ("aes", 1)
    assert kms.decrypt(KEY_USER, "aes", ct.ciphertext, aad=b"ctx").plaintext == b"hello"
    # AAD is bound; a flipped bit is refused; another key's ciphertext is refused by name.
    with pytest.raises(CiphertextError) as info_aad:
        kms.decrypt(KEY_USER, "aes", ct.ciphertext, aad=b"other")
    assert info_aad.value.field == "ciphertext.tag"
    flipped = bytearray(ct.ciphertext)
    flipped[-1] ^= 1
    with pytest.raises(CiphertextError):
        kms.decrypt(KEY_USER, "aes", bytes(flipped), aad=b"ctx")
    kms.create_key(ADMIN, "AES-256", name="aes2")
    with pytest.raises(CiphertextError) as other:
        kms.decrypt(KEY_USER, "aes2", ct.ciphertext, aad=b"ctx")
    assert (other.value.field, other.value.expected, other.value.actual) == (
        "ciphertext.key_id",
        "aes2",
        "aes",
    )
    # Data key: plaintext + its ciphertext, which decrypts back; repr hides the plaintext.
    dk = kms.generate_data_key(KEY_USER, "aes", aad=b"file-1")
    assert len(dk.plaintext) == 32
    assert dk.plaintext.hex() not in repr(dk)
    assert kms.decrypt(KEY_USER, "aes", dk.ciphertext, aad=b"file-1").plaintext == dk.plaintext
    assert len(kms.generate_data_key(KEY_USER, "aes", size=16).plaintext) == 16
    # Wrap / unwrap (AES-KWP): any length, round trip, tamper refused.
    secret = bytes(range(37))
    wrapped = kms.wrap(KEY_USER, "aes", secret)
    assert wrapped.algorithm == "AES-KWP"
    assert kms.unwrap(KEY_USER, "aes", wrapped.wrapped).plaintext == secret
    bad = bytearray(wrapped.wrapped)
    bad[-3] ^= 0x40
    with pytest.raises(CiphertextError):
        kms.unwrap(KEY_USER, "aes", bytes(bad))
    # A ciphertext is not a wrapped key and vice versa.
    with pytest.raises(CiphertextError) as kind:
        kms.unwrap(KEY_USER, "aes", ct.ciphertext)
    assert kind.value.field == "ciphertext.kind"
    # Operations that do not fit the type are usage errors.
    with pytest.raises(KeyUsageError):
        kms.sign(KEY_USER, "aes", b"m")
    with pytest.raises(KeyUsageError):
        kms.public_key("aes")
    with pytest.raises(LimitExceededError):
        kms.encrypt(KEY_USER, "aes", b"x" * (64 * 1024 + 1))


def test_rotation_keeps_old_ciphertexts_decryptable(kms: Kms, clock: Clock) -> None:
    from datetime import timedelta

    kms.create_key(ADMIN, "AES-256", name="aes", rotation_days=30)
    old = kms.encrypt(KEY_USER, "aes", b"v1 data")
    old_wrap = kms.wrap(KEY_USER, "aes", b"k" * 32)
    v2 = kms.rotate(ADMIN, "aes")
    assert v2.version == 2
    new = kms.encrypt(KEY_USER, "aes", b"v2 data")
    assert (old.version, new.version) == (1, 2)
    assert kms.decrypt(KEY_USER, "aes", old.ciphertext).plaintext == b"v1 data"
    assert kms.decrypt(KEY_USER, "aes", new.ciphertext).plaintext == b"v2 data"
    assert kms.unwrap(KEY_USER, "aes", old_wrap.wrapped).plaintext == b"k" * 32
    # A header edited to another version no longer authenticates (the header is in the AAD).
    edited = bytearray(old.ciphertext)
    edited[4 + 2 + 3 + 3] = 2  # last byte of the version field
    with pytest.raises(CiphertextError):
        kms.decrypt(KEY_USER, "aes", bytes(edited))
    # Scheduled rotation: nothing due now, due 30 days after the manual rotation.
    assert kms.rotate_due() == []
    clock.advance(timedelta(days=31))
    rotated = kms.rotate_due()
    assert [(v.key_id, v.version) for v in rotated] == [("aes", 3)]
    assert kms.rotate_due() == []
    assert kms.decrypt(KEY_USER, "aes", old.ciphertext).plaintext == b"v1 data"
    assert [v.version for v in kms.versions(ADMIN, "aes")] == [1, 2, 3]


def test_rsa_oaep_and_pss(kms: Kms) -> None:
    kms.create_key(ADMIN, "RSA-3072", name="rsa")
    public = _public(kms, "rsa")
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    ct = kms.encrypt(KEY_USER, "rsa", b"session key", aad=b"label")
    assert ct.algorithm == "RSA-OAEP-256"
    assert kms.decrypt(KEY_USER, "rsa", ct.ciphertext, aad=b"label").plaintext == b"session key"
    with pytest.raises(CiphertextError):
        kms.decrypt(KEY_USER, "rsa", ct.ciphertext, aad=b"other")
    with pytest.raises(KeyUsageError) as too_long:
        kms.encrypt(KEY_USER, "rsa", b"x" * 400)
    assert too_long.value.field == "plaintext"
    sig = kms.sign(KEY_USER, "rsa", b"message")
    assert sig.algorithm == "RSA_PSS_SHA_256"
    public.verify(
        sig.signature,
        b"message",
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
        hashes.SHA256(),
    )
    assert kms.verify(KEY_USER, "rsa", b"message", sig.signature).valid
    assert not kms.verify(KEY_USER, "rsa", b"massage", sig.signature).valid
    digest = hashlib.sha256(b"big file").digest()
    pre = kms.sign(KEY_USER, "rsa", digest, prehashed=True)
    assert kms.verify(KEY_USER, "rsa", b"big file", pre.signature).valid


@pytest.mark.parametrize(
    ("key_type", "curve", "algorithm"),
    [
        ("EC-P256", ec.SECP256R1, hashes.SHA256),
        ("EC-P384", ec.SECP384R1, hashes.SHA384),
    ],
)
def test_nist_ecdsa(
    kms: Kms, key_type: str, curve: type[ec.EllipticCurve], algorithm: type[hashes.HashAlgorithm]
) -> None:
    kms.create_key(ADMIN, key_type, name="ec")  # type: ignore[arg-type]
    public = _public(kms, "ec")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == curve().name
    sig = kms.sign(KEY_USER, "ec", b"payload")
    public.verify(sig.signature, b"payload", ec.ECDSA(algorithm()))
    size = public.key_size // 8
    assert sig.raw_rs is not None
    assert len(sig.raw_rs) == 2 * size
    assert utils.decode_dss_signature(sig.signature) == (
        int.from_bytes(sig.raw_rs[:size], "big"),
        int.from_bytes(sig.raw_rs[size:], "big"),
    )
    assert kms.verify(KEY_USER, "ec", b"payload", sig.signature).valid
    assert kms.verify(KEY_USER, "ec", b"payload", sig.raw_rs, signature_format="raw").valid
    assert not kms.verify(KEY_USER, "ec", b"payloaD", sig.signature).valid
    assert not kms.verify(KEY_USER, "ec", b"payload", b"\x30\x00garbage").valid
    with pytest.raises(CiphertextError):
        kms.verify(KEY_USER, "ec", b"payload", b"short", signature_format="raw")


def test_ed25519(kms: Kms) -> None:
    kms.create_key(ADMIN, "Ed25519", name="ed")
    public = _public(kms, "ed")
    assert isinstance(public, ed25519.Ed25519PublicKey)
    sig = kms.sign(KEY_USER, "ed", b"msg")
    assert sig.algorithm == "Ed25519"
    assert len(sig.signature) == 64
    public.verify(sig.signature, b"msg")
    assert kms.verify(KEY_USER, "ed", b"msg", sig.signature).valid
    assert not kms.verify(KEY_USER, "ed", b"msh", sig.signature).valid
    with pytest.raises(KeyUsageError):
        kms.sign(KEY_USER, "ed", b"m", low_s=True)
    with pytest.raises(KeyUsageError):
        kms.sign(KEY_USER, "ed", hashlib.sha256(b"m").digest(), prehashed=True)
    with pytest.raises(KeyUsageError):
        kms.encrypt(KEY_USER, "ed", b"m")


def test_secp256k1_independent_verify_low_s_and_rfc6979(kms: Kms) -> None:
    kms.create_key(ADMIN, "secp256k1", name="btc")
    public = _public(kms, "btc")
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert public.curve.name == "secp256k1"
    high_s_seen = False
    for i in range(64):
        if high_s_seen and i >= 4:
            break
        message = f"tx {i}".encode()
        plain = kms.sign(KEY_USER, "btc", message)
        public.verify(plain.signature, message, ec.ECDSA(hashes.SHA256()))  # independent check
        _, s_plain = utils.decode_dss_signature(plain.signature)
        high_s_seen |= s_plain > SECP256K1_N // 2
        low = kms.sign(KEY_USER, "btc", message, low_s=True)
        assert low.low_s
        r, s = utils.decode_dss_signature(low.signature)
        assert 1 <= s <= SECP256K1_N // 2
        public.verify(low.signature, message, ec.ECDSA(hashes.SHA256()))
        assert low.raw_rs == r.to_bytes(32, "big") + s.to_bytes(32, "big")
        assert kms.verify(KEY_USER, "btc", message, low.signature, require_low_s=True).valid
        # The high-S twin of a low-S signature verifies in plain ECDSA but not with require_low_s.
        twin = utils.encode_dss_signature(r, SECP256K1_N - s)
        public.verify(twin, message, ec.ECDSA(hashes.SHA256()))
        assert kms.verify(KEY_USER, "btc", message, twin).valid
        assert not kms.verify(KEY_USER, "btc", message, twin, require_low_s=True).valid
    assert high_s_seen  # random nonces: about half the plain signatures are high-S
    # Prehashed (e.g. a Keccak-256 digest computed by the wallet), deterministic RFC 6979 nonces.
    digest = hashlib.sha3_256(b"eth tx").digest()
    a = kms.sign(KEY_USER, "btc", digest, prehashed=True, low_s=True, deterministic=True)
    b = kms.sign(KEY_USER, "btc", digest, prehashed=True, low_s=True, deterministic=True)
    assert a.signature == b.signature
    public.verify(a.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    assert kms.verify(
        KEY_USER, "btc", digest, a.raw_rs or b"", prehashed=True, signature_format="raw"
    ).valid
    with pytest.raises(KeyUsageError):
        kms.sign(KEY_USER, "btc", b"not a digest", prehashed=True)


def test_old_versions_verify_after_rotation(kms: Kms) -> None:
    kms.create_key(ADMIN, "EC-P256", name="signer")
    old = kms.sign(KEY_USER, "signer", b"doc")
    kms.rotate(ADMIN, "signer")
    new = kms.sign(KEY_USER, "signer", b"doc")
    assert (old.version, new.version) == (1, 2)
    assert kms.public_key("signer", version=1) != kms.public_key("signer")
    assert kms.verify(KEY_USER, "signer", b"doc", old.signature, version=1).valid
    assert not kms.verify(KEY_USER, "signer", b"doc", old.signature).valid  # current is v2
    assert kms.verify(KEY_USER, "signer", b"doc", new.signature).valid


# -- import and export ------------------------------------------------------------------------


def test_import_as_jwe_to_the_import_key(kms: Kms) -> None:
    with pytest.raises(KeyImportError) as first:
        kms.import_key(ADMIN, "AES-256", {}, name="early")
    assert first.value.field == "import key"
    wrapping = kms.import_wrapping_key(ADMIN)
    assert wrapping.key_id == IMPORT_KEY_ID
    assert (wrapping.jwk["kty"], wrapping.jwk["crv"]) == ("EC", "P-384")
    assert kms.import_wrapping_key(ADMIN).jwk == wrapping.jwk  # created once
    # AES: raw 32 bytes. A ciphertext made elsewhere with the same key decrypts in the service.
    aes = AESGCM.generate_key(bit_length=256)
    kms.import_key(ADMIN, "AES-256", encrypt_for_tee_key(aes, wrapping.jwk), name="imported-aes")
    ct = kms.encrypt(KEY_USER, "imported-aes", b"data")
    header = parse_ciphertext(ct.ciphertext)
    body = header.body
    assert AESGCM(aes).decrypt(body[:12], body[12:], header.header) == b"data"
    # EC: PKCS#8; signatures verify with the original public key.
    private = ec.generate_private_key(ec.SECP256K1())
    der = private.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kms.import_key(ADMIN, "secp256k1", encrypt_for_tee_key(der, wrapping.jwk), name="imported-k1")
    sig = kms.sign(KEY_USER, "imported-k1", b"m")
    private.public_key().verify(sig.signature, b"m", ec.ECDSA(hashes.SHA256()))
    # Wrong type, wrong wrapping key, and clear material are refused.
    with pytest.raises(KeyImportError) as wrong_type:
        kms.import_key(ADMIN, "EC-P256", encrypt_for_tee_key(der, wrapping.jwk), name="x1")
    assert wrong_type.value.field == "material"
    stranger = ec.generate_private_key(ec.SECP384R1())
    from nacre.token import public_jwk

    with pytest.raises(KeyImportError):
        kms.import_key(ADMIN, "AES-256", encrypt_for_tee_key(aes, public_jwk(stranger)), name="x2")
    with pytest.raises(KeyImportError):
        kms.import_key(ADMIN, "AES-256", {"ciphertext": base64.b64encode(aes).decode()}, name="x3")
    # The import key is the service's: not listed, not usable, not a name users can take.
    assert IMPORT_KEY_ID not in {k.id for k in kms.list_keys(ADMIN)}
    rows = [(e.action, e.target, e.outcome) for e in kms.store.audit_entries()]
    assert ("kms.import", "early", "failed") in rows
    assert ("key.create", "imported-aes", "ok") in rows
    assert ("kms.import", "imported-aes", "allowed") in rows
    with pytest.raises(KeyUsageError):
        kms.sign(KEY_USER, IMPORT_KEY_ID, b"m")


def test_export_only_as_jwe_to_the_attested_key(kms: Kms, clock: Clock) -> None:
    attester = Attester.create(clock)
    kms.store.set_policy("enclave", "resource", SGX_RULE, actor="alice", now=clock.now)
    kms.create_key(ADMIN, "EC-P256", name="exp-ec", policy_id="enclave", exportable=True)
    kms.create_key(ADMIN, "AES-256", name="exp-aes", policy_id="enclave", exportable=True)
    workload, tee_private = attester.caller()
    exported = kms.export_to_tee(workload, "exp-ec")
    assert (exported.version, exported.format) == (1, "pkcs8-der")
    assert set(exported.jwe) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    der = jwe_decrypt(exported.jwe, tee_private)
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    # It is the key the service signs with.
    sig = kms.sign(workload, "exp-ec", b"m")
    key.public_key().verify(sig.signature, b"m", ec.ECDSA(hashes.SHA256()))
    aes = kms.export_to_tee(workload, "exp-aes")
    raw = jwe_decrypt(aes.jwe, tee_private)
    assert len(raw) == 32
    assert aes.format == "raw"
    ct = kms.encrypt(workload, "exp-aes", b"x")
    header = parse_ciphertext(ct.ciphertext)
    assert AESGCM(raw).decrypt(header.body[:12], header.body[12:], header.header) == b"x"
    # Another TEE key cannot open it.
    with pytest.raises(Exception, match="unwrap"):
        jwe_decrypt(exported.jwe, ec.generate_private_key(ec.SECP256R1()))


def _secret_parts(pkcs8: bytes) -> list[bytes]:
    """The private scalar / seed / primes inside a PKCS#8 key, as big-endian bytes."""
    key = serialization.load_der_private_key(pkcs8, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return [key.private_numbers().private_value.to_bytes((key.key_size + 7) // 8, "big")]
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return [key.private_bytes_raw()]
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    return [v.to_bytes((v.bit_length() + 7) // 8, "big") for v in (numbers.d, numbers.p, numbers.q)]


def test_key_material_never_in_the_database_file(tmp_path: Path, clock: Clock) -> None:
    db = tmp_path / "data" / "nacre.db"
    store: Store
    with open_store(f"sqlite:///{db}", sealer=make_sealer(tmp_path / "tee")) as store:
        kms = Kms(store, now_fn=clock)
        for key_type in ("AES-256", "EC-P256", "EC-P384", "Ed25519", "secp256k1", "RSA-3072"):
            name = key_type.lower().replace("-", "")
            kms.create_key(ADMIN, key_type, name=name)
            kms.rotate(ADMIN, name)
        wrapping = kms.import_wrapping_key(ADMIN)
        imported = AESGCM.generate_key(bit_length=256)
        kms.import_key(ADMIN, "AES-256", encrypt_for_tee_key(imported, wrapping.jwk), name="imp")
        needles = [imported]
        for info in store.list_keys():
            for version in range(1, info.current_version + 1):
                needles.append(store.key_material(info.id, version=version, now=clock.now)[1])
        needles.append(kms.generate_data_key(KEY_USER, "aes256").plaintext)
        needles += [s for n in needles if len(n) > 32 for s in _secret_parts(n)]
        raw = b"".join(p.read_bytes() for p in db.parent.glob("nacre.db*"))
        assert b"secp256k1" in raw  # the test sees what is written in clear
        for needle in needles:
            assert len(needle) >= 32
            assert needle not in raw
            assert base64.b64encode(needle) not in raw
            assert needle.hex().encode() not in raw
        # the audit log holds no material either
        text = "".join(repr(e) for e in store.audit_entries())
        for needle in needles:
            assert needle.hex() not in text
