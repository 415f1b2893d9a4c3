"""The JSON log formatter writes what ``json`` and ``datetime.isoformat`` would, faster."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from nacre.server.json_logs import JsonLogFormatter, log_event


def _line(formatter: JsonLogFormatter, **attrs: object) -> dict[str, object]:
    record = logging.makeLogRecord({"msg": "an event", "name": "nacre.server", **attrs})
    text = formatter.format(record)
    assert "\n" not in text
    doc: dict[str, object] = json.loads(text)
    return doc


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800), min_size=1, max_size=50))
def test_times_are_isoformat_whatever_the_order(stamps: list[float]) -> None:
    formatter = JsonLogFormatter()  # one formatter: its per-second cache must never go stale
    for stamp in [*stamps, *sorted(stamps)]:
        expected = datetime.fromtimestamp(stamp, UTC).isoformat()
        assert _line(formatter, created=stamp)["time"] == expected


def test_time_rounding_into_the_next_second() -> None:
    formatter = JsonLogFormatter()
    for stamp in (1_700_000_001.5, 1_700_000_001.9999996, 1_700_000_002.0000004):
        expected = datetime.fromtimestamp(stamp, UTC).isoformat()
        assert _line(formatter, created=stamp)["time"] == expected


def test_fields_levels_and_values_orjson_refuses() -> None:
    formatter = JsonLogFormatter()
    doc = _line(
        formatter,
        levelname="WARNING",
        event="x.y",
        big=2**70,  # over 64 bits: the json module writes it
        text="é",
        obj=object(),  # not JSON: written as its str()
        _private="hidden",
    )
    assert (doc["level"], doc["logger"], doc["message"], doc["event"]) == (
        "warning",
        "nacre.server",
        "an event",
        "x.y",
    )
    assert doc["big"] == 2**70
    assert doc["text"] == "é"
    assert str(doc["obj"]).startswith("<object object")
    assert "_private" not in doc
    assert not {"pathname", "lineno", "thread", "args"} & set(doc)


def test_exceptions_are_written_with_their_traceback() -> None:
    formatter = JsonLogFormatter()
    try:
        raise ValueError("boom")
    except ValueError as exc:
        doc = _line(formatter, exc_info=(type(exc), exc, exc.__traceback__))
    assert "ValueError: boom" in str(doc["exception"])


def test_log_event_respects_the_level(caplog: object) -> None:
    import pytest

    assert isinstance(caplog, pytest.LogCaptureFixture)
    caplog.set_level(logging.WARNING, logger="nacre.server")
    log_event("quiet.one", value=1)
    log_event("loud.one", logging.ERROR, value=2)
    events = [getattr(r, "event", None) for r in caplog.records]
    assert events == ["loud.one"]
    assert caplog.records[0].__dict__["value"] == 2
