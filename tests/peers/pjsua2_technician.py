"""The technician a call is transferred to: a pjsua2 UAS that answers, plays a WAV, records, reports JSON.

Run as a subprocess (pjsua2's endpoint is a process-wide singleton):

    python tests/peers/pjsua2_technician.py --port 5070 --play tone1000.wav --record-dir DIR --duration 60

It listens on UDP ``127.0.0.1:PORT`` as ``sip:USER@127.0.0.1:PORT`` (no registration
unless ``--registrar``, below) and answers every INVITE (``--answer 200`` by default; ``--ring S`` sends 180 Ringing
first and answers S seconds later; ``--answer 486`` refuses every call, for a failed
transfer). Into each answered call it plays ``--play`` (8 or 16 kHz, mono, 16-bit WAV,
looped) and records what it hears to ``DIR/technician-<n>.wav`` (16-bit, 8 kHz, mono).

Start-up and end: once the transport listens it prints ``READY <port>`` on stdout (the
tests wait for that line; pjsua's own log goes to stderr, so stdout has only READY and
the final JSON). It stops after ``--duration`` seconds, or as soon as its stdin is
closed (``--no-stdin``: never look at stdin, for a shell's background job whose stdin is
/dev/null), hangs up the calls still up, and prints on its last stdout line a JSON
object: ``{"port", "user", "calls": [{"index", "from", "call_id", "referred_by",
"answered_with", "confirmed", "confirmed_at", "disconnected", "hung_up_by",
"last_status", "seconds", "media_active", "recorded"}], "registrations": [...]}``
(``referred_by``: the INVITE's Referred-By, which a transferee copies from the REFER;
``confirmed_at``: seconds after READY; ``seconds``: answer to end).

Registration (to try a registrar such as ``sip/scenarios/registrar_auth.xml``):
``--registrar HOST:PORT`` registers the account (``--reg-expires`` asked, digest
credentials ``--auth-user``/``--auth-password`` for any realm); pjsua refreshes it
before it expires and, at the end, unregisters (expiry 0) and waits up to 5 s for the
answer. ``registrations`` lists every final answer: ``{"code", "reason",
"expiration" (granted, s; 0 after the unregister), "at" (s after start)}``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import select
import sys
import time

import pjsua2 as pj


class TechnicianCall(pj.Call):
    def __init__(self, account, call_id: int, index: int, record_path: str | None, play_path: str | None):
        super().__init__(account, call_id)
        self.index = index
        self.record_path = record_path
        self.play_path = play_path
        self.recorder = None
        self.player = None
        self.audio = None
        self.remote_uri = ""
        self.sip_call_id = ""
        self.referred_by = None  # the INVITE's Referred-By (a transferee copies the REFER's)
        self.answered_with = None
        self.answer_due = None  # monotonic time of the final answer, with --ring
        self.state = "NULL"
        self.last_status = 0
        self.confirmed_at = None
        self.disconnected_at = None
        self.media_active = False
        self.we_hung_up = False

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.stateText
        self.last_status = info.lastStatusCode
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and self.disconnected_at is None:
            self.disconnected_at = time.monotonic()

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media_active = True
                self.audio = self.getAudioMedia(media.index)
                if self.record_path and self.recorder is None:
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.record_path)
                    self.audio.startTransmit(self.recorder)
                if self.play_path and self.player is None:
                    self.player = pj.AudioMediaPlayer()
                    self.player.createPlayer(self.play_path, 0)  # 0: loop
                    self.player.startTransmit(self.audio)

    def answer_with(self, code: int) -> None:
        op = pj.CallOpParam()
        op.statusCode = code
        self.answer(op)
        if code >= 200:
            self.answered_with = code


class Technician(pj.Account):
    def __init__(self, args):
        super().__init__()
        self.args = args
        self.calls: list[TechnicianCall] = []
        self.registrations: list[dict] = []  # one per final REGISTER answer, with --registrar
        self.started = time.monotonic()

    def onRegState(self, prm):
        self.registrations.append({"code": prm.code, "reason": prm.reason, "expiration": prm.expiration,
                                   "at": round(time.monotonic() - self.started, 3)})

    def onIncomingCall(self, prm):
        index = len(self.calls)
        record = os.path.join(self.args.record_dir, f"technician-{index}.wav") if self.args.record_dir else None
        call = TechnicianCall(self, prm.callId, index, record, self.args.play)
        self.calls.append(call)  # pjsua2 keeps no reference: the Python object must outlive the call
        info = call.getInfo()
        call.remote_uri = info.remoteUri
        call.sip_call_id = info.callIdString
        call.referred_by = header_value(prm.rdata.wholeMsg, "Referred-By", "b")
        if self.args.ring > 0 and self.args.answer < 300:
            call.answer_with(180)
            call.answer_due = time.monotonic() + self.args.ring
        else:
            call.answer_with(self.args.answer)


def header_value(message: str, name: str, compact: str) -> str | None:
    """The value of the first ``name`` header (or its compact form) of a SIP message, else None."""
    for line in message.replace("\r\n", "\n").split("\n")[1:]:
        if not line:
            break  # end of the headers
        key, _, value = line.partition(":")
        if key.strip().lower() in (name.lower(), compact):
            return value.strip()
    return None


def stdin_closed() -> bool:
    """True once stdin is at end of file (its writer closed it); never blocks."""
    try:
        readable, _, _ = select.select([sys.stdin], [], [], 0)
    except (ValueError, OSError):
        return True
    if not readable:
        return False
    return os.read(sys.stdin.fileno(), 4096) == b""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True, help="UDP port on 127.0.0.1")
    parser.add_argument("--user", default="technician")
    parser.add_argument("--play", default=None, help="WAV (8/16 kHz mono 16-bit) played, looped, into every answered call")
    parser.add_argument("--record-dir", default=None, help="record each call to DIR/technician-<n>.wav")
    parser.add_argument("--duration", type=float, default=60.0, help="stop after this many seconds")
    parser.add_argument("--answer", type=int, default=200, help="final status for every INVITE (200, or e.g. 486)")
    parser.add_argument("--ring", type=float, default=0.0, help="send 180 Ringing, answer this many seconds later")
    parser.add_argument("--no-stdin", action="store_true", help="do not stop when stdin closes")
    parser.add_argument("--registrar", default=None, help="HOST:PORT: register there (and unregister at the end)")
    parser.add_argument("--auth-user", default=None, help="digest user name for the registrar")
    parser.add_argument("--auth-password", default="", help="digest password for the registrar")
    parser.add_argument("--reg-expires", type=int, default=300, help="expiry asked for in REGISTER (s)")
    args = parser.parse_args()
    if args.play and not os.path.isfile(args.play):
        parser.error(f"--play {args.play!r}: no such file")

    # Our stdout carries only READY and the JSON line: pjsua's console log (printf to fd 1,
    # from libCreate on, before any log config applies) goes to stderr instead.
    report = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.maxCalls = 8
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 2
    config.logConfig.consoleLevel = 2
    config.medConfig.clockRate = 8000
    config.medConfig.sndClockRate = 8000
    config.medConfig.noVad = True
    endpoint.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = args.port
    transport_config.boundAddress = "127.0.0.1"
    endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport_config)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()

    account_config = pj.AccountConfig()
    account_config.idUri = f"sip:{args.user}@127.0.0.1:{args.port}"
    account_config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    if args.registrar:
        account_config.regConfig.registrarUri = f"sip:{args.registrar}"
        account_config.regConfig.timeoutSec = args.reg_expires
        account_config.regConfig.registerOnAdd = True
        if args.auth_user:
            account_config.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", args.auth_user, 0, args.auth_password))
    account = Technician(args)
    account.create(account_config, True)

    started = time.monotonic()
    report.write(f"READY {args.port}\n")
    report.flush()
    while time.monotonic() - started < args.duration:
        endpoint.libHandleEvents(10)
        now = time.monotonic()
        for call in account.calls:
            if call.answer_due is not None and now >= call.answer_due and call.disconnected_at is None:
                call.answer_due = None
                call.answer_with(args.answer)
        if not args.no_stdin and stdin_closed():
            break
    for call in account.calls:
        if call.disconnected_at is None:
            call.we_hung_up = True
            try:
                call.hangup(pj.CallOpParam(True))
            except pj.Error:
                pass
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and any(c.disconnected_at is None for c in account.calls):
        endpoint.libHandleEvents(10)
    if args.registrar:  # unregister (REGISTER with expiry 0) and wait for its answer
        answers = len(account.registrations)
        try:
            account.setRegistration(False)
        except pj.Error:
            pass  # not registered
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(account.registrations) == answers:
            endpoint.libHandleEvents(10)
    calls = []
    for call in account.calls:
        if call.recorder is not None:
            del call.recorder  # closes the WAV (fixes its header)
            call.recorder = None
        call.player = None
        call.audio = None
        calls.append(
            {
                "index": call.index,
                "from": call.remote_uri,
                "call_id": call.sip_call_id,
                "referred_by": call.referred_by,
                "answered_with": call.answered_with,
                "confirmed": call.confirmed_at is not None,
                "confirmed_at": round(call.confirmed_at - started, 3) if call.confirmed_at else None,
                "disconnected": call.disconnected_at is not None,
                "hung_up_by": "local" if call.we_hung_up else "remote",
                "last_status": call.last_status,
                "seconds": round((call.disconnected_at or time.monotonic()) - (call.confirmed_at or started), 3)
                if call.confirmed_at else 0.0,
                "media_active": call.media_active,
                "recorded": call.record_path if call.media_active else None,
            }
        )
    report.write(json.dumps({"port": args.port, "user": args.user, "calls": calls,
                             "registrations": account.registrations}) + "\n")
    report.flush()
    # pjsua2's Python proxies assert if they are collected after the library is gone:
    # drop them first, then leave without running any more destructors.
    account.calls.clear()
    del account
    gc.collect()
    endpoint.libDestroy()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
