"""The source latch core (media/latch.py): who a call's caller is, and when media may go to it.

Tables: the transition matrix, the classification of a packet by source and moment,
where media may go before the caller proved it is there, whole call histories
(first packet, NAT, strays, silence, re-INVITE), RTCP, and the config's networks.
"""

from __future__ import annotations

import ast
import ipaddress
from pathlib import Path

import pytest

from eko_rtp.media.latch import (
    TRANSITIONS,
    LatchAction,
    LatchInput,
    LatchPolicy,
    LatchState,
    SourceLatch,
    parse_networks,
)

LOOPBACK_ONLY = LatchPolicy(trusted_networks=parse_networks(["127.0.0.1/32"]))
TRUNK = LatchPolicy(trusted_networks=parse_networks(["192.0.2.0/24"]), relatch_after=2.0)

# Read a row as "in this state, a packet of this kind leads to STATE/ACTION".
MATRIX = """
state      FROM_SIGNALLED    FROM_ACCEPTABLE  FROM_MOVED_CALLER  FROM_STRANGER   NEW_ADDRESS
WAITING    SIGNALLED/LATCH   LEARNED/LATCH    LEARNED/LATCH      WAITING/DROP    WAITING/RESET
SIGNALLED  SIGNALLED/LATCH   SIGNALLED/DROP   LEARNED/LATCH      SIGNALLED/DROP  WAITING/RESET
LEARNED    SIGNALLED/LATCH   LEARNED/DROP     LEARNED/LATCH      LEARNED/DROP    WAITING/RESET
"""


def test_the_transition_table_is_the_matrix_and_covers_every_pair():
    header, *rows = MATRIX.strip().splitlines()
    inputs = [LatchInput[name] for name in header.split()[1:]]
    expected = {}
    for row in rows:
        state, *cells = row.split()
        for event, cell in zip(inputs, cells):
            to_state, action = cell.split("/")
            expected[(LatchState[state], event)] = (LatchState[to_state], LatchAction[action])
    assert TRANSITIONS == expected
    assert set(TRANSITIONS) == {(state, event) for state in LatchState for event in LatchInput}
    # SourceLatch.admit drops a stranger's packet without the table's lookup: it must keep saying so.
    assert all(TRANSITIONS[(state, LatchInput.FROM_STRANGER)] == (state, LatchAction.DROP) for state in LatchState)


CALLER = ("192.0.2.10", 40000)  # in the trunk's network
NAT_INSIDE = ("10.1.2.3", 4000)
PUBLIC = ("198.51.100.7", 5000)  # a caller outside any trusted network


CALLER_SSRC = 0x1111
OTHER_SSRC = 0x5EED


def latch(policy=TRUNK, signalled=CALLER, *, answered=True, source=None):
    machine = SourceLatch(policy=policy, signalled=signalled)
    if answered:
        machine.answer()
    if source is not None:
        assert machine.admit(source, CALLER_SSRC, 0.0)
    return machine


# A packet's SSRC is the caller's unless the row says OTHER_SSRC.
@pytest.mark.parametrize(("signalled", "answered", "latched", "last_heard", "now", "source", "expected"), [
    # The signalled address is the caller's, before the answer too (RFC 4961).
    (CALLER, False, None, None, 0.0, CALLER, LatchInput.FROM_SIGNALLED),
    (CALLER, True, None, None, 0.0, CALLER, LatchInput.FROM_SIGNALLED),
    # Before the answer the caller does not know our port: anyone else is a stranger.
    (CALLER, False, None, None, 0.0, ("192.0.2.10", 40002), LatchInput.FROM_STRANGER),
    (NAT_INSIDE, False, None, None, 0.0, PUBLIC, LatchInput.FROM_STRANGER),
    # After it: the signalled IP on another port, a trusted network, anyone for a private c=.
    (CALLER, True, None, None, 0.0, ("192.0.2.10", 40002), LatchInput.FROM_ACCEPTABLE),
    (CALLER, True, None, None, 0.0, ("192.0.2.99", 7000), LatchInput.FROM_ACCEPTABLE),
    (NAT_INSIDE, True, None, None, 0.0, PUBLIC, LatchInput.FROM_ACCEPTABLE),
    (("100.64.0.9", 4000), True, None, None, 0.0, PUBLIC, LatchInput.FROM_ACCEPTABLE),  # RFC 6598
    (("fd00::5", 4000), True, None, None, 0.0, ("2001:db8::7", 9), LatchInput.FROM_ACCEPTABLE),  # RFC 4193
    # A public c= and a source elsewhere: a stranger, whenever it comes.
    (PUBLIC, True, None, None, 0.0, ("203.0.113.5", 5000), LatchInput.FROM_STRANGER),
    (PUBLIC, True, PUBLIC, 0.0, 100.0, ("203.0.113.5", 5000), LatchInput.FROM_STRANGER),
    # Loopback is not a NAT's inside: a c=127.0.0.1 does not open the latch to everyone.
    (("127.0.0.1", 4000), True, None, None, 0.0, ("198.51.100.1", 4000), LatchInput.FROM_STRANGER),
    # Latched: the caller's stream from an acceptable source takes over only once the latched
    # one is silent for relatch_after...
    (CALLER, True, CALLER, 10.0, 11.999, ("192.0.2.10", 40002), LatchInput.FROM_ACCEPTABLE),
    (CALLER, True, CALLER, 10.0, 12.0, ("192.0.2.10", 40002), LatchInput.FROM_MOVED_CALLER),
    (NAT_INSIDE, True, PUBLIC, None, 0.0, ("198.51.100.8", 1), LatchInput.FROM_MOVED_CALLER),
    # ... and another SSRC never does (a silent caller is no invitation: silence suppression).
    (CALLER, True, CALLER, 10.0, 60.0, ("192.0.2.10", 40002, OTHER_SSRC), LatchInput.FROM_STRANGER),
    (NAT_INSIDE, True, PUBLIC, 10.0, 60.0, ("198.51.100.8", 1, OTHER_SSRC), LatchInput.FROM_STRANGER),
    # A name is no address: trusted by no network, private to nobody.
    (("phone.example", 4000), True, None, None, 0.0, ("192.0.2.50", 1), LatchInput.FROM_ACCEPTABLE),
    (("phone.example", 4000), True, None, None, 0.0, PUBLIC, LatchInput.FROM_STRANGER),
])
def test_a_packet_not_from_the_latched_source_is_classified_by_source_and_moment(
        signalled, answered, latched, last_heard, now, source, expected):
    machine = latch(signalled=signalled, answered=answered, source=latched)
    ssrc = source[2] if len(source) == 3 else CALLER_SSRC
    assert machine.classify(source[:2], ssrc, now, last_heard, CALLER_SSRC) is expected


@pytest.mark.parametrize(("policy", "signalled", "acknowledged", "first_packet", "may_send"), [
    (TRUNK, CALLER, False, None, True),  # a trunk's gateway: media with the 200 OK
    (TRUNK, PUBLIC, False, None, False),  # anyone else: not before it proved it is there...
    (TRUNK, PUBLIC, True, None, True),  # ... by the ACK (a public address)
    (TRUNK, PUBLIC, False, PUBLIC, True),  # ... or by its first RTP packet
    (TRUNK, ("2001:db8::7", 9), True, None, True),
    # An address a remote caller cannot mean for us: only its packets open the way, not the ACK.
    (TRUNK, NAT_INSIDE, True, None, False),
    (TRUNK, NAT_INSIDE, True, PUBLIC, True),  # symmetric RTP to the NAT's face
    (TRUNK, ("100.64.1.1", 9), True, None, False),  # RFC 6598
    (TRUNK, ("fd00::1", 9), True, None, False),  # RFC 4193
    (TRUNK, ("169.254.1.1", 9), True, None, False),  # link-local
    (TRUNK, ("224.0.0.1", 9), True, None, False),  # multicast
    (TRUNK, ("255.255.255.255", 9), True, None, False),  # broadcast (reserved)
    (TRUNK, ("phone.example", 9), True, None, False),  # a name: no blocking look-up on the media path
    (LOOPBACK_ONLY, ("127.0.0.2", 9), True, None, False),
    (LatchPolicy(), ("127.0.0.2", 9), False, None, True),  # the default trusts loopback
    (LatchPolicy(), ("::1", 9), False, None, True),
    (LatchPolicy(trusted_networks=parse_networks(["10.0.0.0/8"])), NAT_INSIDE, False, None, True),  # our LAN
])
def test_media_goes_to_an_untrusted_address_only_after_the_ack_or_its_first_packet(
        policy, signalled, acknowledged, first_packet, may_send):
    machine = latch(policy, signalled)
    if acknowledged:
        machine.acknowledge()
    if first_packet is not None:
        assert machine.admit(first_packet, 1, 0.5)
    assert machine.may_send is may_send
    assert machine.destination == (first_packet or signalled)


# Histories: (what happens, from where, when, the answer from admit or None, the state after,
# where media goes); packets carry the caller's SSRC, a stranger's (STRAY) another.
STRAY = ("203.0.113.66", 6666)


@pytest.mark.parametrize(("signalled", "steps"), [
    pytest.param(CALLER, [
        ("packet", CALLER, 1.0, True, LatchState.SIGNALLED, CALLER),
        ("packet", STRAY, 1.1, False, LatchState.SIGNALLED, CALLER),  # a stranger is dropped...
        ("packet", STRAY, 60.0, False, LatchState.SIGNALLED, CALLER),  # ... even after any silence
        ("packet", ("192.0.2.10", 40002), 1.2, False, LatchState.SIGNALLED, CALLER),  # the caller is alive
    ], id="latched-once-strangers-dropped"),
    pytest.param(CALLER, [
        ("packet", CALLER, 1.0, True, LatchState.SIGNALLED, CALLER),
        ("heard", None, 1.0, None, LatchState.SIGNALLED, CALLER),
        ("packet", ("192.0.2.10", 40002), 2.999, False, LatchState.SIGNALLED, CALLER),
        ("packet", ("192.0.2.10", 40002), 3.0, True, LatchState.LEARNED, ("192.0.2.10", 40002)),  # NAT re-mapped
        ("packet", CALLER, 3.1, True, LatchState.SIGNALLED, CALLER),  # the signalled address wins at once
    ], id="relatch-after-silence"),
    pytest.param(NAT_INSIDE, [
        ("packet", PUBLIC, 0.5, True, LatchState.LEARNED, PUBLIC),  # the NAT's face, first after the answer
        ("heard", None, 0.5, None, LatchState.LEARNED, PUBLIC),
        ("packet", STRAY, 0.6, False, LatchState.LEARNED, PUBLIC),  # a second source while the first speaks
        ("packet", STRAY, 60.0, False, LatchState.LEARNED, PUBLIC),  # or is silent: not the caller's SSRC
        ("moved", ("198.51.100.7", 5002), 2.4, False, LatchState.LEARNED, PUBLIC),  # the caller's, too early
        ("moved", ("198.51.100.7", 5002), 2.5, True, LatchState.LEARNED, ("198.51.100.7", 5002)),  # re-mapped
    ], id="nat"),
    pytest.param(CALLER, [
        ("packet", CALLER, 1.0, True, LatchState.SIGNALLED, CALLER),
        ("signal", CALLER, 5.0, None, LatchState.SIGNALLED, CALLER),  # a re-INVITE to the same address
        ("signal", ("192.0.2.20", 41000), 5.0, None, LatchState.WAITING, ("192.0.2.20", 41000)),  # moved
        ("packet", CALLER, 5.1, True, LatchState.LEARNED, CALLER),  # same trusted network: acceptable
        ("packet", ("192.0.2.20", 41000), 5.2, True, LatchState.SIGNALLED, ("192.0.2.20", 41000)),
    ], id="re-invite"),
    pytest.param(PUBLIC, [
        ("packet", ("192.0.2.10", 40000), 0.5, True, LatchState.LEARNED, ("192.0.2.10", 40000)),  # trusted source
        ("packet", PUBLIC, 0.6, True, LatchState.SIGNALLED, PUBLIC),
    ], id="signalled-beats-learned"),
    pytest.param(("2001:DB8:0:0::7", 5000), [  # the SDP's spelling; an IPv6 socket's (host, port, flow, scope)
        ("packet", ("2001:db8::8", 5000, 0, 0), 0.5, False, LatchState.WAITING, ("2001:db8::7", 5000)),
        ("packet", ("2001:db8::7", 5000, 0, 0), 0.6, True, LatchState.SIGNALLED, ("2001:db8::7", 5000, 0, 0)),
    ], id="ipv6"),
])
def test_latch_histories(signalled, steps):
    machine = latch(signalled=signalled)
    last_heard = None
    for kind, address, now, admitted, state, destination in steps:
        if kind in ("packet", "moved"):
            if address == machine.source:
                raise AssertionError("the stream never asks about its latched source")
            ssrc = OTHER_SSRC if address == STRAY else CALLER_SSRC
            assert machine.admit(address, ssrc, now, last_heard=last_heard, caller_ssrc=CALLER_SSRC) is admitted, \
                (kind, address, now)
            if admitted:
                last_heard = now
        elif kind == "heard":
            last_heard = now
        else:
            machine.signal(address)
        assert (machine.state, machine.destination) == (state, destination), (kind, address, now)


def test_strays_and_relatches_are_counted_and_the_ssrc_recorded():
    machine = latch(signalled=CALLER)
    assert machine.admit(CALLER, 0xCAFE, 0.1)
    for _ in range(3):
        assert not machine.admit(STRAY, 0xBAD, 0.2, last_heard=0.1)
    # The caller changed its SSRC on the latched source (counted there, by the stream), then moved.
    assert machine.admit(("192.0.2.10", 40002), 0xCAFF, 9.0, last_heard=0.1, caller_ssrc=0xCAFF)
    assert (machine.strays, machine.relatches, machine.ssrc) == (3, 1, 0xCAFF)
    # Without the stream's word on the last SSRC, the one that latched is the caller's.
    assert machine.admit(CALLER, 0xCAFE, 20.0, last_heard=9.0)  # the signalled address: at once
    assert not machine.admit(("192.0.2.10", 40004), 0xCAFF, 30.0, last_heard=20.0)
    assert machine.admit(("192.0.2.10", 40004), 0xCAFE, 30.0, last_heard=20.0)
    assert (machine.strays, machine.relatches) == (4, 3)


@pytest.mark.parametrize(("signalled", "rtcp", "latched", "host", "accepted"), [
    (CALLER, None, None, "192.0.2.10", True),  # before any RTP: from the signalled IP
    (CALLER, ("192.0.2.11", 40001), None, "192.0.2.11", True),  # or the a=rtcp one
    (CALLER, None, None, "203.0.113.66", False),
    (PUBLIC, None, None, "192.0.2.50", True),  # an acceptable source (a trusted network), after the answer
    (NAT_INSIDE, None, None, "203.0.113.66", True),  # (the NAT's face)
    (NAT_INSIDE, None, PUBLIC, PUBLIC[0], True),  # latched: from the latched IP (its own NAT port)
    (NAT_INSIDE, None, PUBLIC, NAT_INSIDE[0], False),
    (CALLER, None, CALLER, "203.0.113.66", False),  # a stranger's RTCP keeps no call alive
])
def test_rtcp_counts_only_from_the_callers_address(signalled, rtcp, latched, host, accepted):
    machine = SourceLatch(policy=TRUNK, signalled=signalled, signalled_rtcp=rtcp)
    machine.answer()
    if latched is not None:
        assert machine.admit(latched, 1, 0.0)
    assert machine.accepts_rtcp(host) is accepted
    assert machine.rtcp_strays == (0 if accepted else 1)


def test_an_address_first_signalled_by_the_ack_latches_like_any_other():
    machine = SourceLatch(policy=LOOPBACK_ONLY, signalled=None)  # an offerless INVITE: our offer in the 200
    machine.answer()
    assert machine.destination is None and not machine.may_send
    assert not machine.admit(PUBLIC, 1, 0.1)  # nothing signalled yet: nothing is acceptable
    assert machine.signal(PUBLIC) is False  # nothing latched to reset
    machine.acknowledge()
    assert machine.may_send and machine.destination == PUBLIC


@pytest.mark.parametrize(("texts", "message"), [
    (["10.0.0.0/8", "2001:db8::/32", " 192.0.2.1 "], None),
    (["10.0.0.300/8"], "'10.0.0.300/8' is not a network like 192.0.2.0/24 or 2001:db8::/32"),
    (["10.0.0.1/8"], "'10.0.0.1/8' has host bits set: write '10.0.0.0/8' (or the address alone)"),
    ([5], "expected CIDR strings like '192.0.2.0/24', got 5"),
])
def test_networks_parse_or_name_the_bad_entry(texts, message):
    if message is None:
        assert parse_networks(texts) == (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32"),
                                         ipaddress.ip_network("192.0.2.1/32"))
    else:
        with pytest.raises(ValueError) as caught:
            parse_networks(texts)
        assert str(caught.value) == message


@pytest.mark.parametrize("bad", [0, -1, "2"])
def test_relatch_after_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="relatch_after must be a positive number of seconds"):
        LatchPolicy(relatch_after=bad)


def test_the_latch_is_a_core_it_imports_neither_trio_nor_socket():
    path = Path(__file__).resolve().parents[1] / "eko_rtp" / "media" / "latch.py"
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module if node.module.startswith("eko_rtp") else node.module.split(".")[0])
    assert roots <= {"__future__", "functools", "ipaddress", "attrs", "eko_rtp.state_enum"}


@pytest.mark.parametrize(("media", "message"), [
    ({"trusted_networks": ["10.0.0.1/8"]}, "eko.toml, key 'media.trusted_networks': '10.0.0.1/8' has host bits"
                                           " set: write '10.0.0.0/8' (or the address alone)"),
    ({"trusted_networks": "10.0.0.0/8"}, "eko.toml, key 'media.trusted_networks': expected list, got str '10.0.0.0/8'"),
    ({"relatch_after": 0}, "eko.toml, key 'media.relatch_after': must be positive"),
    ({"rtp_timeout_before_ack": -1}, "eko.toml, key 'media.rtp_timeout_before_ack': must be positive"),
])
def test_the_config_keys_are_checked_and_errors_name_them(media, message):
    from eko_rtp.config import build_config
    from eko_rtp.errors import UserError

    with pytest.raises(UserError) as caught:
        build_config({"media": media}, source="eko.toml")
    assert str(caught.value) == message


def test_the_config_defaults_trust_loopback_and_relatch_after_2_s():
    from eko_rtp.config import build_config, latch_policy

    config = build_config({}, source=None)
    assert latch_policy(config) == LatchPolicy(trusted_networks=parse_networks(["127.0.0.0/8", "::1/128"]),
                                               relatch_after=2.0)
    assert config["media.rtp_timeout_before_ack"] == 5.0
