"""The server's start: a datagram before the SIP core exists, and what is loaded before a call."""

from __future__ import annotations

import subprocess
import sys

from eko_bench import uac
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.server.server import EkoServer
from server_helpers import PHRASES, free_port, rtp_range


def test_a_message_before_the_sip_core_exists_is_dropped_not_fatal(built_cache, caplog):
    # The transport binds first (the core needs the bound port) and may deliver a
    # datagram before the core is made: a bench polling with OPTIONS hit this window
    # and the server died of an AttributeError. The peer retransmits; nothing breaks.
    config = build_config({"sip": {"listen": f"127.0.0.1:{free_port()}"}, "media": {"rtp_ports": rtp_range(4)}},
                          source=None)
    server = EkoServer(config=config, cache=load_cache(built_cache, PHRASES), script=None)
    assert server.ua is None
    endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=5062, target_host="127.0.0.1", target_port=5060)
    caplog.set_level("DEBUG", logger="eko_rtp.server")
    server.receive(uac.options(endpoint, call_id="early", branch=uac.new_branch()), ("127.0.0.1", 5062), "udp", None)
    assert server.counters.internal_errors == 0
    assert caplog.messages[-1] == "SIP message from 127.0.0.1:5062 before the server was ready: dropped"


START_WITHOUT_A_CALL = """
import sys
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.errors import UserError
from eko_rtp.server.server import EkoServer
if sys.argv[3] == "missing":
    sys.modules["webrtcvad"] = None  # an install without it
config = build_config({"sip": {"listen": "127.0.0.1:0"}, "media": {"rtp_ports": "31000-31009"},
                       "listen": {"vad": sys.argv[2] == "on"}}, source=None)
print("before", "webrtcvad" in sys.modules and sys.modules["webrtcvad"] is not None)
try:
    EkoServer(config=config, cache=load_cache(sys.argv[1], sys.argv[4]), script=None)
except UserError as error:
    print("refused", error)
else:
    print("after", "webrtcvad" in sys.modules and sys.modules["webrtcvad"] is not None)
"""


def run_start(built_cache, vad: str, module: str = "present") -> list[str]:
    result = subprocess.run([sys.executable, "-c", START_WITHOUT_A_CALL, str(built_cache), vad, module, str(PHRASES)],
                            capture_output=True,
                            text=True, timeout=60, check=True)
    return result.stdout.splitlines()


def test_listening_imports_the_vad_at_start_not_in_the_first_calls_answer(built_cache):
    # Its import took 1.4 ms of the first INVITE's path to its 200 OK.
    assert run_start(built_cache, "on") == ["before False", "after True"]
    assert run_start(built_cache, "off") == ["before False", "after False"]


def test_listening_without_the_vad_module_refuses_the_start_saying_what_to_install(built_cache):
    before, refused = run_start(built_cache, "on", "missing")
    assert refused.startswith("refused ")
    assert "pip install webrtcvad-wheels" in refused and "listen.vad = false" in refused
    assert run_start(built_cache, "off", "missing")[-1] == "after False"


def test_the_speech_recognizer_client_is_loaded_with_the_server_not_by_a_call():
    # A call's CallSpeech imported it, on the first call's way to its 200 OK, when the
    # Deepgram key is set (the relay off, the default).
    script = "import sys, eko_rtp.server.server; print('eko_rtp.asr.deepgram_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["True"]


RELOAD_WITHOUT_THE_VAD_MODULE = """
import sys
sys.modules["webrtcvad"] = None  # an install without it
from eko_rtp.cache.loader import load_cache
from eko_rtp.config import build_config
from eko_rtp.errors import UserError
from eko_rtp.server.server import EkoServer
def config(vad):
    return build_config({"sip": {"listen": "127.0.0.1:0"}, "media": {"rtp_ports": "31000-31009", "codec": "PCMU"},
                         "listen": {"vad": vad}}, source=None)
cache = load_cache(sys.argv[1], sys.argv[2])
server = EkoServer(config=config(False), cache=cache, script=None)
before = server.config
try:
    server.replace_setup(config=config(True), cache=cache, script=None)
except UserError as error:
    print("refused", server.config is before, server.vad_settings is None, error.key)
"""


def test_a_reload_that_turns_listening_on_without_the_module_is_refused_whole(built_cache):
    result = subprocess.run([sys.executable, "-c", RELOAD_WITHOUT_THE_VAD_MODULE, str(built_cache), str(PHRASES)],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.split() == ["refused", "True", "True", "listen.vad"]
