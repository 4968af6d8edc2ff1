"""Encrypted calls against the real server: SDES answers, SRTP both ways (issue 19).

A raw UDP caller offers ``RTP/SAVP`` with ``a=crypto`` (the config allows keys over
UDP, as a test lab may: TLS is its own test), and checks everything with an
independent SRTP stack, pylibsrtp's own ``Session`` keyed from the SDP (never the
server's ``CallSrtp``): the greeting decrypts to the cached phrase byte for byte
and is not clear audio on the wire, the caller's protected RFC 4733 digits are
heard, forged and replayed packets are dropped and counted, and a hold and resume
keeps the keys.
"""

from __future__ import annotations

import base64
import re
import secrets
import socket
import struct
import time
import urllib.request

import pytest
from pylibsrtp import Error as LibSrtpError
from pylibsrtp import Policy, Session

from eko_bench import uac
from eko_rtp.media import sdes
from server_helpers import ServerProcess, free_port

HEADER = struct.Struct("!BBHII")
SILENCE = b"\xff" * 160
CALLER_SSRC = 0x5EC0DE01
EVENTS = uac.TELEPHONE_EVENT_PAYLOAD_TYPE
PROFILES = {
    sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80: Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_32: Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    sdes.CryptoSuite.AEAD_AES_128_GCM: Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}


def _session(suite: sdes.CryptoSuite, master: bytes, inbound: bool) -> Session:
    policy = Policy(key=master, ssrc_type=Policy.SSRC_ANY_INBOUND if inbound else Policy.SSRC_ANY_OUTBOUND,
                    srtp_profile=PROFILES[suite])
    return Session(policy=policy)


def _request(dialog: uac.Dialog, method: str, cseq: int, body: bytes = b"") -> bytes:
    """An in-dialog request (the bench's Dialog only makes the INVITE, ACK and BYE)."""
    endpoint = dialog.endpoint
    headers = [
        ("Via", endpoint.via(uac.new_branch())),
        ("Max-Forwards", "70"),
        ("From", f"<sip:{dialog.caller}@{endpoint.local_host}>;tag={dialog.from_tag}"),
        ("To", f"<{endpoint.target_uri}>;tag={dialog.to_tag}"),
        ("Call-ID", dialog.call_id),
        ("CSeq", f"{cseq} {method}"),
        ("Contact", endpoint.contact),
    ]
    if body:
        headers.append(("Content-Type", "application/sdp"))
    lines = [f"{method} {dialog.remote_target} SIP/2.0", *(f"{name}: {value}" for name, value in headers),
             f"Content-Length: {len(body)}", "", ""]
    return "\r\n".join(lines).encode() + body


class Caller:
    """One SIP dialog and its RTP socket, in the test's own thread; every packet it hears decrypted."""

    def __init__(self, server: ServerProcess):
        self.server = server
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind(("127.0.0.1", 0))
        self.rtp.bind(("127.0.0.1", 0))
        self.rtp.setblocking(False)
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=self.sip.getsockname()[1],
                                target_host="127.0.0.1", target_port=server.port)
        self.dialog = uac.Dialog(endpoint=endpoint, call_id=f"srtp-{secrets.token_hex(6)}", from_tag=uac.new_tag(),
                                 caller="0600000000")
        self.offer: sdes.CryptoOffer | None = None
        self.keys: sdes.SrtpKeys | None = None
        self.receive: Session | None = None
        self.send: Session | None = None
        self.remote_rtp: tuple[str, int] | None = None
        self.sequence = 0
        self.timestamp = 0
        self.cseq = 1
        self.heard: list[tuple[int, int, bytes, bytes]] = []  # (sequence, payload type, payload, datagram)
        self.undecryptable = 0
        self.sent: list[bytes] = []  # our protected datagrams, for the replays

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()

    def sdp(self, *, version: int = 1, direction: str = "sendrecv") -> bytes:
        body = uac.sdp_offer(address="127.0.0.1", rtp_port=self.rtp.getsockname()[1], session_id=7, crypto=self.offer)
        return body.replace(b"o=- 7 1 ", f"o=- 7 {version} ".encode()).replace(b"a=sendrecv", f"a={direction}".encode())

    def final_response(self, method: str, timeout: float = 5.0) -> uac.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sip.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                message = uac.parse_message_untrusted(self.sip.recv(65535))
            except socket.timeout:
                break
            if message.is_response and message.status >= 200 and message.cseq[1] == method:
                return message
        raise AssertionError(f"no final response to {method} within {timeout} s:\n{self.server.log()[-3000:]}")

    def invite(self, body: bytes) -> uac.Message:
        branch = uac.new_branch()
        self.sip.sendto(self.dialog.invite(branch=branch, sdp=body), self.server.address)
        response = self.final_response("INVITE")
        if response.status >= 300:
            self.sip.sendto(self.dialog.ack_failure(response, branch=branch), self.server.address)
            return response
        self.dialog = self.dialog.confirmed(response)
        self.sip.sendto(self.dialog.ack(), self.server.address)
        self.take_answer(response)
        return response

    def take_answer(self, response: uac.Message) -> uac.MediaAnswer:
        answer = uac.parse_sdp_answer_untrusted(response.body)
        self.remote_rtp = (answer.address, answer.port)
        if self.offer is not None and self.keys is None:
            self.keys = uac.srtp_keys_untrusted(self.offer, answer)
            self.receive = _session(self.keys.suite, self.keys.receive_master, inbound=True)
            self.send = _session(self.keys.suite, self.keys.send_master, inbound=False)
        return answer

    def reinvite(self, body: bytes) -> uac.Message:
        self.cseq += 1
        self.sip.sendto(_request(self.dialog, "INVITE", self.cseq, body), self.server.address)
        response = self.final_response("INVITE")
        self.sip.sendto(_request(self.dialog, "ACK", self.cseq), self.server.address)
        return response

    def bye(self) -> None:
        self.cseq += 1
        self.sip.sendto(_request(self.dialog, "BYE", self.cseq), self.server.address)
        self.final_response("BYE")

    def rtp_packet(self, payload_type: int, payload: bytes, *, marker: bool = False, timestamp: int | None = None,
                   ssrc: int = CALLER_SSRC) -> bytes:
        header = HEADER.pack(0x80, payload_type | (0x80 if marker else 0), self.sequence & 0xFFFF,
                             (self.timestamp if timestamp is None else timestamp) & 0xFFFFFFFF, ssrc)
        self.sequence += 1
        return header + payload

    def send_protected(self, packet: bytes) -> None:
        datagram = self.send.protect(packet)
        self.sent.append(datagram)
        self.rtp.sendto(datagram, self.remote_rtp)

    def listen(self, seconds: float, *, talk: bool = True) -> None:
        """Hear (and decrypt) for ``seconds``, sending protected silence every 20 ms when ``talk``."""
        end = time.monotonic() + seconds
        next_frame = time.monotonic()
        while time.monotonic() < end:
            if talk and time.monotonic() >= next_frame:
                self.send_protected(self.rtp_packet(0, SILENCE))
                self.timestamp += 160
                next_frame += 0.020
            self.drain()
            time.sleep(0.002)
        self.drain()

    def drain(self) -> None:
        while True:
            try:
                datagram = self.rtp.recv(2048)
            except BlockingIOError:
                return
            if 192 <= datagram[1] <= 223:
                continue  # SRTCP (muxed): not audio
            try:
                packet = self.receive.unprotect(datagram)
            except LibSrtpError:
                self.undecryptable += 1
                continue
            _, second, sequence = struct.unpack_from("!BBH", packet)
            self.heard.append((sequence, second & 0x7F, packet[12:], datagram))

    def key(self, event: int, timestamp: int) -> None:
        """One RFC 4733 key press, protected: a start, then the end three times (§2.5.1.4)."""
        self.send_protected(self.rtp_packet(EVENTS, struct.pack("!BBH", event, 10, 160), marker=True,
                                            timestamp=timestamp))
        for _ in range(3):
            self.send_protected(self.rtp_packet(EVENTS, struct.pack("!BBH", event, 0x80 | 10, 800),
                                                timestamp=timestamp))

    def audio(self) -> bytes:
        packets = sorted((entry for entry in self.heard if entry[1] == 0), key=lambda entry: entry[0])
        return b"".join(payload for _, _, payload, _ in packets)


def _write_config(path, **media) -> str:
    lines = ["[media]"]
    for key, value in media.items():
        lines.append(f"{key} = {value}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _metric(port: int, name: str, reason: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    match = re.search(rf'^{name}{{reason="{reason}"}} (\S+)$', text, re.MULTILINE)
    assert match, f"{name}{{reason={reason}}} not exported"
    return float(match.group(1))


@pytest.fixture(scope="module")
def lab_server(built_cache, tmp_path_factory):
    """SRTP optional, keys allowed over UDP (a lab), quick relatch, metrics and the SIP trace on."""
    config = _write_config(tmp_path_factory.mktemp("srtp") / "eko.toml", srtp='"optional"',
                           srtp_over_insecure_signalling="true", relatch_after="0.3")
    metrics = free_port()
    with ServerProcess(built_cache, "--config", config, "--script", "eko_test_scripts:greet_and_log_digits",
                       "--metrics", f"127.0.0.1:{metrics}", "--sip-trace") as server:
        server.metrics_port = metrics
        yield server


@pytest.mark.parametrize("suite", list(sdes.CryptoSuite), ids=lambda suite: suite.value)
def test_each_suite_answers_savp_and_the_greeting_decrypts_to_the_cached_phrase(lab_server, built_cache, suite):
    greet = (built_cache / "greet.raw").read_bytes()
    caller = Caller(lab_server)
    caller.offer = uac.srtp_offer(suite)
    try:
        response = caller.invite(caller.sdp())
        assert response.status == 200, lab_server.log()[-3000:]
        answer = uac.parse_sdp_answer_untrusted(response.body)
        caller.listen(1.5)
        caller.bye()
    finally:
        caller.close()
    assert answer.profile == "RTP/SAVP"
    [crypto] = answer.crypto  # exactly one, echoing our tag and suite
    assert crypto.startswith(f"1 {suite.value} inline:")
    heard = caller.audio()
    assert caller.undecryptable == 0
    assert len(heard) >= 50 * 160, len(heard)  # a second of it at least
    assert heard == greet[: len(heard)]  # the greeting, byte for byte, once decrypted
    # On the wire it is not clear audio: no datagram carries its plaintext after a clear header.
    tag = suite.rtp_tag_length
    for _, payload_type, payload, datagram in caller.heard[:50]:
        if payload_type == 0:
            assert len(datagram) == 12 + len(payload) + tag
            assert datagram[12:12 + len(payload)] != payload
    assert f"SRTP {suite.value}" in lab_server.log()


def test_protected_digits_are_heard_and_forged_or_replayed_packets_only_counted(lab_server):
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger.bind(("127.0.0.2", 0))
    stranger.setblocking(False)
    caller = Caller(lab_server)
    caller.offer = uac.srtp_offer(sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    port = lab_server.metrics_port
    reasons = ("authentication", "replay", "malformed")
    before = {reason: _metric(port, "eko_srtp_dropped_total", reason) for reason in reasons}
    try:
        assert caller.invite(caller.sdp()).status == 200
        caller.listen(0.5)
        caller.key(5, caller.timestamp)  # a real "5"
        caller.listen(0.3)
        lab_server.wait_for_log(rf"\[call={caller.dialog.call_id}\].*digit 5")
        key_packets = list(caller.sent[-4:])
        for datagram in key_packets:  # replayed, as recorded: a second "5"?
            caller.rtp.sendto(datagram, caller.remote_rtp)
        for event in (7, 8):  # a clear RFC 4733 "7" (too short for SRTP), and an "8" under a made-up tag
            packet = caller.rtp_packet(EVENTS, struct.pack("!BBH", event, 0x80 | 10, 800), marker=True,
                                       timestamp=caller.timestamp + 1000 * event)
            caller.rtp.sendto(packet if event == 7 else packet + b"\x00" * 10, caller.remote_rtp)
        caller.listen(0.2)
        # The caller goes quiet past media.relatch_after; a stranger sends forged packets under
        # its SSRC. In clear that would move the latch (a NAT re-mapping): here they never authenticate.
        caller.listen(0.6, talk=False)
        heard_before = len(caller.heard)
        for n in range(30):
            forged = caller.rtp_packet(0, secrets.token_bytes(170))
            stranger.sendto(forged, caller.remote_rtp)
            time.sleep(0.01)
        caller.listen(0.5, talk=False)
        stolen = 0
        while True:
            try:
                stranger.recv(2048)
            except BlockingIOError:
                break
            stolen += 1
        assert len(caller.heard) > heard_before  # the greeting still comes to the caller
        time.sleep(1.2)  # the metrics are synced once a second
        after = {reason: _metric(port, "eko_srtp_dropped_total", reason) for reason in reasons}
        caller.bye()
        ended = lab_server.wait_for_log(rf"\[call={caller.dialog.call_id}\].*ended \(remote_bye\).*").group(0)
    finally:
        caller.close()
        stranger.close()
    log = lab_server.log()
    call_lines = [line for line in log.splitlines() if caller.dialog.call_id in line]
    assert sum(" digit 5" in line for line in call_lines) == 1
    assert not any(re.search(r" digit [78]\b", line) for line in call_lines)
    assert stolen == 0
    assert not any("media latched to 127.0.0.2" in line for line in call_lines)
    assert after["replay"] - before["replay"] >= 4
    assert after["malformed"] - before["malformed"] >= 1  # the clear "7"
    assert after["authentication"] - before["authentication"] >= 31  # the "8", the 30 forged
    assert re.search(r"srtp_dropped=(\d+)", ended) and int(re.search(r"srtp_dropped=(\d+)", ended).group(1)) >= 36


def test_hold_and_resume_keep_the_keys_and_the_audio_decrypts_on(lab_server):
    caller = Caller(lab_server)
    caller.offer = uac.srtp_offer(sdes.CryptoSuite.AEAD_AES_128_GCM)
    try:
        first = caller.invite(caller.sdp())
        assert first.status == 200
        caller.listen(0.6)
        held = caller.reinvite(caller.sdp(version=2, direction="sendonly"))
        assert held.status == 200, lab_server.log()[-2000:]
        caller.listen(0.3)
        count_on_hold = len(caller.heard)
        caller.listen(0.5)
        assert len(caller.heard) == count_on_hold  # recvonly: nothing sent on hold
        resumed = caller.reinvite(caller.sdp(version=3))
        assert resumed.status == 200
        caller.listen(0.8)
        caller.bye()
    finally:
        caller.close()
    crypto = [uac.parse_sdp_answer_untrusted(message.body).crypto for message in (first, held, resumed)]
    assert crypto[0] == crypto[1] == crypto[2]  # the same a=crypto, key and all
    assert "a=recvonly" in held.body.decode()
    assert caller.undecryptable == 0
    assert len(caller.heard) > count_on_hold + 25  # resumed, under the same session


def test_an_offer_of_only_unsupported_suites_gets_488_saying_so(lab_server):
    caller = Caller(lab_server)
    key = base64.b64encode(secrets.token_bytes(46)).decode()
    body = caller.sdp().replace(b"RTP/AVP", b"RTP/SAVP").replace(
        b"a=sendrecv", f"a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key}\r\na=sendrecv".encode())
    try:
        response = caller.invite(body)
    finally:
        caller.close()
    assert response.status == 488
    assert response.reason.startswith("SDP line "), response.reason
    assert "no offered crypto suite is supported: tag 1: crypto suite 'AES_256_CM_HMAC_SHA1_80' is not supported" \
        in response.reason
    assert response.all_headers("warning") == [f'399 127.0.0.1 "{response.reason}"']  # RFC 3261 §20.43


def test_the_sip_trace_shows_no_key(lab_server):
    caller = Caller(lab_server)
    caller.offer = uac.srtp_offer(sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_32)
    try:
        assert caller.invite(caller.sdp()).status == 200
        caller.bye()
    finally:
        caller.close()
    ours = base64.b64encode(caller.offer.attributes[0].master).decode()
    theirs = base64.b64encode(caller.keys.receive_master).decode()
    # This call's own trace (the server shared by these tests traced earlier calls too),
    # written once the trace is flushed.
    call_id = re.escape(caller.dialog.call_id)
    lab_server.wait_for_log(rf"eko_rtp\.sip\.trace(?=.*{call_id}).*a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:\[redacted\]")
    log = lab_server.log()
    assert ours not in log and theirs not in log
    traced = [line for line in log.splitlines() if "eko_rtp.sip.trace" in line and caller.dialog.call_id in line]
    assert any("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:[redacted]" in line for line in traced)


def test_keys_over_udp_and_clear_offers_are_refused_when_so_configured(built_cache, tmp_path):
    config = _write_config(tmp_path / "eko.toml", srtp='"required"')
    with ServerProcess(built_cache, "--config", config) as server:
        secure = Caller(server)
        secure.offer = uac.srtp_offer(sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80)
        clear = Caller(server)
        try:
            over_udp = secure.invite(secure.sdp())
            in_clear = clear.invite(clear.sdp())
        finally:
            secure.close()
            clear.close()
    assert (over_udp.status, over_udp.reason) == (
        488, "SDES keys over UDP refused (media.srtp_over_insecure_signalling is false): a=crypto keys travel only"
             " over TLS")
    assert (in_clear.status, in_clear.reason) == (488, "media.srtp is required: the offer has no active RTP/SAVP audio"
                                                       " stream")
    for refused in (over_udp, in_clear):  # the reason again in a Warning (RFC 3261 §20.43), which B2BUAs pass on
        assert refused.all_headers("warning") == [f'399 127.0.0.1 "{refused.reason}"']


def test_a_reinvite_that_would_drop_the_encryption_gets_488_with_a_warning(lab_server):
    caller = Caller(lab_server)
    caller.offer = uac.srtp_offer(sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80)
    try:
        assert caller.invite(caller.sdp()).status == 200
        secure = caller.offer
        caller.offer = None  # a clear RTP/AVP re-offer: a downgrade
        downgrade = caller.reinvite(caller.sdp(version=2))
        caller.offer = secure
        caller.bye()
    finally:
        caller.close()
    assert (downgrade.status, downgrade.reason) == (
        488, "the call is encrypted (SRTP): a re-offer without an active RTP/SAVP audio stream is refused")
    assert downgrade.all_headers("warning") == [f'399 127.0.0.1 "{downgrade.reason}"']
