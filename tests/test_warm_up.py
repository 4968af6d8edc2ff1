"""The start's warm-up: canned calls through the real SIP and offer/answer cores."""

import logging
import subprocess
import sys
import textwrap

from eko_rtp.media import sdes
from eko_rtp.media.negotiation import MediaSession
from eko_rtp.server.warm_up import WARM_UP_CALLS, warm_up
from eko_rtp.sip.useragent import UserAgentSettings

SETTINGS = UserAgentSettings(host="127.0.0.1", port=5060)


def sessions(srtp=None, seen=None):
    def make(event):
        if seen is not None:
            seen.append(event)
        kwargs = {} if srtp is None else {"srtp": srtp}
        return MediaSession(local_address="127.0.0.1", local_port=30000, session_id=len(seen or ()) + 1, **kwargs)
    return make


def test_every_canned_call_goes_from_invite_to_the_end_of_its_bye(caplog):
    seen = []
    with caplog.at_level(logging.DEBUG):
        assert warm_up(SETTINGS, sessions(seen=seen)) == WARM_UP_CALLS
    assert len(seen) == WARM_UP_CALLS
    # Each was a new call, from the documentation address, with an offer.
    assert len({event.call_id for event in seen}) == WARM_UP_CALLS
    assert {event.source for event in seen} == {("192.0.2.1", 5060)}
    assert all(event.offer.startswith(b"v=0") for event in seen)
    # Nothing an operator would read, only the debug line of the start.
    assert [record.levelno for record in caplog.records] == [logging.DEBUG]
    assert f"{WARM_UP_CALLS} canned calls, {WARM_UP_CALLS} completed" in caplog.records[0].getMessage()


def test_an_offer_the_configuration_refuses_warms_the_refusal_quietly(caplog):
    required = sdes.SrtpPolicy(mode=sdes.SrtpMode.REQUIRED, insecure_signalling=True)
    with caplog.at_level(logging.INFO):
        assert warm_up(SETTINGS, sessions(srtp=required), calls=3) == 0
    assert caplog.records == []


def test_a_bug_in_a_core_is_a_warning_and_the_start_goes_on(caplog):
    def broken(event):
        raise RuntimeError("boom in the factory")
    with caplog.at_level(logging.INFO):
        assert warm_up(SETTINGS, broken) == 0
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "warm-up call failed" in record.getMessage() and "boom in the factory" in record.getMessage()


def test_the_parser_is_specialised_after_it():
    # CPython 3.11+ rewrites a function's instructions into specialised ones only after
    # it has run a few times: the first caller's INVITE would run the generic ones.
    script = textwrap.dedent("""
        import dis
        from eko_rtp.sip import message
        from eko_rtp.server.warm_up import warm_up
        from eko_rtp.media.negotiation import MediaSession
        from eko_rtp.sip.useragent import UserAgentSettings

        def specialised(function):
            plain = [i.opname for i in dis.get_instructions(function)]
            adaptive = [i.opname for i in dis.get_instructions(function, adaptive=True)]
            return sum(a != b for a, b in zip(plain, adaptive))

        before = specialised(message._parse)
        warm_up(UserAgentSettings(host="127.0.0.1", port=5060),
                lambda event: MediaSession(local_address="127.0.0.1", local_port=30000, session_id=1))
        print(before, specialised(message._parse))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    before, after = map(int, result.stdout.split())
    assert before == 0
    assert after > 10
