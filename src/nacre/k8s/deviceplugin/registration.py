"""Registering a device plugin with the kubelet, and noticing when the kubelet restarts.

The kubelet serves ``v1beta1.Registration`` on ``<plugin dir>/kubelet.sock``. A plugin first serves
its own ``DevicePlugin`` socket in the same directory, then calls ``Register`` with the API version,
its socket's file name and its resource name. A restarting kubelet recreates ``kubelet.sock`` (and
removes the other sockets of the directory) and forgets every plugin: the plugin must notice and
register again. :class:`SocketIdentity` is how it notices: the socket file's device, inode and
change time, which differ for a recreated file.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import grpc

from nacre.errors import NacreError
from nacre.k8s.deviceplugin import api_pb2, api_pb2_grpc

__all__ = [
    "API_VERSION",
    "DEFAULT_PLUGIN_DIR",
    "KUBELET_SOCKET",
    "REGISTER_TIMEOUT",
    "KubeletUnavailableError",
    "RegistrationRejectedError",
    "SocketIdentity",
    "register",
]

#: ``Version`` of k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/constants.go.
API_VERSION: Final = "v1beta1"
#: ``DevicePluginPath`` and the kubelet's socket name in it (same constants.go).
DEFAULT_PLUGIN_DIR: Final = Path("/var/lib/kubelet/device-plugins")
KUBELET_SOCKET: Final = "kubelet.sock"
#: How long one Register call may take before the kubelet counts as unreachable (seconds).
REGISTER_TIMEOUT: Final = 5.0

# Status codes that mean "nobody answered (yet)" rather than "the kubelet said no".
#: Failures of the call rather than refusals by the kubelet (which answers UNKNOWN with its
#: reason): retried on the next poll. CANCELLED is a kubelet stopping while the call was in flight
#: (its server cancels every call as it goes away).
_UNREACHABLE: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class KubeletUnavailableError(NacreError):
    """The kubelet's registration socket is absent or does not answer (retry later)."""

    default_code = "K8S_KUBELET_UNAVAILABLE"


class RegistrationRejectedError(NacreError):
    """The kubelet answered Register with an error (version not supported, resource name taken).

    The API expects a plugin to stop on this; retrying would only repeat the refusal.
    """

    default_code = "K8S_REGISTRATION_REJECTED"


@dataclass(frozen=True, slots=True)
class SocketIdentity:
    """Which file a unix socket path names: a recreated socket has another identity."""

    device: int
    inode: int
    ctime_ns: int

    @classmethod
    def of(cls, path: Path) -> SocketIdentity | None:
        """The identity of the socket at ``path``, or ``None`` when there is no socket there."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode):
            return None
        return cls(st.st_dev, st.st_ino, st.st_ctime_ns)


def register(
    plugin_dir: Path,
    *,
    endpoint: str,
    resource_name: str,
    options: api_pb2.DevicePluginOptions,
    timeout: float = REGISTER_TIMEOUT,
) -> None:
    """Call ``Registration.Register`` on ``plugin_dir/kubelet.sock`` for the socket ``endpoint``.

    Raises :class:`KubeletUnavailableError` when the kubelet cannot be reached and
    :class:`RegistrationRejectedError` when it refuses.
    """
    kubelet = plugin_dir / KUBELET_SOCKET
    if SocketIdentity.of(kubelet) is None:
        raise KubeletUnavailableError(
            "the kubelet's registration socket is not there",
            field="kubelet socket",
            expected=f"a unix socket at {kubelet}",
            actual="absent",
            hint="is --plugin-dir the kubelet's device-plugin directory, mounted into this pod?",
        )
    request = api_pb2.RegisterRequest(
        version=API_VERSION, endpoint=endpoint, resource_name=resource_name, options=options
    )
    with grpc.insecure_channel(f"unix:{kubelet}") as channel:
        stub = api_pb2_grpc.RegistrationStub(channel)
        try:
            stub.Register(request, timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            error_type = (
                KubeletUnavailableError if code in _UNREACHABLE else RegistrationRejectedError
            )
            raise error_type(
                f"Register for {resource_name} failed: {details}",
                field="Register",
                expected="OK",
                actual=code.name,
            ) from None
