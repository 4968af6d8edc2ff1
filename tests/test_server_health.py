"""The server's health record (server/health.py): conditions in, one problem line out."""

from __future__ import annotations

from eko_rtp.call import eko_script
from eko_rtp.server.health import Condition, Health, missing_essential_phrases


def test_conditions_set_and_clear_into_one_line_in_a_fixed_order():
    health = Health()
    assert health.problem is None
    table = [
        # (operation, condition, reason, changed, problem after)
        ("set", Condition.FILE_DESCRIPTORS, "out of file descriptors", True, "out of file descriptors"),
        ("set", Condition.FILE_DESCRIPTORS, "out of file descriptors", False, "out of file descriptors"),
        ("set", Condition.PHRASES, "the phrase cache lacks greet", True,
         "the phrase cache lacks greet; out of file descriptors"),
        ("clear", Condition.RTP_PORTS, None, False, "the phrase cache lacks greet; out of file descriptors"),
        ("clear", Condition.PHRASES, None, True, "out of file descriptors"),
        ("clear", Condition.FILE_DESCRIPTORS, None, True, None),
    ]
    for operation, condition, reason, changed, problem in table:
        result = health.set(condition, reason) if operation == "set" else health.clear(condition)
        assert (result, health.problem) == (changed, problem), (operation, condition)
    assert Condition.PHRASES not in health


def test_essential_phrases_are_what_the_script_declares():
    assert eko_script.run.essential_phrases == ("greet", "welcome")
    assert missing_essential_phrases(eko_script.run, ["greet", "welcome", "goodbye"]) == []
    assert missing_essential_phrases(eko_script.run, ["goodbye"]) == ["greet", "welcome"]

    async def script(call):  # declares nothing: nothing is known about what it needs
        pass

    assert missing_essential_phrases(script, []) == []
    assert missing_essential_phrases(None, []) == []
