"""The init container of confidential pods: fetch secrets through the KBS, write them to files.

The admission webhook injects ``nacre k8s init-secrets --kbs-url URL --secret
repo/type/tag=/run/nacre/secrets/<file> ...`` as the pod's first init container. It attests with
the pod's own TEE (:func:`nacre.tee.current`, i.e. ``NACRE_TEE``), fetches every resource with
:class:`nacre.sdk.KbsClient`, and only when all of them arrived writes each one atomically with
mode 0400 into the in-memory emptyDir that the app containers mount read-only. Any failure is a
:class:`SecretFetchError` naming the resource, and the command exits non-zero, so the pod never
starts without its secrets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Protocol

from nacre.errors import NacreError, UsageError
from nacre.sdk import parse_resource_path

__all__ = [
    "DEFAULT_OUT_DIR",
    "MAX_SECRETS",
    "SECRET_FILE_MODE",
    "ResourceFetcher",
    "SecretFetchError",
    "SecretSpec",
    "fetch_secrets",
    "parse_secret_list",
    "parse_secret_spec",
    "write_secret",
]

_log = logging.getLogger("nacre.k8s.initsecrets")

#: The emptyDir the webhook mounts (see ``nacre.k8s.webhook.config.SECRETS_DIR``).
DEFAULT_OUT_DIR: Final = "/run/nacre/secrets"
#: Owner read-only: the app container runs as the same user and only reads them.
SECRET_FILE_MODE: Final = 0o400
#: Directories made below the output directory for nested file names.
SECRET_DIR_MODE: Final = 0o700
#: Secrets one pod may ask for (the annotation is also capped by the API server's 256 KiB).
MAX_SECRETS: Final = 64


class SecretFetchError(NacreError):
    """A resource could not be fetched or written; the pod must not start."""

    default_code = "SECRET_FETCH_FAILED"


class ResourceFetcher(Protocol):
    """What :func:`fetch_secrets` needs from a KBS client (:class:`nacre.sdk.KbsClient`)."""

    def get_resource(self, path: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class SecretSpec:
    """One ``repo/type/tag=/path`` pair: the KBS resource and the absolute file it goes to."""

    resource: str
    path: PurePosixPath

    def __str__(self) -> str:
        return f"{self.resource}={self.path}"


def parse_secret_spec(text: str, out_dir: str = DEFAULT_OUT_DIR) -> SecretSpec:
    """``repo/type/tag=/run/nacre/secrets/name`` -> :class:`SecretSpec`.

    The resource must be a KBS ``repo/type/tag``; the path absolute, inside ``out_dir`` (not the
    directory itself) and free of ``.``/``..``/empty segments, so no annotation can make the init
    container write anywhere else.
    """
    resource, sep, path_text = text.strip().partition("=")
    if not sep:
        raise UsageError(
            "a secret is given as repo/type/tag=/path",
            field="secret",
            expected=f"e.g. models/llm/key={out_dir}/model.key",
            actual=text[:200],
        )
    try:
        repo, rtype, tag = parse_resource_path(resource.strip())
    except UsageError as exc:
        raise UsageError(
            f"the secret {text.strip()[:200]!r} does not name a KBS resource",
            field="secret",
            expected=exc.expected,
            actual=resource[:200],
        ) from None
    base = PurePosixPath(out_dir)
    raw = path_text.strip()
    parts = raw.split("/")
    problem = None
    if not raw.startswith("/"):
        problem = "an absolute path"
    elif any(p in ("", ".", "..") for p in parts[1:]):
        problem = "a path without empty, '.' or '..' segments"
    else:
        path = PurePosixPath(raw)
        if path == base or base not in path.parents:
            problem = f"a file inside {out_dir}"
    if problem is not None:
        raise UsageError(
            f"the secret file for {repo}/{rtype}/{tag} must be {problem}",
            field="secret",
            expected=f"{out_dir}/<file name>",
            actual=raw[:200],
        )
    return SecretSpec(f"{repo}/{rtype}/{tag}", PurePosixPath(raw))


def parse_secret_list(
    items: Sequence[str], out_dir: str = DEFAULT_OUT_DIR
) -> tuple[SecretSpec, ...]:
    """Every spec of ``items``; at least one, at most :data:`MAX_SECRETS`, no file twice."""
    if not items:
        raise UsageError(
            "no secret to fetch",
            field="secret",
            expected="at least one repo/type/tag=/path",
            actual="none",
        )
    if len(items) > MAX_SECRETS:
        raise UsageError(
            "too many secrets for one pod",
            field="secret",
            expected=f"at most {MAX_SECRETS} (MAX_SECRETS)",
            actual=str(len(items)),
        )
    specs = tuple(parse_secret_spec(item, out_dir) for item in items)
    seen: set[PurePosixPath] = set()
    for spec in specs:
        if spec.path in seen:
            raise UsageError(
                "two secrets are written to the same file",
                field="secret",
                expected="one file per secret",
                actual=str(spec.path),
            )
        seen.add(spec.path)
    return specs


def write_secret(path: Path, data: bytes, mode: int = SECRET_FILE_MODE) -> None:
    """Write ``data`` to ``path`` atomically: a private temporary file beside it, fsync, rename.

    A reader sees the old file or the whole new one, never a part; the temporary file never has
    wider permissions than ``mode``.
    """
    path.parent.mkdir(mode=SECRET_DIR_MODE, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".nacre-", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as out:
            fd = -1
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _local_path(spec: SecretSpec, out_dir: Path, base: str) -> Path:
    relative = spec.path.relative_to(PurePosixPath(base))
    return out_dir.joinpath(*relative.parts)


def fetch_secrets(
    client: ResourceFetcher,
    specs: Sequence[SecretSpec],
    *,
    out_dir: str = DEFAULT_OUT_DIR,
    root: Path | None = None,
) -> tuple[Path, ...]:
    """Fetch every spec, then write each file; the written paths in order.

    Nothing is written unless every resource arrived. ``root`` relocates ``out_dir`` (tests run
    it under a temporary directory; production leaves it None).
    """
    directory = Path(out_dir) if root is None else root / out_dir.lstrip("/")
    fetched: list[tuple[SecretSpec, bytes]] = []
    for spec in specs:
        try:
            data = client.get_resource(spec.resource)
        except NacreError as exc:
            raise SecretFetchError(
                f"cannot fetch the secret {spec.resource} for {spec.path}: {exc.message}",
                field=exc.field or "secret",
                expected=exc.expected or f"the KBS releases {spec.resource}",
                actual=exc.actual or exc.code,
                hint=exc.hint,
            ) from exc
        fetched.append((spec, data))
    written: list[Path] = []
    for spec, data in fetched:
        target = _local_path(spec, directory, out_dir)
        try:
            write_secret(target, data)
        except OSError as exc:
            raise SecretFetchError(
                f"cannot write the secret {spec.resource} to {spec.path}: {exc.strerror or exc}",
                field="secret",
                expected=f"a writable {out_dir}",
                actual=str(target),
            ) from exc
        _log.info("wrote secret %s to %s (%d bytes)", spec.resource, spec.path, len(data))
        written.append(target)
    return tuple(written)
