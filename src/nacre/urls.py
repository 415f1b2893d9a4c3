"""The one rule for service URLs nacre talks to: https, or plain http only to a loopback host."""

from __future__ import annotations

import ipaddress
import urllib.parse

from nacre.errors import UsageError

__all__ = ["check_service_url", "is_loopback"]


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_service_url(
    url: str, *, field: str, subject: str, hint: str, allow_query: bool = True
) -> str:
    """``url`` if it is https (or http to loopback), with a host and no credentials (and, unless
    ``allow_query``, no query or fragment); else a UsageError saying "``subject`` must be ..."."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    problem = None
    if parts.scheme not in ("https", "http") or not host:
        problem = "an https:// URL with a host"
    elif parts.scheme == "http" and not is_loopback(host):
        problem = "https:// (plain http:// is accepted only for a loopback host)"
    elif parts.username is not None or parts.password is not None:
        problem = "a URL without user:password@ credentials"
    elif not allow_query and (parts.query or parts.fragment):
        problem = "a URL without query or fragment"
    if problem is not None:
        raise UsageError(
            f"{subject} must be {problem}", field=field, expected=problem, actual=url, hint=hint
        )
    return url
