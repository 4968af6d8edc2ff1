"""The smallest inputs the fuzzers found that broke a promise, kept as plain tests.

Each test names the fuzzer that found it and the module at fault: "fixed" ones guard
against a regression, an "OPEN" one fails until that module's owner fixes it.
"""

from __future__ import annotations

import random

import pytest

from eko_rtp.crm.errors import CrmReplyError, RpcProtocolError
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcLimits
from eko_rtp.crm.records import parse_callback_request_untrusted, parse_ticket_request_untrusted
from eko_rtp.media import sdp
from eko_rtp.media.negotiation import MediaSession
from eko_rtp.sip.events import SessionModified, Transmit
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

PEER = ("192.0.2.20", 5070)


def sdp_offer(formats: str) -> bytes:
    return (f"v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n"
            f"m=audio 4000 RTP/AVP {formats}\r\n").encode()


@pytest.mark.parametrize("formats, codec", [("0 0 0 ²", "PCMU"), ("1² 8", "PCMA"), ("٠ 8", "PCMA")])
def test_unicode_digits_are_not_payload_types(formats, codec):
    """test_fuzz_media (media/sdp.py, fixed): "²" passed str.isdigit() and int() raised
    ValueError out of negotiate_answer; "٠" (an Arabic-Indic zero) was taken for PCMU's 0.
    A format is a payload type only in ASCII digits."""
    offer = sdp.parse_sdp_untrusted(sdp_offer(formats))
    plan, _ = sdp.negotiate_answer(offer, local_address="192.0.2.10", local_port=5000,
                                   origin=sdp.SdpOrigin(session_id=1, version=1, address="192.0.2.10"))
    assert plan.codec.name == codec


def test_only_unicode_digits_is_no_codec_in_common():
    offer = sdp.parse_sdp_untrusted(sdp_offer("²"))
    with pytest.raises(sdp.SdpError) as caught:
        sdp.negotiate_answer(offer, local_address="192.0.2.10", local_port=5000,
                             origin=sdp.SdpOrigin(session_id=1, version=1, address="192.0.2.10"))
    assert caught.value.status == 488


@pytest.mark.parametrize("parse, fields, key", [
    (parse_ticket_request_untrusted, {"call_id": "0", "phone": None, "reason": "", "category": "internet"},
     "created_at"),
    (parse_callback_request_untrusted, {"call_id": "0", "phone": "+33612345678", "reason": "", "queue": "internet"},
     "not_before"),
])
def test_moments_out_of_range_in_utc_are_refused(parse, fields, key):
    """test_fuzz_crm (crm/records.py, fixed): 0001-01-01T00:00:00+01:00 parsed, then
    to_wire() (what crm/store.py writes) raised OverflowError converting it to UTC."""
    with pytest.raises(CrmReplyError, match=f"{key} 0001-01-01T00:00:00\\+01:00 is out of range in UTC"):
        parse({**fields, key: "0001-01-01T00:00:00+01:00"})
    assert parse({**fields, key: "9999-12-31T23:59:59-00:00"}).to_wire()[key] == "9999-12-31T23:59:59+00:00"


def request(method: str, *, branch: str, cseq: int, to_tag: str | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} sip:eko@192.0.2.10:5060 SIP/2.0", f"Via: SIP/2.0/UDP 192.0.2.20:5070;branch={branch}",
             "Max-Forwards: 70", 'From: "Alice" <sip:alice@example.org>;tag=caller',
             "To: <sip:eko@192.0.2.10>" + (f";tag={to_tag}" if to_tag else ""), "Call-ID: call-1",
             f"CSeq: {cseq} {method}", "Contact: <sip:alice@192.0.2.20:5070>"]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.mark.parametrize("our_offer_in", ["2xx to the INVITE", "2xx to a re-INVITE"])
def test_update_with_an_offer_while_our_offer_awaits_the_ack_gets_491(our_offer_in):
    """test_fuzz_useragent (sip/useragent.py, fixed): an INVITE (or re-INVITE) without SDP,
    our 2xx carries the offer, and before the ACK brings the answer an UPDATE brings an
    offer. RFC 3311 §5.2: "If an UPDATE is received that contains an offer, and the UAS
    has generated an offer (in an UPDATE, PRACK or INVITE) to which it has not yet
    received an answer, the UAS MUST reject the UPDATE with a 491 response." The core
    passed it on as SessionModified, and the server's MediaSession.reinvite raised
    NegotiationError (offer/answer: re-INVITE with SDP is not allowed in state offered):
    an internal error, and the call hung up."""
    ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(0))
    media = MediaSession(local_address="192.0.2.10", local_port=5000, session_id=1)
    initial_offer = sdp_offer("0") if our_offer_in == "2xx to a re-INVITE" else b""
    ua.receive(request("INVITE", branch="z9hG4bK-1", cseq=1, body=initial_offer), source=PEER, transport="udp",
               now=0.0)
    [incoming] = [event for event in ua.events() if not isinstance(event, Transmit)]
    assert ua.answer(incoming.call_id, media.invite(incoming.offer).body, 0.0)
    tag = ua._calls["call-1"].dialog.local_tag
    cseq = 1
    if our_offer_in == "2xx to a re-INVITE":
        ua.receive(request("ACK", branch="z9hG4bK-2", cseq=1, to_tag=tag), source=PEER, transport="udp", now=0.1)
        media.ack(None)
        ua.receive(request("INVITE", branch="z9hG4bK-3", cseq=2, to_tag=tag), source=PEER, transport="udp", now=0.2)
        [modified] = [event for event in ua.events() if isinstance(event, SessionModified)]
        assert ua.answer_modification(modified.call_id, media.reinvite(modified.offer).body, 0.2)
        cseq = 2
    ua.events()
    ua.receive(request("UPDATE", branch="z9hG4bK-4", cseq=cseq + 1, to_tag=tag, body=sdp_offer("0")), source=PEER,
               transport="udp", now=0.3)
    events = ua.events()
    assert not [event for event in events if isinstance(event, SessionModified)]
    assert [event.data[:12] for event in events if isinstance(event, Transmit)] == [b"SIP/2.0 491 "]


def test_no_transfer_news_after_the_call_ended():
    """test_fuzz_useragent (sip/useragent.py, fixed): the script transfers, then hangs up
    (our BYE in flight: ENDING, CallEnded already told). The REFER's deadlines still ran,
    and 5 s later a TransferUpdate(state="failed", reason="no NOTIFY after our REFER")
    came for a call the shell was told is over (the server counted it in
    eko_transfers_total{result="failed"}), while a NOTIFY in that state gets 481."""
    ua = UserAgent(UserAgentSettings(host="192.0.2.10"), rng=random.Random(0))
    ua.receive(request("INVITE", branch="z9hG4bK-1", cseq=1, body=sdp_offer("0")), source=PEER, transport="udp",
               now=0.0)
    ua.events()
    assert ua.answer("call-1", MediaSession(local_address="192.0.2.10", local_port=5000, session_id=1).invite(
        sdp_offer("0")).body, 0.0)
    tag = ua._calls["call-1"].dialog.local_tag
    ua.receive(request("ACK", branch="z9hG4bK-2", cseq=1, to_tag=tag), source=PEER, transport="udp", now=0.1)
    assert ua.transfer("call-1", "sip:tech@192.0.2.30", 0.2)
    assert ua.hangup("call-1", 0.3)
    assert [type(event).__name__ for event in ua.events() if not isinstance(event, Transmit)] == [
        "CallConfirmed", "CallEnded"]
    late = []
    while ua.next_deadline() is not None and ua.next_deadline() <= 60.0:
        ua.handle_timers(ua.next_deadline())
        late += [event for event in ua.events() if not isinstance(event, Transmit)]
    assert late == []


def test_rpc_message_limit_holds_whatever_the_reads():
    """test_fuzz_crm (crm/rpc.py, fixed): max_message_bytes ("a peer can make us buffer at
    most max_message_bytes of one incomplete message") was enforced by the Unpacker's
    max_buffer_size, which counts only bytes not yet parsed: the Unpacker resumes, and
    what it has parsed of an incomplete message (array heads, whole elements) no longer
    counted. 65 bytes of nested arrays in one read were refused with a 64-byte limit; in
    two reads (1 + 64) they were taken. Scaled up, [2, "m", [10000 arrays of 1000 nils]]
    fed in 1-KB reads grew past a 64-KB limit without end (3 MB held after 3000 reads)."""
    limits = RpcLimits(max_message_bytes=64)
    at_once = RpcConnection(limits=limits)
    at_once.receive_data(b"\x91" * 65)
    with pytest.raises(RpcProtocolError, match="exceeds 64 bytes"):
        at_once.next_event()
    in_two_reads = RpcConnection(limits=limits)
    in_two_reads.receive_data(b"\x91")
    assert in_two_reads.next_event() is NEED_DATA
    with pytest.raises(RpcProtocolError, match="exceeds 64 bytes"):
        in_two_reads.receive_data(b"\x91" * 64)
        in_two_reads.next_event()


def test_rpc_a_long_read_of_small_messages_is_taken():
    """test_fuzz_crm (crm/rpc.py, fixed): one read longer than max_message_bytes was refused
    even when it holds only whole messages, each far below the limit (the Unpacker's
    max_buffer_size bounded what one feed() might hold); the same bytes in shorter reads
    were taken. Latent with the shells' 64 KB reads and the 1 MB default, live for any
    max_message_bytes below the read size."""
    connection = RpcConnection(limits=RpcLimits(max_message_bytes=64))
    connection.receive_data(b"\x94\x00\x00\xa0\x90" * 13)  # 13 requests [0, 0, "", []] of 5 bytes
    events = []
    while (event := connection.next_event()) is not NEED_DATA:
        events.append(event)
    assert len(events) == 13
