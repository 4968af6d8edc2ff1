"""Service logging: masking, redaction, the Call-ID context, the journal format."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest
import trio

from eko_rtp.service.logs import (
    Sanitizer,
    call_context,
    configure_logging,
    current_call_id,
    mask_phone,
    stream_is_journal,
)

API_KEY = "sk_3f9a1c0e7b5d4a2f8e6c1b0a9d7e5f3c"


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+33612345678", "+*******5678"),
        ("06 12 34 56 78", "** ** ** 56 78"),
        ("+1 (415) 555-0199", "+* (***) ***-0199"),
        ("5678", "5678"),
        ("", ""),
    ],
)
def test_mask_phone(number, expected):
    assert mask_phone(number) == expected


def test_mask_phone_keep():
    assert mask_phone("+33612345678", keep=2) == "+*********78"
    assert mask_phone("+33612345678", keep=0) == "+***********"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("caller +33612345678 answered", "caller +*******5678 answered"),
        ("caller +33 6 12 34 56 78 answered", "caller +** * ** ** 56 78 answered"),
        ("lookup 0612345678 -> ticket 42", "lookup ******5678 -> ticket 42"),
        ("lookup 06.12.34.56.78", "lookup **.**.**.56.78"),
        ("From: <sip:33612345678@trunk.example>;tag=9fxced76sl", "From: <sip:*******5678@trunk.example>;tag=9fxced76sl"),
        ("To: <sips:0612345678@eko>", "To: <sips:******5678@eko>"),
        ("P-Asserted-Identity: <tel:33612345678>", "P-Asserted-Identity: <tel:*******5678>"),
        # Not phone numbers: left alone.
        ("Call-ID a84b4c76e66710@pc33.example.com", "Call-ID a84b4c76e66710@pc33.example.com"),
        ("ssrc 3735928559 seq 65535 ts 4294967295", "ssrc 3735928559 seq 65535 ts 4294967295"),
        ("rtp ports 20000-29999, 2024-05-01", "rtp ports 20000-29999, 2024-05-01"),
        ("greeting after 0.012345678 s", "greeting after 0.012345678 s"),
        ("06123456789012 is too long to be French", "06123456789012 is too long to be French"),
        # Secrets, by value and by header name.
        (f"using key {API_KEY}", "using key [redacted]"),
        ("headers {'xi-api-key': 'other-secret-value'}", "headers {'xi-api-key': '[redacted]'}"),
        ("xi-api-key: abc123", "xi-api-key: [redacted]"),
        # Forged lines from the network are escaped, so one event stays one line.
        ("bad header 'X\r\nINFO forged: line'", "bad header 'X\\r\\nINFO forged: line'"),
        ("nul \x00 and bell \x07", "nul \\x00 and bell \\x07"),
    ],
)
def test_sanitizer(message, expected):
    record = logging.LogRecord("eko_rtp.test", logging.INFO, __file__, 1, "%s", (message,), None)
    assert Sanitizer(secrets=[API_KEY]).filter(record) is True
    assert record.getMessage() == expected


def test_numbers_kept_when_configured():
    record = logging.LogRecord("eko_rtp.test", logging.INFO, __file__, 1, "caller %s key %s", ("+33612345678", API_KEY), None)
    Sanitizer(secrets=[API_KEY, None, ""], mask_numbers=False).filter(record)
    assert record.getMessage() == "caller +33612345678 key [redacted]"


@pytest.fixture
def journal_log(tmp_path):
    """Configure logging onto a real file that $JOURNAL_STREAM names, like journald's socket."""
    path = tmp_path / "journal"
    with open(path, "w+", encoding="utf-8") as stream:
        status = os.fstat(stream.fileno())
        environ = {"JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}"}
        handler = configure_logging(level="DEBUG", secrets=[API_KEY], stream=stream, environ=environ)
        try:
            yield lambda: path.read_text(encoding="utf-8")
        finally:
            logging.getLogger().removeHandler(handler)


def test_journal_lines(journal_log):
    logger = logging.getLogger("eko_rtp.test")
    logger.info("server ready")
    with call_context("a84b4c76e66710@pc33"):
        logger.warning("caller %s unknown to the CRM", "+33612345678")
        logger.error("tts failed with key %s", API_KEY)
    logger.debug("idle")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert journal_log() == (
        "<6>INFO eko_rtp.test: server ready\n"
        "<4>WARNING eko_rtp.test [call=a84b4c76e66710@pc33]: caller +*******5678 unknown to the CRM\n"
        "<3>ERROR eko_rtp.test [call=a84b4c76e66710@pc33]: tts failed with key [redacted]\n"
        "<7>DEBUG eko_rtp.test: idle\n"
    )


def test_secrets_and_numbers_never_reach_a_traceback(journal_log):
    try:
        raise RuntimeError(f"401 for key {API_KEY} calling +33612345678")
    except RuntimeError:
        logging.getLogger("eko_rtp.test").exception("render failed")
    text = journal_log()
    assert text.startswith("<3>ERROR eko_rtp.test: render failed\nTraceback (most recent call last):\n")
    assert text.endswith("RuntimeError: 401 for key [redacted] calling +*******5678\n")
    assert API_KEY not in text and "612345678" not in text


def test_plain_stderr_has_timestamps():
    stream = io.StringIO()
    handler = configure_logging(stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    try:
        logging.getLogger("eko_rtp.test").info("hello")
    finally:
        logging.getLogger().removeHandler(handler)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO eko_rtp.test: hello\n", stream.getvalue())


def test_reconfiguring_replaces_the_handler():
    first = configure_logging(stream=io.StringIO())
    second = configure_logging(stream=io.StringIO())
    try:
        root = logging.getLogger().handlers
        assert second in root and first not in root
    finally:
        logging.getLogger().removeHandler(second)


@pytest.mark.parametrize("value", ["", "garbage", "1:x"])
def test_not_the_journal(tmp_path, value):
    with open(tmp_path / "file", "w") as stream:
        assert stream_is_journal(stream, {"JOURNAL_STREAM": value}) is False
    assert stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"}) is False


async def test_call_id_follows_trio_tasks():
    seen = {}

    async def media(name):
        await trio.sleep(0)
        seen[name] = current_call_id()

    async def call(call_id):
        with call_context(call_id):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(media, call_id + "/media")
                nursery.start_soon(media, call_id + "/dtmf")
            seen[call_id] = current_call_id()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, "one@eko")
        nursery.start_soon(call, "two@eko")
    assert current_call_id() is None
    assert seen == {
        "one@eko": "one@eko",
        "one@eko/media": "one@eko",
        "one@eko/dtmf": "one@eko",
        "two@eko": "two@eko",
        "two@eko/media": "two@eko",
        "two@eko/dtmf": "two@eko",
    }


def test_journal_detected_in_a_real_process():
    """A child process whose stderr is the stream $JOURNAL_STREAM names logs without time."""
    read_end, write_end = os.pipe()
    status = os.fstat(write_end)
    program = (
        "import logging; from eko_rtp.service.logs import configure_logging, call_context\n"
        "configure_logging()\n"
        "with call_context('c1@eko'):\n"
        "    logging.getLogger('eko_rtp.server').info('call from %s', '+33612345678')\n"
    )
    environ = dict(os.environ, JOURNAL_STREAM=f"{status.st_dev}:{status.st_ino}")
    child = subprocess.run([sys.executable, "-c", program], stderr=write_end, env=environ, timeout=30)
    os.close(write_end)
    with os.fdopen(read_end, encoding="utf-8") as output:
        assert output.read() == "<6>INFO eko_rtp.server [call=c1@eko]: call from +*******5678\n"
    assert child.returncode == 0


def test_a_bad_format_is_an_error_line_not_an_exception():
    stream = io.StringIO()
    handler = configure_logging(stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    try:
        record = logging.LogRecord("eko_rtp.test", logging.INFO, __file__, 1, "caller %s pressed %d",
                                   ("+33612345678",), None)  # one argument short
        handler.handle(record)  # not through the root logger: pytest's own handler raises on it
    finally:
        logging.getLogger().removeHandler(handler)
    assert stream.getvalue().endswith(
        "INFO eko_rtp.test: unformattable log message 'caller %s pressed %d' with 1 argument(s):"
        " TypeError: not enough arguments for format string\n")
