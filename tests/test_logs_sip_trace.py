"""The SIP message trace (issue 14, friction): off by default; on, one masked, bounded,
rate-limited line per SIP message in and out, from the real server."""

from __future__ import annotations

import io
import logging

import pytest

from eko_rtp.service.logs import SipTrace, configure_logging
from raw_caller import place_call
from server_helpers import ServerProcess

INVITE = (
    b"INVITE sip:0170000000@127.0.0.1:5060 SIP/2.0\r\n"
    b'From: "06 12 34 56 78" <sip:0612345678@trunk.example>;tag=a1\r\n'
    b"To: <sip:+33170000000@127.0.0.1>\r\n"
    b"P-Asserted-Identity: <sip:33612345678@trunk.example;user=phone>, <tel:+33612345678>\r\n"
    b"Call-ID: c1@trunk\r\n"
    b"Content-Length: 0\r\n\r\n"
)


@pytest.fixture
def trace_log():
    """The service's handler (sanitizer and all) writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    output = io.StringIO()
    configure_logging(level="INFO", stream=output, environ={})
    yield output
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def trace_lines(output: io.StringIO) -> list[str]:
    return [line for line in output.getvalue().splitlines() if " eko_rtp.sip.trace: " in line]


def test_a_traced_message_is_one_line_with_every_number_masked(trace_log):
    SipTrace().message("received from", "udp", ("192.0.2.7", 5060), INVITE, now=10.0)
    [line] = trace_lines(trace_log)
    assert line.split(" INFO ", 1)[1] == (
        f"eko_rtp.sip.trace: received from UDP 192.0.2.7:5060, {len(INVITE)} bytes: "
        r"INVITE sip:******0000@127.0.0.1:5060 SIP/2.0\r\n"
        r'From: "** ** ** 56 78" <sip:******5678@trunk.example>;tag=a1\r\n'
        r"To: <sip:+*******0000@127.0.0.1>\r\n"
        r"P-Asserted-Identity: <sip:*******5678@trunk.example;user=phone>, <tel:+*******5678>\r\n"
        r"Call-ID: c1@trunk\r\nContent-Length: 0\r\n\r\n"
    )


def test_a_long_message_is_cut_and_says_so(trace_log):
    body = b"x" * 5000
    SipTrace(max_bytes=4096).message("sent to", "tcp", ("192.0.2.7", 5060), body, now=0.0)
    [line] = trace_lines(trace_log)
    assert line.endswith(f"sent to TCP 192.0.2.7:5060, 5000 bytes: {'x' * 4096} [truncated: 904 more byte(s) not traced]")


def test_sdes_keys_are_redacted_even_where_the_cut_falls_inside_one(trace_log):
    key = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk"
    body = f"v=0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20\r\n".encode()
    message = INVITE.replace(b"Content-Length: 0", b"Content-Length: %d" % len(body)) + body
    cut_inside = message.index(key.encode()) + 10
    SipTrace(max_bytes=cut_inside).message("received from", "udp", ("192.0.2.7", 5060), message, 1.0)
    SipTrace().message("received from", "udp", ("192.0.2.7", 5060), message, 1.0)
    [cut, whole] = trace_lines(trace_log)
    assert key[:6] not in cut and key[:6] not in whole
    assert "inline:[redacted]|2^20" in whole


def test_beyond_the_rate_the_rest_is_counted_and_summarised_once_a_second(trace_log):
    trace = SipTrace(per_second=100)
    for index in range(250):
        trace.message("received from", "udp", ("192.0.2.7", 5060), b"OPTIONS sip:x SIP/2.0\r\n\r\n", now=index * 0.001)
    assert len(trace_lines(trace_log)) == 100
    trace.flush(now=0.5)  # the second is not over: nothing yet
    assert len(trace_lines(trace_log)) == 100
    trace.flush(now=1.0)
    lines = trace_lines(trace_log)
    assert lines[-1].endswith("eko_rtp.sip.trace: 150 SIP message(s) not traced in the last second (limit 100 a second)")
    trace.message("received from", "udp", ("192.0.2.7", 5060), b"OPTIONS sip:x SIP/2.0\r\n\r\n", now=1.2)
    assert len(trace_lines(trace_log)) == 102 and trace.skipped_total == 150
    trace.flush(now=5.0)  # nothing skipped in that window: no summary
    assert len(trace_lines(trace_log)) == 102


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="max_bytes and per_second must be >= 1, got 0 and 100"):
        SipTrace(max_bytes=0)


def test_the_server_traces_nothing_by_default(built_cache):
    with ServerProcess(built_cache) as server:
        place_call(server.address, hold=0.5, caller="0612345678")
        server.wait_for_log(r"ended \(remote_bye\)")
    assert "eko_rtp.sip.trace" not in server.log()


@pytest.mark.parametrize("how", ["flag", "config"])
def test_the_server_traces_every_message_in_and_out_masked(built_cache, tmp_path, how):
    if how == "flag":
        extra = ["--sip-trace"]
    else:
        config = tmp_path / "eko-rtp.toml"
        config.write_text("[service]\nsip_trace = true\n", encoding="utf-8")
        extra = ["--config", str(config)]
    with ServerProcess(built_cache, *extra) as server:
        place_call(server.address, hold=0.5, caller="0612345678")
        server.wait_for_log(r"ended \(remote_bye\)")
        server.wait_for_log(r"eko_rtp\.sip\.trace.*: sent to UDP .*SIP/2\.0 200 OK.*CSeq: 2 BYE")
    lines = [line for line in server.lines if " eko_rtp.sip.trace" in line]  # with [call=...] inside a call
    received = [line for line in lines if ": received from UDP 127.0.0.1:" in line]
    sent = [line for line in lines if ": sent to UDP 127.0.0.1:" in line]
    assert [line.split("bytes: ", 1)[1].split(" ", 1)[0] for line in received] == ["INVITE", "ACK", "BYE"], lines
    assert any("bytes: SIP/2.0 200 OK" in line and "CSeq: 1 INVITE" in line for line in sent), sent
    assert all(line.count("\\r\\n") >= 3 for line in lines)  # one line per message, CR LF escaped
    assert "0612345678" not in server.log()
    assert "sip:******5678@127.0.0.1" in received[0]
