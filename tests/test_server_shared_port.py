"""The shared RTP port (``media.rtp_socket = "shared"``) against the server process, on loopback.

media/shared_port.py routes each datagram on the one shared port to its call by its
source address: the (address, port) the call's SDP offer signalled. Raw callers
here hold real sockets (RTP at P, RTCP at P+1 as RFC 3550 §11 defaults), send 20 ms
of silence on an absolute schedule like a phone, key RFC 4733 events in the same
SSRC and sequence space, and record every RTP packet that reaches them with its
source. One thread and ``select``: every loop is bounded in count and in time.

What is shown: two calls answered with the one shared port, each hearing a steady
stream of its own; a digit reaching only the call that keyed it; datagrams from
sources no offer named dropped and counted, with no call disturbed; an offer of a
live call's address answered on a pair of its own; a re-INVITE moving a call's
route, whether or not the caller had sent a packet before the move (a bug found
here: the route stayed behind when the move came first); and, without the setting, a port per call.
"""

from __future__ import annotations

import re
import secrets
import select
import socket
import struct
import time

import attrs
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from eko_bench import uac
from server_helpers import ServerProcess, frame_breaks, free_port, rtp_range

HEADER = struct.Struct("!BBHII")  # RFC 3550 §5.1: V=2, no padding/extension/CSRC
EVENT = struct.Struct("!BBH")  # RFC 4733 §2.3: event, E|R|volume, duration
SILENCE = b"\xff" * 160  # 20 ms of PCMU silence
FRAME = 0.020
DIGIT_EVENTS = {digit: code for code, digit in enumerate("0123456789*#ABCD")}
SHARED = ("--rtp-socket", "shared", "--script", "eko_test_scripts:echo_digits")


@attrs.frozen
class Heard:
    """One RTP packet that reached a caller."""

    source: tuple
    sequence: int
    timestamp: int
    ssrc: int
    payload_type: int
    arrival: float


def bound(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def rtp_and_rtcp() -> tuple[socket.socket, socket.socket]:
    """Sockets at P and P+1: RTCP where the offer implies it without an a=rtcp line (RFC 3605 §2.1)."""
    for _ in range(50):
        rtp = bound()
        try:
            return rtp, bound(rtp.getsockname()[1] + 1)
        except OSError:
            rtp.close()
    raise RuntimeError("no two UDP ports in a row free on 127.0.0.1")


def drain(sock: socket.socket) -> int:
    for count in range(10_000):
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
    raise AssertionError("a socket that never empties")


class Caller:
    """A phone: its SIP, RTP and RTCP sockets; its offer names ``offer_port`` (default: its own RTP port)."""

    def __init__(self, server: ServerProcess, name: str, *, offer_port: int | None = None):
        self.target = server.address
        self.sip = bound()
        self.rtp, self.rtcp = rtp_and_rtcp()
        self.offer_port = offer_port or self.rtp.getsockname()[1]
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=self.sip.getsockname()[1],
                                target_host=self.target[0], target_port=self.target[1])
        self.dialog = uac.Dialog(endpoint=endpoint, call_id=f"shared-{name}-{uac.new_tag()}", from_tag=uac.new_tag(),
                                 caller="0600000000")
        self.answer: uac.MediaAnswer | None = None
        self.answered_at: float | None = None  # the 200 OK came (our frame 0 leaves with it)
        self.event_payload_type: int | None = None
        self.heard: list[Heard] = []
        self.ssrc = secrets.randbits(32)
        self.sequence = secrets.randbits(16)
        self.timestamp = secrets.randbits(32)
        self._key: tuple[int, int, int] | None = None  # (event code, its timestamp, updates sent)
        self.cseq = 1  # the INVITE's
        self.up = False  # answered, not yet hung up

    @property
    def call_id(self) -> str:
        return self.dialog.call_id

    def call(self, timeout: float = 5.0) -> uac.MediaAnswer:
        """INVITE, wait for the 200 OK, ACK it: the SDP answer."""
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=self.offer_port, session_id=1)
        self.sip.sendto(self.dialog.invite(branch=uac.new_branch(), sdp=offer), self.target)
        message = self._final_response("INVITE", timeout)
        assert message.status == 200, message.status
        self.answered_at = time.monotonic()
        self.dialog = self.dialog.confirmed(message)
        self.sip.sendto(self.dialog.ack(), self.target)
        self.up = True
        return self._take_answer(message)

    def move(self, timeout: float = 5.0) -> uac.MediaAnswer:
        """A re-INVITE whose offer names new RTP and RTCP sockets (RFC 3264 §8.3.1), ACKed; the old ones close."""
        self.cseq += 1
        old = (self.rtp, self.rtcp)
        self.rtp, self.rtcp = rtp_and_rtcp()
        for sock in old:
            sock.close()
        self.offer_port = self.rtp.getsockname()[1]
        offer = uac.sdp_offer(address="127.0.0.1", rtp_port=self.offer_port, session_id=1).replace(
            b"o=- 1 1 ", f"o=- 1 {self.cseq} ".encode())  # a new version of the session (RFC 3264 §8)
        self.sip.sendto(self._request("INVITE", self.cseq, offer), self.target)
        message = self._final_response("INVITE", timeout)
        assert message.status == 200, message.status
        self.sip.sendto(self._request("ACK", self.cseq), self.target)
        return self._take_answer(message)

    def hang_up(self, timeout: float = 5.0) -> int:
        self.cseq += 1
        self.up = False
        self.sip.sendto(self._request("BYE", self.cseq), self.target)
        return self._final_response("BYE", timeout).status

    def _take_answer(self, message: uac.Message) -> uac.MediaAnswer:
        self.answer = uac.parse_sdp_answer_untrusted(message.body)
        events = re.search(rb"a=rtpmap:(\d+) telephone-event/8000", message.body)
        self.event_payload_type = int(events.group(1)) if events else None
        return self.answer

    def _request(self, method: str, cseq: int, sdp: bytes = b"") -> bytes:
        """An in-dialog request (RFC 3261 §12.2.1.1): our tags, the remote target, a new branch."""
        dialog = self.dialog
        endpoint = dialog.endpoint
        lines = [
            f"{method} {dialog.remote_target} SIP/2.0",
            f"Via: {endpoint.via(uac.new_branch())}",
            "Max-Forwards: 70",
            f"From: <sip:{dialog.caller}@{endpoint.local_host}>;tag={dialog.from_tag}",
            f"To: <{endpoint.target_uri}>;tag={dialog.to_tag}",
            f"Call-ID: {dialog.call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: {endpoint.contact}",
        ]
        if sdp:
            lines.append("Content-Type: application/sdp")
        lines += [f"Content-Length: {len(sdp)}", "", ""]
        return "\r\n".join(lines).encode() + sdp

    def _final_response(self, method: str, timeout: float) -> uac.Message:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            if not select.select([self.sip], [], [], left)[0]:
                break
            message = uac.parse_message_untrusted(self.sip.recv(65535))
            if message.is_response and message.cseq[1] == method and message.status >= 200:
                return message
        raise AssertionError(f"{self.call_id}: no final response to {method} within {timeout} s")

    def press(self, digit: str) -> None:
        """Key ``digit`` from the next frame on: 5 updates (100 ms down), then its end three times
        (RFC 4733 §2.5.1.4)."""
        self._key = (DIGIT_EVENTS[digit], self.timestamp, 0)

    def send_frame(self) -> None:
        """One 20 ms packet of silence, and beside it the event packet of a key that is down."""
        destination = (self.answer.address, self.answer.port)
        self._send(0, False, self.timestamp, SILENCE, destination)
        if self._key is not None:
            code, timestamp, updates = self._key
            if updates < 5:
                self._send(self.event_payload_type, updates == 0, timestamp, EVENT.pack(code, 10, (updates + 1) * 160),
                           destination)
                self._key = (code, timestamp, updates + 1)
            else:
                for _ in range(3):
                    self._send(self.event_payload_type, False, timestamp, EVENT.pack(code, 0x80 | 10, 800), destination)
                self._key = None
        self.timestamp = (self.timestamp + 160) & 0xFFFFFFFF

    def _send(self, payload_type: int, marker: bool, timestamp: int, payload: bytes, destination: tuple) -> None:
        header = HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, self.sequence, timestamp, self.ssrc)
        self.rtp.sendto(header + payload, destination)
        self.sequence = (self.sequence + 1) & 0xFFFF

    def receive(self) -> None:
        """Record the RTP waiting on the socket (not RTCP, muxed or not)."""
        for _ in range(1000):
            try:
                data, source = self.rtp.recvfrom(2048)
            except BlockingIOError:
                return
            if len(data) >= 12 and not 192 <= data[1] <= 223:
                _, second, sequence, timestamp, ssrc = HEADER.unpack_from(data)
                self.heard.append(Heard(source, sequence, timestamp, ssrc, second & 0x7F, time.monotonic()))

    def heard_from(self, port: int) -> list[Heard]:
        return [packet for packet in self.heard if packet.source == ("127.0.0.1", port)]

    def close(self) -> None:
        """Close the sockets; a call still up (a test failed) gets a BYE first, so the server stops at once."""
        if self.up:
            self.cseq += 1
            self.up = False
            self.sip.sendto(self._request("BYE", self.cseq), self.target)
        for sock in (self.sip, self.rtp, self.rtcp):
            sock.close()


def talk(callers: list[Caller], seconds: float, *, each_frame=None) -> None:
    """Every caller sends a frame every 20 ms (absolute schedule) and records what it hears, for ``seconds``;
    ``each_frame(n)`` runs after frame n."""
    start = time.monotonic()
    sockets = [caller.rtp for caller in callers]
    for frame in range(round(seconds / FRAME)):
        due = start + frame * FRAME
        while (left := due - time.monotonic()) > 0:
            select.select(sockets, [], [], left)
            for caller in callers:
                caller.receive()
        for caller in callers:
            caller.send_frame()
        if each_frame is not None:
            each_frame(frame)
    for caller in callers:
        caller.receive()


def assert_steady(caller: Caller, port: int) -> list[Heard]:
    """The bot's stream from ``port``: one SSRC, every sequence number once and in order, 20 ms of
    timestamp each, and as many packets as 50 a second from the 200 OK to the last one read."""
    stream = caller.heard_from(port)
    assert len(stream) >= 50, (caller.call_id, len(stream))
    assert len({packet.ssrc for packet in stream}) == 1
    assert {packet.payload_type for packet in stream} == {0}  # PCMU, the offer's first
    assert frame_breaks(stream) == []  # one frame apart each (the clock's start shift aside)
    span = stream[-1].arrival - caller.answered_at
    assert abs(len(stream) - 1 - span / FRAME) <= 3, (len(stream), span)
    return stream


def shared_port_of(server: ServerProcess) -> int:
    port = int(server.wait_for_log(r'media: trusted callers share RTP port (\d+) \(media.rtp_socket = "shared"\)')
               .group(1))
    low, high = map(int, server.rtp_ports.split("-"))
    assert low <= port < high and port % 2 == 0
    return port


def digits_of(server: ServerProcess, caller: Caller) -> list[str]:
    """The digits the echo_digits script logged in ``caller``'s call."""
    return re.findall(rf"\[call={re.escape(caller.call_id)}\]: digit (\S+)$", server.log(), re.MULTILINE)


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text)
            for sample in family.samples if not sample.labels}


def test_two_calls_share_one_port_and_each_hears_its_own_steady_stream(built_cache):
    with ServerProcess(built_cache, *SHARED) as server:
        shared = shared_port_of(server)
        first, second = Caller(server, "first"), Caller(server, "second")
        try:
            assert first.rtp.getsockname() != second.rtp.getsockname()
            assert first.call().port == shared
            assert second.call().port == shared
            talk([first, second], 2.0)
            assert first.hang_up() == 200 and second.hang_up() == 200
        finally:
            first.close()
            second.close()
        first_stream, second_stream = assert_steady(first, shared), assert_steady(second, shared)
        assert {packet.source for packet in first.heard + second.heard} == {("127.0.0.1", shared)}
        assert first_stream[0].ssrc != second_stream[0].ssrc  # two streams, not one sent twice
        assert len(first_stream) >= 95 and len(second_stream) >= 95  # 2 s at 50 a second, the answer's few ms aside
        for caller in (first, second):
            server.wait_for_log(rf"\[call={re.escape(caller.call_id)}\]: ended \(remote_bye\)")


def test_a_digit_reaches_the_call_that_keyed_it_and_no_other(built_cache):
    with ServerProcess(built_cache, *SHARED) as server:
        shared = shared_port_of(server)
        first, second = Caller(server, "first"), Caller(server, "second")
        try:
            assert first.call().port == shared and second.call().port == shared
            assert first.event_payload_type == second.event_payload_type == uac.TELEPHONE_EVENT_PAYLOAD_TYPE

            def keys(frame: int) -> None:
                if frame == 10:
                    first.press("4")
                elif frame == 30:
                    second.press("7")
                elif frame == 50:
                    first.press("#")

            talk([first, second], 1.4, each_frame=keys)
            server.wait_for_log(rf"\[call={re.escape(first.call_id)}\]: digit #$", timeout=3)
            server.wait_for_log(rf"\[call={re.escape(second.call_id)}\]: digit 7$", timeout=3)
            assert first.hang_up() == 200 and second.hang_up() == 200
        finally:
            first.close()
            second.close()
        assert digits_of(server, first) == ["4", "#"]
        assert digits_of(server, second) == ["7"]
        assert_steady(first, shared)
        assert_steady(second, shared)


def test_datagrams_from_an_unsignalled_source_reach_no_call_and_stop_no_audio(built_cache):
    metrics_port = free_port()
    with ServerProcess(built_cache, *SHARED, "--metrics", f"127.0.0.1:{metrics_port}") as server:
        shared = shared_port_of(server)
        first, second = Caller(server, "first"), Caller(server, "second")
        stranger = bound()
        stranger_port = stranger.getsockname()[1]
        sent = 0
        try:
            assert first.call().port == shared and second.call().port == shared
            stray_before = scrape(metrics_port)["eko_rtp_packets_stray_total"]
            ssrc = secrets.randbits(32)

            def strays(frame: int) -> None:
                # Each frame, from a source no offer named: well-formed audio, and from frame 20 on
                # a keyed 9 ended (RFC 4733), to the shared RTP port; a receiver report (RFC 3550
                # §6.4.2) to its RTCP port. And RTP from the first caller's RTCP address, which is
                # routed on the RTCP port only.
                nonlocal sent
                rtp_port, rtcp_port = ("127.0.0.1", shared), ("127.0.0.1", shared + 1)
                stranger.sendto(HEADER.pack(0x80, 0, frame, frame * 160, ssrc) + SILENCE, rtp_port)
                stranger.sendto(struct.pack("!BBHI", 0x80, 201, 1, ssrc), rtcp_port)
                first.rtcp.sendto(HEADER.pack(0x80, 0, frame, frame * 160, ssrc) + SILENCE, rtp_port)
                sent += 3
                if frame >= 20:
                    event = EVENT.pack(DIGIT_EVENTS["9"], 0x80 | 10, 800)
                    stranger.sendto(HEADER.pack(0x80, first.event_payload_type, 1000 + frame, 3200, ssrc) + event,
                                    rtp_port)
                    sent += 1

            talk([first, second], 2.0, each_frame=strays)
            stray = None
            deadline = time.monotonic() + 4.0  # metrics are copied from the hot path once a second
            while time.monotonic() < deadline:
                stray = scrape(metrics_port)["eko_rtp_packets_stray_total"] - stray_before
                if stray >= sent:
                    break
                time.sleep(0.2)
            assert first.hang_up() == 200 and second.hang_up() == 200
            answers_to_stranger = drain(stranger)
        finally:
            first.close()
            second.close()
            stranger.close()
        assert sent == 3 * 100 + 80
        assert stray == sent
        assert answers_to_stranger == 0
        assert_steady(first, shared)
        assert_steady(second, shared)
        assert digits_of(server, first) == [] and digits_of(server, second) == []
        assert len(re.findall(r"dropped on the shared port", server.log())) == 1  # the first says from where; no flood
        server.wait_for_log(rf"media datagram from 127\.0\.0\.1:{stranger_port} dropped on the shared port {shared}:"
                            r" no call signalled that address")
        for caller in (first, second):
            ended = server.wait_for_log(rf"\[call={re.escape(caller.call_id)}\]: ended \(remote_bye\).*").group(0)
            assert "stray_packets" not in ended  # none reached the call to be counted there


def test_a_second_offer_of_a_live_call_s_address_gets_a_pair_of_its_own(built_cache):
    with ServerProcess(built_cache, *SHARED) as server:
        shared = shared_port_of(server)
        first = Caller(server, "first")
        twin = None
        later = None
        try:
            assert first.call().port == shared
            twin = Caller(server, "twin", offer_port=first.rtp.getsockname()[1])
            own = twin.call().port
            assert own != shared
            low, high = map(int, server.rtp_ports.split("-"))
            assert low <= own < high and own % 2 == 0
            talk([first], 1.2)
            assert twin.hang_up() == 200 and first.hang_up() == 200
            # Both ended: the address is free again, and a new call from it shares the port.
            server.wait_for_log(rf"\[call={re.escape(first.call_id)}\]: ended \(remote_bye\)")
            later = Caller(server, "later", offer_port=first.rtp.getsockname()[1])
            assert later.call().port == shared
            assert later.hang_up() == 200
        finally:
            for caller in (first, twin, later):
                if caller is not None:
                    caller.close()
        assert_steady(first, shared)
        # The twin's own pair sends where its offer said: to the first caller's socket.
        assert {packet.source for packet in first.heard} == {("127.0.0.1", shared), ("127.0.0.1", own)}


@pytest.mark.parametrize("speak_first", [True, False],
                         ids=["after-its-audio", "before-any-packet"])
def test_a_re_invite_moves_the_call_s_route_on_the_shared_port(built_cache, speak_first):
    with ServerProcess(built_cache, *SHARED) as server:
        shared = shared_port_of(server)
        caller = Caller(server, "moving")
        later = None
        try:
            ports = [caller.call().port]
            old_port = caller.offer_port
            if speak_first:
                talk([caller], 0.4)
            ports.append(caller.move().port)
            caller.heard.clear()
            talk([caller], 0.8, each_frame=lambda frame: caller.press("3") if frame == 10 else None)
            server.wait_for_log(rf"\[call={re.escape(caller.call_id)}\]: digit 3$", timeout=2)
            # The old address is no longer the call's: a new call that offers it shares the port.
            later = Caller(server, "later", offer_port=old_port)
            ports.append(later.call().port)
            assert later.hang_up() == 200 and caller.hang_up() == 200
        finally:
            caller.close()
            if later is not None:
                later.close()
        assert ports == [shared, shared, shared]
        assert digits_of(server, caller) == ["3"]
        stream = caller.heard_from(shared)  # at the new sockets, from the 200 OK to the re-INVITE on
        assert len(stream) >= 35, len(stream)  # 0.8 s at 50 a second, less the re-INVITE's round trip
        assert {(b.sequence - a.sequence) & 0xFFFF for a, b in zip(stream, stream[1:])} == {1}


def test_without_the_setting_each_call_has_a_port_of_its_own(built_cache):
    with ServerProcess(built_cache, "--script", "eko_test_scripts:echo_digits") as server:
        first, second = Caller(server, "first"), Caller(server, "second")
        try:
            ports = {first.call().port, second.call().port}
            assert first.hang_up() == 200 and second.hang_up() == 200
        finally:
            first.close()
            second.close()
        low, high = map(int, server.rtp_ports.split("-"))
        assert len(ports) == 2 and all(low <= port < high and port % 2 == 0 for port in ports)
        assert "share RTP port" not in server.log()


def test_calls_on_the_shared_port_are_not_capped_by_the_port_pairs(built_cache):
    # Three pairs: the shared one and two more. Five trusted calls share the first;
    # a sixth that cannot share (it names a live call's address) takes a pair of its own.
    low = int(rtp_range().split("-")[0])
    with ServerProcess(built_cache, *SHARED, "--rtp-ports", f"{low}-{low + 6}") as server:
        server.rtp_ports = f"{low}-{low + 6}"  # the later --rtp-ports wins
        shared = shared_port_of(server)
        callers = [Caller(server, f"many-{n}") for n in range(5)]
        twin = None
        try:
            assert [caller.call().port for caller in callers] == [shared] * 5
            twin = Caller(server, "twin", offer_port=callers[0].rtp.getsockname()[1])
            own = twin.call().port
            assert own != shared and low <= own < low + 6
            talk(callers, 1.2)
            assert all(caller.hang_up() == 200 for caller in callers + [twin])
        finally:
            for caller in callers + [twin]:
                if caller is not None:
                    caller.close()
        for caller in callers:
            assert_steady(caller, shared)
        assert "RTP port pairs" not in server.log()  # no cap, no warning about one


@pytest.mark.parametrize("pure_python", [False, True], ids=["compiled-if-built", "python"])
def test_the_start_line_names_the_batch_i_o_and_both_carry_a_call(built_cache, pure_python):
    from eko_rtp.media import mmsg

    env = {"EKO_RTP_PURE_PYTHON": "1"} if pure_python else {"EKO_RTP_PURE_PYTHON": ""}
    expected = "python" if pure_python else mmsg.IMPLEMENTATION
    with ServerProcess(built_cache, *SHARED, env=env) as server:
        shared = shared_port_of(server)
        server.wait_for_log(rf'share RTP port {shared} \(media.rtp_socket = "shared"\); {expected} batch I/O')
        caller = Caller(server, "twin-check")
        try:
            assert caller.call().port == shared
            talk([caller], 1.2)
            assert caller.hang_up() == 200
        finally:
            caller.close()
        assert_steady(caller, shared)
