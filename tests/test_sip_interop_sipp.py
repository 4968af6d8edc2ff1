"""The UAS core against a real sipp UAC on loopback (UDP and TCP), driven by a minimal test loop.

The loop here is deliberately tiny (select on one socket, feed ``receive``, send
``Transmit``s, answer every call): the production shell is ``eko_rtp/server``.
"""

from __future__ import annotations

import random
import select
import shutil
import socket
import subprocess
import time

import pytest

from eko_rtp.sip.events import CallConfirmed, CallEnded, EndReason, IncomingCall, Transmit
from eko_rtp.sip.framing import StreamFramer
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

pytestmark = [pytest.mark.interop, pytest.mark.skipif(shutil.which("sipp") is None, reason="sipp not installed")]

ANSWER = b"v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 5004 RTP/AVP 0\r\n"


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def serve_one_call(transport: str, calls: int = 1) -> tuple[list, int]:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    port = free_port(kind)
    ua = UserAgent(UserAgentSettings(host="127.0.0.1", port=port), rng=random.Random(1))
    listener = socket.socket(socket.AF_INET, kind)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    if transport == "tcp":
        listener.listen(1)
    sipp = subprocess.Popen(
        ["sipp", "-sn", "uac", f"127.0.0.1:{port}", "-m", str(calls), "-i", "127.0.0.1", "-p", "0",
         "-t", "u1" if transport == "udp" else "t1", "-timeout", "20", "-timeout_error", "-nostdin", "-d", "200"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = []
    connection, framer = None, StreamFramer()
    start = time.monotonic()
    try:
        while sipp.poll() is None and time.monotonic() - start < 20:
            sockets = [connection or listener]
            readable, _, _ = select.select(sockets, [], [], 0.05)
            now = time.monotonic() - start
            if readable and transport == "udp":
                data, source = listener.recvfrom(65535)
                ua.receive(data, source=source, transport="udp", now=now)
            elif readable and connection is None:
                connection, source = listener.accept()
            elif readable:
                for data in framer.feed(connection.recv(65535)):
                    ua.receive(data, source=source, transport="tcp", connection=connection, now=now)
            ua.handle_timers(now)
            for event in ua.events():
                if isinstance(event, Transmit):
                    if transport == "udp":
                        listener.sendto(event.data, event.destination)
                    else:
                        event.connection.sendall(event.data)
                    continue
                seen.append(event)
                if isinstance(event, IncomingCall):
                    ua.answer(event.call_id, ANSWER, now)
            for event in ua.events():
                if transport == "udp":
                    listener.sendto(event.data, event.destination)
                else:
                    event.connection.sendall(event.data)
        returncode = sipp.wait(timeout=5)
    finally:
        if sipp.poll() is None:
            sipp.kill()
            sipp.wait()
        listener.close()
        if connection is not None:
            connection.close()
    return seen, returncode


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_sipp_uac_call_answered_confirmed_and_hung_up(transport):
    seen, returncode = serve_one_call(transport)
    assert returncode == 0
    kinds = [type(event) for event in seen]
    assert kinds == [IncomingCall, CallConfirmed, CallEnded]
    assert seen[2].reason is EndReason.REMOTE_BYE
    assert seen[0].caller.from_user == "sipp"
