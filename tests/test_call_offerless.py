"""An INVITE without SDP: our 200 OK carries the offer, the ACK the answer (RFC 3261 §13.2.1, RFC 3264)."""

from __future__ import annotations

import socket
import time

from eko_bench import uac
from server_helpers import ServerProcess
from test_server_torture import sip_request


def receive(sock: socket.socket, timeout: float = 3.0) -> uac.Message:
    sock.settimeout(timeout)
    return uac.parse_message_untrusted(sock.recvfrom(65535)[0])


def test_offer_in_the_200_answer_in_the_ack(built_cache):
    with ServerProcess(built_cache) as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sip, socket.socket(
        socket.AF_INET, socket.SOCK_DGRAM
    ) as rtp:
        sip.bind(("127.0.0.1", 0))
        rtp.bind(("127.0.0.1", 0))
        port = sip.getsockname()[1]
        call_id = uac.new_tag()
        sip.sendto(sip_request("INVITE", port=port, call_id=call_id), server.address)
        response = receive(sip)
        while response.status < 200:
            response = receive(sip)
        assert response.status == 200
        offer = response.body.decode()
        assert "m=audio " in offer and " RTP/AVP 0 8 101" in offer, offer
        to_tag = uac.header_parameter(response.header("to"), "tag")
        answer = (
            "v=0\r\no=- 5 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {rtp.getsockname()[1]} RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n"
        ).encode()
        sip.sendto(sip_request("ACK", port=port, call_id=call_id, to_tag=to_tag, body=answer), server.address)
        rtp.settimeout(3)
        packets = [rtp.recvfrom(2048)[0] for _ in range(10)]
        assert {packet[1] & 0x7F for packet in packets} == {8}  # PCMA, as our ACK chose
        started = time.monotonic()
        sip.sendto(sip_request("BYE", port=port, call_id=call_id, to_tag=to_tag, cseq=2), server.address)
        while True:
            message = receive(sip)
            if message.is_response and message.cseq[1] == "BYE":
                break
        assert message.status == 200 and time.monotonic() - started < 3
        server.wait_for_log(r"ended \(remote_bye\)")
