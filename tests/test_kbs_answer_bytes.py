"""The KBS answers' lean rendering writes the bytes Starlette would: the session cookie header
and the JSON bodies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.responses import JSONResponse

from nacre.server.kbs import KBS_SESSION_COOKIE, _KbsJson, _set_cookie


def _starlette_cookie(session_id: str, expires: datetime) -> list[tuple[bytes, bytes]]:
    r = JSONResponse({})
    r.set_cookie(
        KBS_SESSION_COOKIE, session_id, expires=expires, path="/", httponly=True, samesite="strict"
    )
    return [h for h in r.raw_headers if h[0] == b"set-cookie"]


@pytest.mark.parametrize(
    "session_id",
    ["0123456789abcdef0123456789abcdef", "a", "A.b:c-d_e", "x" * 128, "bad;id", "sp ace", 'q"t'],
)
@pytest.mark.parametrize("micro", [0, 999_999])
def test_cookie_header_is_starlettes(session_id: str, micro: int) -> None:
    expires = datetime(2026, 11, 29, 19, 0, 5, micro, tzinfo=UTC)
    r = JSONResponse({})
    _set_cookie(r, session_id, expires)
    assert [h for h in r.raw_headers if h[0] == b"set-cookie"] == _starlette_cookie(
        session_id, expires
    )


def test_cookie_dates_across_many_seconds() -> None:
    start = datetime(2026, 12, 31, 23, 59, 0, tzinfo=UTC)
    for step in range(0, 200, 7):
        expires = start + timedelta(seconds=step)
        r = JSONResponse({})
        _set_cookie(r, "abc", expires)
        assert [h for h in r.raw_headers if h[0] == b"set-cookie"] == _starlette_cookie(
            "abc", expires
        )


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(_json)
def test_json_body_is_starlettes(content: Any) -> None:
    assert _KbsJson(content).body == JSONResponse(content).body
