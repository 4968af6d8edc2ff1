"""The bench's encrypted calls, client side: SDES offer and answer, SIP over TLS, SRTP in the media process.

The server's side of each exchange is played here with the server's own cores
(``sdes.choose_answer``, ``CallSrtp``) or a small trio TLS server, over real loopback
sockets; the certificates come from the bench's own throwaway CA.
"""

from __future__ import annotations

import functools
import socket
import ssl
import struct
import time
import tomllib

import pytest
import trio

from eko_bench import encryption, uac
from eko_bench.campaign import Options
from eko_bench.rtp_engine import RtpEngine, SILENCE
from eko_bench.run import Plan
from eko_bench.sip_client import SipClient
from eko_bench.targets import Target
from eko_rtp.errors import UserError
from eko_rtp.media import sdes
from eko_rtp.media.srtp import CallSrtp
from eko_rtp.server.tls import TlsSettings, build_server_context
from eko_rtp.sip.framing import StreamFramer

SUITE = sdes.CryptoSuite.AES_CM_128_HMAC_SHA1_80
ENDPOINT = uac.Endpoint(local_host="127.0.0.1", local_port=40123, target_host="127.0.0.1", target_port=5061,
                        transport="tls")


def _answer_sdp(crypto_lines: list[str], profile: str = "RTP/SAVP") -> bytes:
    return ("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=eko\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio 30002 {profile} 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
            + "".join(f"{line}\r\n" for line in crypto_lines)).encode()


# ------------------------------------------------------------------ uac: TLS addressing, the SDES offer and answer


def test_tls_endpoint_says_tls_in_via_and_uris():
    dialog = uac.Dialog(endpoint=ENDPOINT, call_id="c1@eko-bench", from_tag="f1", caller="+33600000001")
    message = uac.parse_message_untrusted(dialog.invite(branch="z9hG4bKb1", sdp=b""))
    assert message.request_uri == "sip:eko@127.0.0.1:5061;transport=tls"
    assert message.header("via") == "SIP/2.0/TLS 127.0.0.1:40123;branch=z9hG4bKb1;rport"
    assert message.header("contact") == "<sip:trunk@127.0.0.1:40123;transport=tls>"
    assert message.header("to") == "<sip:eko@127.0.0.1:5061;transport=tls>"
    with pytest.raises(ValueError):
        uac.Endpoint(local_host="127.0.0.1", local_port=1, target_host="127.0.0.1", target_port=2, transport="sctp")


def test_srtp_offer_is_savp_with_one_crypto_line_the_server_core_accepts():
    offer = uac.srtp_offer(SUITE)
    body = uac.sdp_offer(address="127.0.0.1", rtp_port=10002, session_id=1, crypto=offer)
    assert b"m=audio 10002 RTP/SAVP 0 8 101\r\n" in body
    lines = [line for line in body.decode().split("\r\n") if line.startswith("a=crypto:")]
    assert lines == list(offer.lines) and len(lines) == 1
    assert lines[0].startswith("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:")
    # The server's answerer takes it, and the bench reads the keys back from its answer.
    answer = sdes.choose_answer([line[len("a=crypto:"):] for line in lines])
    parsed = uac.parse_sdp_answer_untrusted(_answer_sdp([answer.line]))
    assert (parsed.profile, parsed.crypto) == ("RTP/SAVP", (answer.attribute_value,))
    keys = uac.srtp_keys_untrusted(offer, parsed)
    assert keys.suite is SUITE
    assert keys.send_master == answer.keys.receive_master  # what we send, the server reads
    assert keys.receive_master == answer.keys.send_master
    # The clear offer is unchanged.
    assert b"RTP/AVP 0 8 101" in uac.sdp_offer(address="127.0.0.1", rtp_port=10002, session_id=1)


@pytest.mark.parametrize(("crypto_lines", "profile", "error"), [
    (None, "RTP/AVP", "SDP answer has transport 'RTP/AVP' to our RTP/SAVP offer"),
    ([], "RTP/SAVP", "SDP answer's a=crypto: the answer must carry exactly one a=crypto attribute, it has 0"),
    (["a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 40],
     "RTP/SAVP", "SDP answer's a=crypto: tag 2: the answer's tag is not one we offered"),
    (["a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:" + "A" * 40],
     "RTP/SAVP", "SDP answer's a=crypto: tag 1: the answer chose AES_CM_128_HMAC_SHA1_32, we offered AES_CM_128_HMAC_SHA1_80"),
])
def test_an_unusable_srtp_answer_is_named(crypto_lines, profile, error):
    offer = uac.srtp_offer(SUITE)
    if crypto_lines is None:
        crypto_lines = [sdes.choose_answer([offer.attributes[0].to_value()]).line]
    answer = uac.parse_sdp_answer_untrusted(_answer_sdp(crypto_lines, profile))
    with pytest.raises(uac.BenchProtocolError) as raised:
        uac.srtp_keys_untrusted(offer, answer)
    assert str(raised.value) == error


def test_crypto_lines_outside_the_audio_section_are_not_read_and_too_many_are_refused():
    body = _answer_sdp([]).replace(b"t=0 0\r\n", b"t=0 0\r\na=crypto:9 X inline:Y\r\n")
    assert uac.parse_sdp_answer_untrusted(body).crypto == ()
    with pytest.raises(uac.BenchProtocolError, match="more than 16 a=crypto lines"):
        uac.parse_sdp_answer_untrusted(_answer_sdp([f"a=crypto:{n} X inline:Y" for n in range(17)]))


# ------------------------------------------------------------------ the spawned server's config and certificate


def test_server_config_for_each_combination(tmp_path):
    files = encryption.issue_throwaway(tmp_path, host="127.0.0.1")
    both = tomllib.loads(encryption.server_config(tls=files, tls_port=45061, srtp=SUITE))
    assert both == {"sip": {"transports": ["udp", "tcp", "tls"], "tls_port": 45061,
                            "tls_certificate": str(files.certificate_chain), "tls_private_key": str(files.private_key)},
                    "media": {"srtp": "required"}}
    assert tomllib.loads(encryption.server_config(tls=None, tls_port=None, srtp=SUITE)) == {
        "media": {"srtp": "required", "srtp_over_insecure_signalling": True}}
    assert encryption.server_config(tls=None, tls_port=None, srtp=None) == ""
    assert files.private_key.stat().st_mode & 0o077 == 0


def test_encryption_options_are_checked():
    plan = Plan(calls=1, concurrency=1, rate=1, hold=1, tls=True, srtp=SUITE)
    common = dict(address=None, spawn=True, server_cpus=None, server_pid=None, cache_dir="/tmp/cache",
                  rtp_ports="30000-39999", server_args=(), ramp=False)
    with pytest.raises(UserError, match="the peer has none"):
        Options(target="both", plan=plan, **common)
    with pytest.raises(UserError, match="--tls-ca is the CA of a running server"):
        Options(target="server", plan=plan, tls_ca="/tmp/ca.pem", **common)
    with pytest.raises(UserError, match="live-tts is not measured with SRTP"):
        Plan(calls=1, concurrency=1, rate=1, hold=1, scenario="live-tts", srtp=SUITE)


# ------------------------------------------------------------------ SIP over TLS


async def test_sip_client_over_tls_frames_responses_and_never_retransmits(tmp_path):
    files = encryption.issue_throwaway(tmp_path, host="127.0.0.1")
    context = build_server_context(TlsSettings(certificate_chain=files.certificate_chain, private_key=files.private_key))
    received = []

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True, https_compatible=True)
        framer = StreamFramer()
        while (data := await tls.receive_some(65536)):
            for message in framer.feed(data):
                received.append(message)
                request = uac.parse_message_untrusted(message)
                response = uac.response_to(request, 200, "OK")
                # Cut in two, the second part later: the client must frame, not take a read as a message.
                await tls.send_all(response[:30])
                await trio.sleep(0.05)
                await tls.send_all(response[30:] + b"\r\n\r\n")  # a keepalive after it is skipped

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        target = Target(name="server", host="127.0.0.1", port=port, tls_port=port, tls_trust=str(files.ca))
        client = await SipClient.open(local_host="127.0.0.1", target_host="127.0.0.1", target_port=port,
                                      tls=target.tls_context())
        try:
            async with trio.open_nursery() as calls:  # the receive loop ends before its socket is closed
                calls.start_soon(client.receive_loop)
                with trio.fail_after(5):
                    assert await client.options(timeout=3) == 200
                    assert await client.options(timeout=3) == 200
                calls.cancel_scope.cancel()
        finally:
            client.close()
        nursery.cancel_scope.cancel()
    assert client.endpoint.transport == "tls"
    assert client.retransmissions == 0 and client.malformed == 0
    assert len(received) == 2
    assert f"Via: SIP/2.0/TLS 127.0.0.1:{client.endpoint.local_port};".encode() in received[0]


async def test_a_server_certificate_from_another_ca_is_refused(tmp_path):
    ours = encryption.issue_throwaway(tmp_path, host="127.0.0.1")
    (tmp_path / "other").mkdir()
    theirs = encryption.issue_throwaway(tmp_path / "other", host="127.0.0.1")
    context = build_server_context(TlsSettings(certificate_chain=theirs.certificate_chain, private_key=theirs.private_key))

    async def serve(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        with trio.move_on_after(5):
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                pass

    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listener.socket.getsockname()[1]
        target = Target(name="server", host="127.0.0.1", port=port, tls_port=port, tls_trust=str(ours.ca))
        with pytest.raises(trio.BrokenResourceError) as raised:
            await SipClient.open(local_host="127.0.0.1", target_host="127.0.0.1", target_port=port,
                                 tls=target.tls_context())
        nursery.cancel_scope.cancel()
    assert isinstance(raised.value.__cause__, ssl.SSLCertVerificationError)


# ------------------------------------------------------------------ SRTP in the media process

_RTP = struct.Struct("!BBHII")


def test_the_media_process_protects_what_it_sends_and_records_only_what_authenticates():
    offer = uac.srtp_offer(SUITE)
    answer = sdes.choose_answer([offer.attributes[0].to_value()])
    keys = uac.srtp_keys_untrusted(offer, uac.parse_sdp_answer_untrusted(_answer_sdp([answer.line])))
    server = CallSrtp(answer.keys)  # the far end, keyed as the server would be
    far = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    far.bind(("127.0.0.1", 0))
    far.settimeout(2)
    engine = RtpEngine(host="127.0.0.1", caller_audio=SILENCE, ports=range(18000, 18400))
    engine.start()
    try:
        handle = engine.open_call()
        engine.start_sending(handle, far.getsockname(), 0, srtp=keys)
        clear = []
        for _ in range(5):
            datagram, source = far.recvfrom(2048)
            assert len(datagram) == 12 + 160 + SUITE.rtp_tag_length
            assert datagram[12:172] != SILENCE  # encrypted on the wire
            clear.append(server.unprotect(datagram))
        assert all(packet is not None and packet[12:] == SILENCE for packet in clear)
        assert [_RTP.unpack_from(packet)[2] for packet in clear] == [
            (_RTP.unpack_from(clear[0])[2] + n) & 0xFFFF for n in range(5)]
        # The far end sends 4 good packets, a forged one and a replay of the first.
        good = [server.protect(_RTP.pack(0x80, 0, 100 + n, 160 * n, 0x1234) + SILENCE) for n in range(4)]
        forged = bytearray(good[3])
        forged[20] ^= 1
        for datagram in [*good[:3], bytes(forged), good[3], good[0]]:
            far.sendto(datagram, source)
        time.sleep(0.3)
        engine.stop(handle)
    finally:
        engine.close()
        far.close()
        server.close()
    assert list(handle.sequences) == [100, 101, 102, 103]
    assert list(handle.timestamps) == [0, 160, 320, 480]
    assert handle.srtp_dropped == 2
    assert handle.malformed == 0
