"""A flood of bad SIP against the real server (issue 17): no traceback, a bounded log, calls unharmed.

1,000 datagrams of an OPTIONS with an empty ``Via:`` (nothing to address an answer
to: each is dropped) once wrote a traceback each, then a warning line each (145 KB);
the server now writes a burst of warnings, then a few a second, and one line a
second saying how many it left out. A stuffed OPTIONS of 60 KB is refused without
stalling anything, and a call placed after both floods is answered and plays audio.
"""

from __future__ import annotations

import re
import socket
import time

from raw_caller import place_call
from server_helpers import ServerProcess

EMPTY_VIA = (b"OPTIONS sip:eko@127.0.0.1 SIP/2.0\r\nVia:\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=1\r\n"
             b"To: <sip:eko@127.0.0.1>\r\nCall-ID: flood\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n")
STUFFED = EMPTY_VIA.replace(b"Via:", b"Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-s;rport" + b";a" * 29000)
FLOOD = 1000
MAX_LOG_BYTES = 20_000  # a warning line each would be about 140 KB


def log_bytes_since(server: ServerProcess, mark: int) -> int:
    with server._lock:
        return sum(len(line) + 1 for line in server.lines[mark:])


def test_a_flood_of_bad_sip_is_logged_in_a_few_lines_and_calls_still_work(built_cache):
    with ServerProcess(built_cache) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
        flooder.bind(("127.0.0.1", 0))
        mark = len(server.lines)
        for index in range(FLOOD):
            flooder.sendto(EMPTY_VIA, server.address)
            if index % 100 == 99:
                time.sleep(0.005)  # within the socket's receive buffer: every datagram reaches the server
        for _ in range(30):
            flooder.sendto(STUFFED, server.address)
        # The summary of what was left out comes about a second after the first line held back.
        summary = server.wait_for_log(r"WARNING eko_rtp.server: (\d+) more bad SIP message\(s\) not logged")
        record = place_call(server.address, hold=1.0)
        server.wait_for_log(r"ended \(remote_bye\)")
        log = "\n".join(server.lines[mark:])
        assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
        assert log_bytes_since(server, mark) < MAX_LOG_BYTES, f"{log_bytes_since(server, mark)} bytes of log:\n{log[-3000:]}"
        warned = len(re.findall(r"bad SIP message from 127\.0\.0\.1:\d+: unparseable message: Via header without a value"
                                r" -> dropped", log))
        assert 50 <= warned <= 200 and int(summary.group(1)) > 0, (warned, summary.group(0))
    assert record.status == 200 and len(record.packets) >= 25, (record.status, len(record.packets))
