"""A phrase file changed in place under the running server (issue 17, defect 3).

``truncate -s 0 greet.raw`` while the server ran used to silence PCMU calls (the
kernel could not read the mapping past the file's new end; send errors at DEBUG)
and kill the server with SIGBUS on the first PCMA call (the A-law translate read the
mapping). Now the server plays the sealed copy it made at start: both callers hear
the greeting byte for byte, the server lives, and a reload (which re-reads and
re-validates the cache) refuses the damaged file and keeps the running cache.
"""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from eko_rtp.codec.g711 import ULAW_TO_ALAW
from raw_caller import place_call
from server_helpers import ServerProcess

PAYLOAD_TYPES = {"PCMU": 0, "PCMA": 8}


def heard(record, codec: str) -> bytes:
    packets = sorted((p for p in record.packets if p.payload_type == PAYLOAD_TYPES[codec]), key=lambda p: p.sequence)
    return b"".join(p.payload for p in packets)


def assert_hears_greeting(server, greet: bytes, codec: str) -> None:
    record = place_call(server.address, hold=1.5, codec=codec)
    assert record.status == 200, server.log()[-3000:]
    audio = heard(record, codec)
    assert len(audio) >= 50 * 160, (codec, len(audio), server.log()[-3000:])  # a second of it at least
    expected = greet if codec == "PCMU" else greet.translate(ULAW_TO_ALAW)
    assert audio == expected[: len(audio)], codec  # the greeting as loaded, not silence
    assert len(set(audio)) > 20  # and it is speech: silence is one or two code values
    assert server.process.poll() is None


@pytest.fixture
def private_cache(built_cache, tmp_path):
    """A copy of the session's cache that this test may damage."""
    return shutil.copytree(built_cache, tmp_path / "cache")


WATCHED = {
    "truncate": "truncated in place to 0 bytes (was {size})",
    "zero": "rewritten in place ({size} bytes, was {size})",
}


@pytest.mark.parametrize("damage", sorted(WATCHED))
def test_a_phrase_file_changed_in_place_changes_nothing_callers_hear(private_cache, damage):
    path = private_cache / "greet.raw"
    greet = path.read_bytes()
    with ServerProcess(private_cache) as server:
        # In place: the same inode, as `truncate`, `dd conv=notrunc` or an editor saving in place do.
        if damage == "truncate":
            os.truncate(path, 0)
        else:
            with open(path, "r+b") as file:
                file.write(b"\x00" * len(greet))
        for codec in ("PCMU", "PCMA", "PCMU"):
            assert_hears_greeting(server, greet, codec)
        # A reload re-reads the files: it refuses the damaged one, loudly, and keeps the running cache.
        server.process.send_signal(signal.SIGHUP)
        server.wait_for_log(r"Cached phrase 'greet' refused: corrupt: ")
        server.wait_for_log(r"reload refused, keeping the running configuration and cache: .* lacks 1 of the "
                            r"catalogue's \d+ phrase\(s\): greet \(corrupt\)")
        for codec in ("PCMA", "PCMU"):
            assert_hears_greeting(server, greet, codec)
        # Between reloads, the watch says so within its interval (10 s), once.
        what = WATCHED[damage].format(size=len(greet))
        line = server.wait_for_log(r"WARNING eko_rtp.cache.watch: phrase cache file (.*) since the server loaded it",
                                   timeout=15)
        assert line.group(1) == f"{path} {what}"
        assert server.log().count("eko_rtp.cache.watch") == 1
