"""StateEnum: members hash in C and behave as Enum members in tables."""

import enum
import pickle

from eko_rtp.media.latch import LatchState
from eko_rtp.sip.call_state import CALL_TRANSITIONS, CallInput, CallState
from eko_rtp.sip.transaction import State
from eko_rtp.state_enum import StateEnum


class Light(StateEnum):
    RED = "red"
    GREEN = "green"


def test_a_member_hashes_without_python_code():
    # Enum's own __hash__ is a Python function; ours is object's slot.
    assert Light.__hash__ is object.__hash__
    assert enum.Enum.__hash__ is not object.__hash__
    assert hash(Light.RED) == object.__hash__(Light.RED)


def test_members_stay_enum_members():
    assert Light("red") is Light.RED
    assert Light["GREEN"] is Light.GREEN
    assert list(Light) == [Light.RED, Light.GREEN]
    assert pickle.loads(pickle.dumps(Light.GREEN)) is Light.GREEN
    assert {Light.RED: 1, Light.GREEN: 2}[Light("green")] == 2
    assert Light.RED != "red" and Light.RED == Light.RED


def test_the_state_machines_use_it():
    for kind in (LatchState, CallState, CallInput, State):
        assert issubclass(kind, StateEnum)
        assert kind.__hash__ is object.__hash__
    # A table look-up by a key rebuilt from values finds the same entry.
    (state, event), target = next(iter(CALL_TRANSITIONS.items()))
    assert CALL_TRANSITIONS[(CallState(state.value), CallInput(event.value))] is target
