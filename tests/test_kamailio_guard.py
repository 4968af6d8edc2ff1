"""The Kamailio front as a hostile peer finds it: who it lets in, how much, and where to.

sip/kamailio/kamailio.cfg lets in the trunks of its address list (group 1) and its
nodes (dispatcher set 1), answers anyone else 403 and, beyond pike's limit, nothing;
answers a trunk 503 beyond TRUNK_RATE new requests a second; relays in-dialog
requests only from a trunk to a node or from a node to a trunk; and drops responses
that match none of its transactions.

Everything runs on loopback, where every 127.0.0.0/8 address is ours: the trunks and
the untrusted peers bind 127.0.0.2 to 127.0.0.4, the nodes and the front 127.0.0.1.
Where no media is needed the node is a plain UDP socket (no probes: ping interval 0),
which shows exactly what the front delivered to it.
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from eko_bench import uac
from raw_caller import place_call
from server_helpers import ServerProcess
from test_kamailio import RECORD_ROUTE_SCENARIO, Kamailio, assert_answered_with_media, needs_kamailio, run_sipp

pytestmark = [pytest.mark.interop, needs_kamailio]

UNTRUSTED = "127.0.0.2"
TRUNK = "127.0.0.3"
OTHER_TRUNK = "127.0.0.4"


class Peer:
    """A UDP socket on ``host`` (any free port) and the SIP messages it receives."""

    def __init__(self, host: str):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, 0))
        self.host, self.port = self.sock.getsockname()
        self.address = (self.host, self.port)

    def close(self) -> None:
        self.sock.close()

    def received(self, quiet: float) -> list[uac.Message]:
        """Everything that arrives until ``quiet`` seconds pass without a datagram."""
        messages = []
        self.sock.settimeout(quiet)
        try:
            while True:
                messages.append(uac.parse_message_untrusted(self.sock.recv(65535)))
        except TimeoutError:
            return messages

    def final_response(self, timeout: float = 3.0) -> uac.Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            message = uac.parse_message_untrusted(self.sock.recv(65535))
            if message.is_response and message.status >= 200:
                return message
        raise AssertionError(f"no final response within {timeout} s")

    def options(self, front: Kamailio) -> bytes:
        endpoint = uac.Endpoint(local_host=self.host, local_port=self.port,
                                target_host=front.address[0], target_port=front.port)
        return uac.options(endpoint, call_id=secrets.token_hex(8), branch=uac.new_branch())


def new_invite(peer: Peer, front: Kamailio) -> bytes:
    """A new call to the front, as a trunk would place it."""
    endpoint = uac.Endpoint(local_host=peer.host, local_port=peer.port, target_host="127.0.0.1", target_port=front.port)
    dialog = uac.Dialog(endpoint=endpoint, call_id=secrets.token_hex(8), from_tag=uac.new_tag(), caller="0600000000")
    return dialog.invite(branch=uac.new_branch(), sdp=uac.sdp_offer(address=peer.host, rtp_port=9, session_id=1))


def forged_in_dialog_invite(peer: Peer, front: Kamailio, request_uri: str, routes: list[str]) -> bytes:
    """An INVITE that looks like a re-INVITE of a dialog through the front: a To-tag and
    a Route naming the front, for a dialog that never existed."""
    lines = [
        f"INVITE {request_uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {peer.host}:{peer.port};branch={uac.new_branch()};rport",
        *(f"Route: {route}" for route in routes),
        "Max-Forwards: 70",
        f"From: <sip:0600000000@{peer.host}>;tag={uac.new_tag()}",
        f"To: <sip:+33899000000@{peer.host}>;tag={uac.new_tag()}",
        f"Call-ID: {secrets.token_hex(8)}",
        "CSeq: 2 INVITE",
        f"Contact: <sip:0600000000@{peer.host}:{peer.port}>",
        "Content-Length: 0",
        "", "",
    ]
    return "\r\n".join(lines).encode()


def flood(peer: Peer, front: Kamailio, count: int) -> tuple[float, list[uac.Message]]:
    """``count`` OPTIONS to the front as fast as one thread sends them; the time that took
    and every response, read while sending so that none is lost to a full buffer."""
    responses: list[uac.Message] = []
    requests = [peer.options(front) for _ in range(count)]

    def read() -> None:
        responses.extend(peer.received(quiet=1.0))

    reader = threading.Thread(target=read)
    reader.start()
    started = time.monotonic()
    for request in requests:
        peer.sock.sendto(request, front.address)
    took = time.monotonic() - started
    reader.join()
    return took, responses


def statuses(responses: list[uac.Message]) -> dict[tuple[int, str], int]:
    counted: dict[tuple[int, str], int] = {}
    for response in responses:
        counted[(response.status, response.reason)] = counted.get((response.status, response.reason), 0) + 1
    return counted


def test_a_new_request_from_an_untrusted_source_is_refused_and_never_reaches_the_node(tmp_path):
    node, stranger, trunk = Peer("127.0.0.1"), Peer(UNTRUSTED), Peer(TRUNK)
    try:
        with Kamailio(tmp_path, [node.port], ping_interval=0, trunks=(TRUNK,)) as front:
            stranger.sock.sendto(new_invite(stranger, front), front.address)
            refused_invite = stranger.final_response()
            stranger.sock.sendto(stranger.options(front), front.address)
            refused_options = stranger.final_response()
            delivered_to_node = node.received(quiet=0.5)
            # The same INVITE from the trunk's address is dispatched to the node (and
            # retransmitted by the front, as this node never answers).
            invite = new_invite(trunk, front)
            trunk.sock.sendto(invite, front.address)
            from_the_trunk = node.received(quiet=0.3)
            refusals = front.script_lines(r"(\S+) from untrusted (\S+) refused")
    finally:
        for peer in (node, stranger, trunk):
            peer.close()
    assert delivered_to_node == []
    assert (refused_invite.status, refused_invite.reason) == (403, "Forbidden")
    assert (refused_options.status, refused_options.reason) == (403, "Forbidden")
    assert from_the_trunk and {(message.method, message.call_id) for message in from_the_trunk} == {
        ("INVITE", uac.parse_message_untrusted(invite).call_id)}
    assert [(m.group(1), m.group(2)) for m in refusals] == [
        ("INVITE", f"{UNTRUSTED}:{stranger.port}"), ("OPTIONS", f"{UNTRUSTED}:{stranger.port}")]


def test_an_options_flood_from_an_untrusted_source_goes_unanswered_and_the_trunk_still_calls(built_cache, tmp_path):
    stranger = Peer(UNTRUSTED)
    try:
        with ServerProcess(built_cache) as node, \
                Kamailio(tmp_path, [node.port], ping_interval=1,
                         defines={"PIKE_DENSITY": 10, "PIKE_UNIT": 2}) as front, \
                ThreadPoolExecutor(1) as pool:
            call = pool.submit(place_call, front.address, hold=1.5, timeout=10)  # from 127.0.0.1, a trunk
            node.wait_for_log(r"INVITE received")
            took, responses = flood(stranger, front, 500)
            record = call.result(timeout=15)
            node.wait_for_log(r"ended \(remote_bye\)")
            floods = front.script_lines(r"flood from untrusted (\S+): no more answers")
    finally:
        stranger.close()
    assert took < 0.1, took
    counted = statuses(responses)
    # pike blocks an IPv4 source somewhere between PIKE_DENSITY and 3 x PIKE_DENSITY
    # requests; every earlier one got 403, none got anything else.
    assert set(counted) == {(403, "Forbidden")}, counted
    assert 10 <= counted[(403, "Forbidden")] <= 30, counted
    assert [m.group(1) for m in floods] == [UNTRUSTED]
    assert_answered_with_media(record)


def test_a_trunk_beyond_its_rate_gets_503_and_another_trunk_still_calls(built_cache, tmp_path):
    noisy = Peer(OTHER_TRUNK)
    try:
        with ServerProcess(built_cache) as node, \
                Kamailio(tmp_path, [node.port], ping_interval=1, trunks=("127.0.0.1", OTHER_TRUNK),
                         defines={"TRUNK_RATE": 20}) as front, \
                ThreadPoolExecutor(1) as pool:
            call = pool.submit(place_call, front.address, hold=1.5, timeout=10)  # from 127.0.0.1
            node.wait_for_log(r"INVITE received")
            took, responses = flood(noisy, front, 500)
            record = call.result(timeout=15)
            node.wait_for_log(r"ended \(remote_bye\)")
            time.sleep(1.1)  # the next one-second window
            noisy.sock.sendto(noisy.options(front), front.address)
            after_the_flood = noisy.final_response()
    finally:
        noisy.close()
    assert took < 0.5, took
    counted = statuses(responses)
    assert set(counted) <= {(200, "OK"), (503, "Rate Limit Exceeded")}, counted
    # TAILDROP over one-second windows: 20 pass in each window the flood touched.
    assert 20 <= counted.get((200, "OK"), 0) <= 40, counted
    # The rest got 503, bar those lost to full socket buffers (a hundred, some runs).
    assert counted.get((503, "Rate Limit Exceeded"), 0) >= 250, counted
    assert {r.header("retry-after") for r in responses if r.status == 503} == {"1"}
    assert after_the_flood.status == 200
    assert_answered_with_media(record)


@pytest.mark.parametrize("sender, routes_after_ours, trunks", [
    (UNTRUSTED, False, (TRUNK,)),
    (TRUNK, False, (TRUNK,)),
    (TRUNK, False, (TRUNK, "127.0.0.1")),  # the target is a trunk's address: trunk to trunk
    (TRUNK, True, (TRUNK,)),
    ("node", False, (TRUNK,)),
], ids=["untrusted", "trunk-to-a-stranger", "trunk-to-a-trunk", "route-after-ours", "node-to-a-stranger"])
def test_a_forged_in_dialog_invite_is_not_relayed(tmp_path, sender, routes_after_ours, trunks):
    node, victim = Peer("127.0.0.1"), Peer("127.0.0.1")
    forger = node if sender == "node" else Peer(sender)
    try:
        with Kamailio(tmp_path, [node.port], ping_interval=0, trunks=trunks) as front:
            ours = f"<sip:127.0.0.1:{front.port};lr>"
            toll = f"sip:+33899000000@127.0.0.1:{victim.port}"
            if routes_after_ours:
                # Aimed at the node, but with a further Route: the front's next hop is the victim.
                request = forged_in_dialog_invite(forger, front, f"sip:eko@127.0.0.1:{node.port}",
                                                  [ours, f"<sip:127.0.0.1:{victim.port};lr>"])
            else:
                request = forged_in_dialog_invite(forger, front, toll, [ours])
            forger.sock.sendto(request, front.address)
            answer = forger.final_response()
            delivered = victim.received(quiet=1.0) + (node.received(quiet=0.1) if forger is not node else [])
    finally:
        for peer in {node, victim, forger}:
            peer.close()
    assert delivered == []
    assert (answer.status, answer.reason) == (403, "Forbidden")


def test_a_response_matching_no_transaction_is_not_relayed(tmp_path):
    node, victim, trunk = Peer("127.0.0.1"), Peer("127.0.0.1"), Peer(TRUNK)
    try:
        with Kamailio(tmp_path, [node.port], ping_interval=0, trunks=(TRUNK,)) as front:
            forged = "\r\n".join([
                "SIP/2.0 200 OK",
                f"Via: SIP/2.0/UDP 127.0.0.1:{front.port};branch={uac.new_branch()}",
                f"Via: SIP/2.0/UDP 127.0.0.1:{victim.port};branch={uac.new_branch()}",
                f"From: <sip:eko@{TRUNK}>;tag={uac.new_tag()}",
                f"To: <sip:+33899000000@127.0.0.1>;tag={uac.new_tag()}",
                f"Call-ID: {secrets.token_hex(8)}",
                "CSeq: 1 INVITE",
                "Content-Length: 0",
                "", "",
            ]).encode()
            trunk.sock.sendto(forged, front.address)
            delivered = victim.received(quiet=1.0)
            dropped = front.script_lines(r"response (\d+) \S+ from (\S+) matches no transaction; dropped")
    finally:
        for peer in (node, victim, trunk):
            peer.close()
    assert delivered == []
    assert [(m.group(1), m.group(2)) for m in dropped] == [("200", f"{TRUNK}:{trunk.port}")]


def test_a_late_200_retransmission_still_reaches_the_caller(tmp_path):
    # Responses that match no transaction are dropped, so the front must keep the INVITE's
    # transaction for as long as a node retransmits its 200 without an ACK (64·T1), not
    # Kamailio's default 5 s.
    node, caller = Peer("127.0.0.1"), Peer(TRUNK)
    try:
        with Kamailio(tmp_path, [node.port], ping_interval=0, trunks=(TRUNK,)) as front:
            caller.sock.sendto(new_invite(caller, front), front.address)
            [invite, *_] = node.received(quiet=0.2)
            copied = [f"{name}: {value}" for name, value in invite.headers
                      if name in ("via", "from", "call-id", "cseq", "record-route")]
            ok = "\r\n".join([
                "SIP/2.0 200 OK", *copied, f"To: {invite.header('to')};tag={uac.new_tag()}",
                f"Contact: <sip:eko@127.0.0.1:{node.port}>", "Content-Length: 0", "", "",
            ]).encode()
            node.sock.sendto(ok, front.address)
            first = [message.status for message in caller.received(quiet=0.5)]
            time.sleep(6.0)  # no ACK: the node retransmits, past tm's default wait of 5 s
            node.sock.sendto(ok, front.address)
            late = [message.status for message in caller.received(quiet=0.5)]
            dropped = front.script_lines(r"matches no transaction; dropped")
    finally:
        for peer in (node, caller):
            peer.close()
    assert first[-1] == 200 and set(first) <= {100, 200}, first
    assert late == [200]
    assert dropped == []


def test_a_call_from_a_trunk_on_its_own_address_reaches_its_node_through_the_front(built_cache, tmp_path):
    # The trunk is not on the nodes' address (the other tests' callers share 127.0.0.1 with
    # the nodes): its ACK and BYE, with the front's Route, still reach the node.
    with ServerProcess(built_cache) as node, \
            Kamailio(tmp_path, [node.port], ping_interval=1, trunks=(TRUNK,)) as front:
        failure = run_sipp(RECORD_ROUTE_SCENARIO, front.address, tmp_path, local_host=TRUNK)
        assert not failure, f"{failure}\n{front.log()[-3000:]}"
        node.wait_for_log(r"ended \(remote_bye\)")
        routed = front.script_lines(r"in-dialog (\S+) from (\S+):\d+ routed to (\S+)")
        refused = front.script_lines(r"refused")
    assert [(m.group(1), m.group(2), m.group(3)) for m in routed] == [
        ("ACK", TRUNK, f"sip:eko@127.0.0.1:{node.port}"), ("BYE", TRUNK, f"sip:eko@127.0.0.1:{node.port}")]
    assert refused == []


def test_a_node_may_not_start_a_call_through_the_front(tmp_path):
    node = Peer("127.0.0.1")
    try:
        with Kamailio(tmp_path, [node.port], ping_interval=0, trunks=(TRUNK,)) as front:
            node.sock.sendto(new_invite(node, front), front.address)
            answer = node.final_response()
            refused = front.wait_for_script_lines(r"new (\S+) from node (\S+) refused")
    finally:
        node.close()
    assert (answer.status, answer.reason) == (403, "Forbidden")
    assert [(m.group(1), m.group(2)) for m in refused] == [("INVITE", f"127.0.0.1:{node.port}")]
