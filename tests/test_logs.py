"""The JSON log lines: every line parses, phone numbers are masked wherever they appear, secrets never
show, ids stay readable, and the context's request id rides along."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from core import logs


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    buffer = io.StringIO()
    logs.setup("INFO", stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:] = saved
        root.setLevel(level)


def logged(buffer: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_phone_numbers_are_masked_in_every_kind_of_field(lines: io.StringIO) -> None:
    log = logging.getLogger("textback.test")
    log.info(
        "texting +1 (312) 555-0147 now",
        extra={
            "caller": "+13125550147",
            "note": "call back on 312.555.0147 please",
            "numbers": ["+13125550147"],
            "lead_id": "13125550147",  # an id field holding only digits is not an id: masked
            "count": 3,
            "ratio": 0.5,
            "flag": True,
            "nothing": None,
        },
    )
    (line,) = logged(lines)
    text = json.dumps(line)
    for digits in ("3125550147", "312) 555-0147", "312.555.0147"):
        assert digits not in text
    assert line["event"] == "texting +*********47 now"
    assert line["caller"] == "+*********47"
    assert line["note"] == "call back on +********47 please"
    assert line["lead_id"] == "+*********47"
    assert "+*********47" in str(line["numbers"])
    assert (line["count"], line["ratio"], line["flag"], line["nothing"]) == (3, 0.5, True, None)


def test_secrets_never_show_and_ids_stay_readable(lines: io.StringIO) -> None:
    log = logging.getLogger("textback.test")
    lead = "5b7e0a4e-1d2c-4f7a-9a8b-0c1d2e3f4a5b"
    call = "CA" + "0123456789abcdef" * 2
    for _ in range(2):  # the second line takes the field names' remembered kinds
        log.info(
            "secrets",
            extra={
                "auth_token": "tok-123",
                "Body": "hi from +13125550147",
                "message_text": "hello",
                "db_password": "pw",
                "lead_id": lead,
                "call_sid": call,
                "short": "12345678",
            },
        )
    for line in logged(lines):
        assert line["auth_token"] == line["Body"] == line["message_text"] == line["db_password"] == "***"
        assert (line["lead_id"], line["call_sid"], line["short"]) == (lead, call, "12345678")


def test_the_context_adds_the_request_id_unless_the_call_passes_its_own(lines: io.StringIO) -> None:
    log = logging.getLogger("textback.test")
    with logs.context(request_id="abcdef0123456789"):
        log.info("inside")
        log.info("own", extra={"request_id": "0000aaaa0000aaaa"})
    log.info("outside")
    inside, own, outside = logged(lines)
    assert inside["request_id"] == "abcdef0123456789"
    assert own["request_id"] == "0000aaaa0000aaaa"
    assert "request_id" not in outside
    assert str(inside["ts"]).endswith("Z")
    assert (inside["level"], inside["logger"]) == ("INFO", "textback.test")
