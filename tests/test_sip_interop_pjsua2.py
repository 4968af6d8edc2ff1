"""The UAS core against a real pjsua2 UAC (a subprocess) on loopback UDP: call, hold, resume, INFO DTMF, BYE.

A minimal test loop drives ``UserAgent`` (the production shell is ``eko_rtp/server``).
"""

from __future__ import annotations

import random
import select
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from eko_rtp.sip.events import CallConfirmed, CallEnded, EndReason, IncomingCall, SessionModified, Transmit
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

from test_sip_interop_sipp import ANSWER

pjsua2 = pytest.importorskip("pjsua2")
pytestmark = pytest.mark.interop

CALLER = textwrap.dedent("""
    import sys, time
    import pjsua2 as pj

    port = int(sys.argv[1])
    ep = pj.Endpoint(); ep.libCreate()
    config = pj.EpConfig(); config.logConfig.level = 0; config.logConfig.consoleLevel = 0
    config.uaConfig.threadCnt = 0; config.uaConfig.mainThreadOnly = True
    ep.libInit(config)
    transport = pj.TransportConfig(); transport.boundAddress = "127.0.0.1"; transport.port = 0
    ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
    ep.audDevManager().setNullDev()
    ep.libStart()
    account = pj.Account(); account_config = pj.AccountConfig()
    account_config.idUri = "sip:pjcaller@127.0.0.1"
    account.create(account_config)
    states = []

    class Call(pj.Call):
        def onCallState(self, prm):
            states.append(self.getInfo().stateText)

    def pump(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            ep.libHandleEvents(10)

    call = Call(account)
    call.makeCall(f"sip:eko@127.0.0.1:{port}", pj.CallOpParam(True))
    pump(1.5)
    call.setHold(pj.CallOpParam(True))
    pump(1.0)
    unhold = pj.CallOpParam(True); unhold.opt.flag = pj.PJSUA_CALL_UNHOLD
    call.reinvite(unhold)
    pump(1.0)
    dtmf = pj.CallSendDtmfParam(); dtmf.method = pj.PJSUA_DTMF_METHOD_SIP_INFO; dtmf.digits = "5#"
    call.sendDtmf(dtmf)
    pump(1.0)
    call.hangup(pj.CallOpParam(True))
    pump(1.0)
    print(",".join(states), flush=True)
    import os
    os._exit(0)  # skip pjsua2 teardown: destroying a Call after its end asserts in pjsua
""")


def test_pjsua2_call_hold_resume_dtmf_hangup():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        port = server.getsockname()[1]
        ua = UserAgent(UserAgentSettings(host="127.0.0.1", port=port), rng=random.Random(1))
        caller = subprocess.Popen([sys.executable, "-c", CALLER, str(port)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        seen = []
        start = time.monotonic()
        try:
            while caller.poll() is None and time.monotonic() - start < 20:
                readable, _, _ = select.select([server], [], [], 0.02)
                now = time.monotonic() - start
                if readable:
                    data, source = server.recvfrom(65535)
                    ua.receive(data, source=source, transport="udp", now=now)
                ua.handle_timers(now)
                for _ in range(2):  # events, then what answering them produced
                    for event in ua.events():
                        if isinstance(event, Transmit):
                            server.sendto(event.data, event.destination)
                            continue
                        seen.append(event)
                        if isinstance(event, IncomingCall):
                            ua.answer(event.call_id, ANSWER, now)
                        elif isinstance(event, SessionModified):
                            ua.answer_modification(event.call_id, ANSWER, now)
            out, err = caller.communicate(timeout=10)
        finally:
            if caller.poll() is None:
                caller.kill()
                caller.communicate()
    assert caller.returncode == 0, err
    assert out.strip().split(",")[-1] == "DISCONNECTED"
    assert "CONFIRMED" in out
    kinds = [type(event).__name__ for event in seen]
    assert kinds == ["IncomingCall", "CallConfirmed", "SessionModified", "SessionModified", "InfoDtmf", "InfoDtmf",
                     "CallEnded"]
    assert [(event.digit, event.duration_ms) for event in seen[4:6]] == [("5", 160), ("#", 160)]
    assert b"a=sendonly" in seen[2].offer
    assert seen[-1] == CallEnded(call_id=seen[0].call_id, reason=EndReason.REMOTE_BYE)
    assert isinstance(seen[1], CallConfirmed)

