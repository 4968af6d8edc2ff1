"""A datagram that reaches the server between the bind and the SIP core's making."""

from __future__ import annotations

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
