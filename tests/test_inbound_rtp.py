"""Inbound RTP at a phone's real rate: keyed digits arrive on time, and none is lost.

A caller keying digits sends a 20 ms audio packet and an RFC 4733 event packet side
by side, about 100 packets a second. The receive path must keep up with that (every
datagram waiting on a call's socket is drained each time the socket is served),
deliver a digit keyed just before the BYE, and measure jitter from when packets came
(RFC 3550 A.8), not from when it got round to reading them.
"""

from __future__ import annotations

import re

import pytest

from keying_caller import Keying, key_digits
from server_helpers import ServerProcess

DIGITS = "0612345678"


def digit_lines(server: ServerProcess) -> list[tuple[str, float]]:
    return [(match.group(1), float(match.group(2)))
            for match in re.finditer(r"digit (\S) seen at monotonic ([\d.]+)", server.log())]


@pytest.mark.parametrize("extension", [False, True], ids=["plain", "header-extension"])
def test_ten_digits_at_100_packets_a_second_each_within_150_ms_the_last_before_bye(built_cache, extension):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:time_digits") as server:
        record = key_digits(server.address, Keying(digits=DIGITS, extension=extension))
        server.wait_for_log(r"ended \(remote_bye\)")
        server.wait_for_log(r"no more digits")
        seen = digit_lines(server)
        log = server.log()
    assert record.status == 200 and record.bye_status == 200
    assert "".join(digit for digit, _ in seen) == DIGITS  # every digit, once, in order
    delays = [round((at - record.first_event_sent[index]) * 1000, 1) for index, (_, at) in enumerate(seen)]
    assert max(delays) <= 150, f"digit delays in ms: {delays}"
    assert "fell behind" not in log


def test_reported_jitter_matches_the_wire(built_cache):
    # 4 s of audio (the first RTCP report comes 2.5 s after the answer), then digits at 100 packets/s.
    with ServerProcess(built_cache, "--script", "eko_test_scripts:time_digits") as server:
        record = key_digits(server.address, Keying(digits="1234", talk_until=4.0, spacing=0.5))
        server.wait_for_log(r"ended \(remote_bye\)")
    assert record.report_jitters, "the server sent no RTCP report block"
    wire = record.sent_jitter
    # Timestamp units of 1/8000 s: 8 is 1 ms. The server reads packets every 10-20 ms;
    # jitter from its reading times would be tens of units.
    assert max(record.report_jitters) <= wire + 8, (record.report_jitters, wire)
