"""The node agent's loop: collect facts, GET the node, PATCH only our own keys, sleep, repeat.

One pass (:meth:`NodeAgent.sync_once`):

1. collect the node's facts and compute the own labels and annotations they justify;
2. ``GET /api/v1/nodes/{name}``;
3. compute the merge patch over our own keys (:func:`own_keys_patch`); nothing to change → no PATCH;
4. ``PATCH /api/v1/nodes/{name}`` with ``Content-Type: application/merge-patch+json``.

:meth:`NodeAgent.run` repeats passes every ``interval`` seconds until ``stop`` is set (the CLI sets
it on SIGTERM / SIGINT). API errors never end the loop: a pass that fails with a retryable status
(throttling, conflict, 5xx, unreachable) is retried with exponential backoff up to
``retry_attempts`` times; other failures (403 missing RBAC, 404 no such node) are logged with what
to do and the agent tries again at the next interval, since RBAC and nodes can be fixed without
restarting it. With ``once`` it makes a single pass and reports whether it succeeded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from kubernetes.client import ApiClient, CoreV1Api
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from nacre.errors import NacreError, UsageError
from nacre.k8s.apiclient import (
    API_TIMEOUT_SECONDS,
    ApiTarget,
    KubernetesApiError,
    api_error,
    read_json,
)
from nacre.k8s.nodeagent.attestation import CollateralSource
from nacre.k8s.nodeagent.facts import NodeMetadata, collect, desired_metadata
from nacre.k8s.nodeagent.labels import check_node_name
from nacre.k8s.nodeagent.patch import own_keys_patch

__all__ = [
    "DEFAULT_INTERVAL_SECONDS",
    "PATCH_CONTENT_TYPE",
    "RETRY_ATTEMPTS",
    "RETRY_INITIAL_SECONDS",
    "RETRY_MAX_SECONDS",
    "AgentConfig",
    "NodeAgent",
    "PassResult",
]

#: How often the node is re-examined and its labels refreshed.
DEFAULT_INTERVAL_SECONDS: Final = 300.0
#: Attempts of one pass when the API server answers with a retryable error.
RETRY_ATTEMPTS: Final = 5
#: First backoff delay; doubled after each failed attempt, capped at RETRY_MAX_SECONDS.
RETRY_INITIAL_SECONDS: Final = 1.0
RETRY_MAX_SECONDS: Final = 60.0
#: JSON merge patch (RFC 7386); see nacre.k8s.nodeagent.patch for why not strategic merge.
PATCH_CONTENT_TYPE: Final = "application/merge-patch+json"

_log = logging.getLogger("nacre.k8s.nodeagent")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    node_name: str
    root: Path = Path("/")
    interval: float = DEFAULT_INTERVAL_SECONDS
    collateral: CollateralSource | None = None
    #: Environment for nacre.tee.current (NACRE_TEE, NACRE_SIM_*); None: the process's.
    environ: Mapping[str, str] | None = None
    retry_attempts: int = RETRY_ATTEMPTS
    retry_initial: float = RETRY_INITIAL_SECONDS
    retry_max: float = RETRY_MAX_SECONDS

    def __post_init__(self) -> None:
        check_node_name(self.node_name)
        for name, value, minimum in (
            ("interval", self.interval, 0.0),
            ("retry_initial", self.retry_initial, 0.0),
            ("retry_max", self.retry_max, 0.0),
        ):
            if not value > minimum:
                raise UsageError(
                    f"{name} must be positive", field=name, expected="> 0", actual=str(value)
                )
        if self.retry_attempts < 1:
            raise UsageError(
                "retry_attempts must be at least 1",
                field="retry_attempts",
                expected=">= 1",
                actual=str(self.retry_attempts),
            )


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one pass did: the metadata it wanted and the patch it sent (None: nothing changed)."""

    desired: NodeMetadata
    patch: dict[str, Any] | None


class NodeAgent:
    """Publishes the node's TEE facts as ``nacre.dev/`` labels through the official client."""

    def __init__(
        self,
        api: ApiClient,
        config: AgentConfig,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._core = CoreV1Api(api)
        self._config = config
        self._clock = clock

    @property
    def config(self) -> AgentConfig:
        return self._config

    def _target(self, verb: str) -> ApiTarget:
        return ApiTarget(verb=verb, resource="nodes", name=self._config.node_name)

    def _get_node(self) -> dict[str, Any]:
        target = self._target("get")
        try:
            response = self._core.read_node(
                self._config.node_name,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except (ApiException, HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        return read_json(response, target)

    def _patch_node(self, patch: dict[str, Any]) -> None:
        target = self._target("patch")
        try:
            response = self._core.patch_node(
                self._config.node_name,
                patch,
                _content_type=PATCH_CONTENT_TYPE,
                _preload_content=False,
                _request_timeout=API_TIMEOUT_SECONDS,
            )
        except (ApiException, HTTPError, OSError) as exc:
            raise api_error(exc, target) from exc
        read_json(response, target)

    def sync_once(self) -> PassResult:
        """One pass; raises :class:`KubernetesApiError` (API) or :class:`NacreError` (facts)."""
        now = self._clock()
        facts = collect(
            self._config.root,
            collateral=self._config.collateral,
            now=now,
            environ=self._config.environ,
        )
        desired = desired_metadata(facts)
        node = self._get_node()
        patch = own_keys_patch(node, desired, now=now)
        fields = {"node": self._config.node_name, "labels": dict(desired.labels)}
        if patch is None:
            _log.info("labels current, nothing to patch", extra={**fields, "patched": False})
            return PassResult(desired, None)
        self._patch_node(patch)
        changed = sorted(patch["metadata"].get("labels", {}))
        _log.info(
            "patched %s",
            ", ".join(changed) or "the node report",
            extra={**fields, "patched": True, "changed": changed},
        )
        return PassResult(desired, patch)

    def pass_with_retries(self, stop: threading.Event) -> PassResult | None:
        """One pass, retried with backoff on retryable API errors; None when it failed."""
        delay = self._config.retry_initial
        attempts = self._config.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self.sync_once()
            except KubernetesApiError as exc:
                fields = {
                    "node": self._config.node_name,
                    "code": exc.code,
                    "status": exc.status,
                    "attempt": attempt,
                }
                if not exc.retryable:
                    _log.error("%s", exc, extra=fields)
                    return None
                if attempt == attempts:
                    _log.error("giving up after %d attempts: %s", attempt, exc, extra=fields)
                    return None
                _log.warning(
                    "attempt %d/%d failed, retrying in %.1fs: %s",
                    attempt,
                    attempts,
                    delay,
                    exc,
                    extra=fields,
                )
            except NacreError as exc:
                _log.error(
                    "cannot collect the node's facts: %s",
                    exc,
                    extra={"node": self._config.node_name, "code": exc.code},
                )
                return None
            if stop.wait(delay):
                return None
            delay = min(delay * 2, self._config.retry_max)
        return None

    def run(self, stop: threading.Event, *, once: bool = False) -> bool:
        """Passes every ``interval`` seconds until ``stop`` is set; with ``once``, a single pass.

        Returns whether the last pass succeeded. Unexpected exceptions are logged, never raised:
        the agent keeps its node's labels fresh for as long as it runs.
        """
        ok = False
        while not stop.is_set():
            try:
                ok = self.pass_with_retries(stop) is not None
            except Exception:
                _log.exception("node %s: unexpected error in a pass", self._config.node_name)
                ok = False
            if once or stop.wait(self._config.interval):
                break
        return ok
