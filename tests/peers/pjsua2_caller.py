"""A real SIP phone for the tests: pjsua2 places calls, records what it hears, reports JSON.

Run as a subprocess (pjsua2's endpoint is a process-wide singleton):

    python tests/peers/pjsua2_caller.py --target 127.0.0.1:5060 --calls 1 --hold 4 --record-dir DIR

Each call uses a null sound device and records the far end's audio to
``DIR/call-<n>.wav`` (16-bit, 8 kHz, mono). ``--hangup remote`` waits for the server's
BYE instead of hanging up; ``--dtmf 1@2.5`` sends RFC 4733 digit 1 at 2.5 s;
``--play oui.wav@3`` plays a WAV (8 or 16 kHz, mono, 16-bit) once into the call from
3 s after the answer (pjsua2's ``AudioMediaPlayer``, through its conference bridge
and encoder, as a microphone would). The last
line on stdout is a JSON list with one object per call: final state, last SIP status,
who hung up, and timings.

Blind transfer (RFC 3515 REFER received inside the call), ``--transfer``:

- ``accept`` (default, what pjsua2 does by itself): answer 202 Accepted, and pjsua2
  sends NOTIFY ``SIP/2.0 100 Trying`` at once, INVITEs the Refer-To target (with the
  REFER's Referred-By), and reports the new call's progress in NOTIFYs (sipfrag of its
  1xx, then of its final status, with ``Subscription-State: terminated``). The new
  call records what it hears to ``DIR/call-<n>-transfer.wav``; ``--play-after-transfer
  WAV@SECONDS`` (repeatable) plays into it from SECONDS after its answer, and it is hung
  up ``--hold-after-transfer`` seconds after its answer (default: ``--hold``) unless the
  far end hangs up first. The original call stays up until one side sends BYE (use
  ``--hangup remote`` to leave that to the transferor). Only the first REFER of a call
  is followed; a later one gets 603.
- ``reject``: answer every REFER 603 Decline; the call goes on.
- ``ignore`` (202, then neither NOTIFY nor INVITE) is not available: once the REFER is
  accepted, pjsua sends the NOTIFY and places the call itself (``on_call_transferred``
  in pjsua_call.c; the only exception is a REFER carrying ``Refer-Sub: false``, and then
  it still places the call). ``sip/scenarios/transfer_silent_uac.xml`` plays that caller.

Each call's JSON object has ``transfer``: ``requested`` (a REFER arrived), ``refers``
(how many), ``refer_to``, ``requested_at`` (s after the answer), ``response`` (the
status we answered the first REFER with), ``new_call_state``, ``new_call_status``
(last SIP status of the new call), ``new_call_confirmed_at`` (s after the original
call's answer), ``new_call_disconnected``, ``new_call_hung_up_by``, ``new_call_seconds``
(answer to end), ``played_at`` (s after the new call's answer) and ``recorded`` (path,
or null without a recording).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

import pjsua2 as pj


class Caller(pj.Call):
    def __init__(self, account, index: int, record_path: str | None, transfer_mode: str = "accept",
                 transfer_record_path: str | None = None):
        super().__init__(account)
        self.account = account
        self.index = index
        self.record_path = record_path
        self.recorder = None
        self.state = "NULL"
        self.last_status = 0
        self.confirmed_at = None
        self.disconnected_at = None
        self.media_active = False
        self.we_hung_up = False
        self.audio = None  # the call's audio media, once active
        self.players = []  # AudioMediaPlayer objects playing into the call (kept alive while they play)
        self.played_at = []  # s after the answer each --play started
        self.transfer_mode = transfer_mode
        self.transfer_record_path = transfer_record_path
        self.refers = 0
        self.refer_to = None
        self.refer_at = None  # monotonic time of the first REFER
        self.refer_response = None  # the status we answered the first REFER with
        self.transfer_call = None  # the call pjsua2 places to the Refer-To target

    def onCallTransferRequest(self, prm):
        """A REFER in this call. pjsua2 answers it with ``prm.statusCode`` (202 unless changed);
        for a 2xx it sends the NOTIFYs and places the new call itself, on the Call object given
        in ``prm.newCall``: without one, pjsua2 rebinds *this* object to the new call."""
        self.refers += 1
        first = self.refers == 1
        if first:
            self.refer_to = prm.dstUri
            self.refer_at = time.monotonic()
        if self.transfer_mode == "accept" and first:
            prm.statusCode = 202
            # Our reference keeps the Python object (and its director) alive: pjsua2 keeps only the pointer.
            self.transfer_call = Caller(self.account, self.index, self.transfer_record_path, "reject")
            prm.newCall = self.transfer_call
        else:
            prm.statusCode = 603
        if first:
            self.refer_response = prm.statusCode

    def onCallState(self, prm):
        info = self.getInfo()
        self.state = info.stateText
        self.last_status = info.lastStatusCode
        if info.state == pj.PJSIP_INV_STATE_CONFIRMED and self.confirmed_at is None:
            self.confirmed_at = time.monotonic()
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED and self.disconnected_at is None:
            self.disconnected_at = time.monotonic()

    def play(self, path: str) -> None:
        """Play the WAV at ``path`` once into the call (the call keeps the player: no other reference
        may outlive it, or pjsua warns at shutdown, after our JSON line, that its destructor did not run)."""
        player = pj.AudioMediaPlayer()
        player.createPlayer(path, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(self.audio)
        self.players.append(player)

    def onCallMediaState(self, prm):
        info = self.getInfo()
        for media in info.media:
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.media_active = True
                self.audio = self.getAudioMedia(media.index)
                if self.record_path and self.recorder is None:
                    audio = self.audio
                    self.recorder = pj.AudioMediaRecorder()
                    self.recorder.createRecorder(self.record_path)
                    audio.startTransmit(self.recorder)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--target", required=True, help="HOST:PORT of the server")
    parser.add_argument("--calls", type=int, default=1, help="simultaneous calls (the wheel caps at 4)")
    parser.add_argument("--hold", type=float, default=4.0, help="seconds before we hang up")
    parser.add_argument("--hangup", choices=("local", "remote"), default="local")
    parser.add_argument("--record-dir", default=None)
    parser.add_argument("--from-user", action="append", default=[], help="caller number; repeat to give call n the n-th")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    parser.add_argument("--codec", choices=("PCMU", "PCMA"), default="PCMU", help="codec offered first")
    parser.add_argument("--dtmf", action="append", default=[], help="DIGITS@SECONDS after the answer")
    parser.add_argument("--play", action="append", default=[],
                        help="WAV@SECONDS after the answer: play the WAV (8/16 kHz mono 16-bit) into the call once")
    parser.add_argument("--timeout", type=float, default=30.0, help="hard limit for the whole run")
    parser.add_argument("--tx-drop-pct", type=int, default=0, help="drop this share of our RTP (pjmedia's loss simulation)")
    parser.add_argument("--transfer", choices=("accept", "reject", "ignore"), default="accept",
                        help="REFER: accept (202, NOTIFYs, call the target), reject (603); ignore is not possible with pjsua2")
    parser.add_argument("--play-after-transfer", action="append", default=[],
                        help="WAV@SECONDS after the transferred call's answer: play the WAV into that call once")
    parser.add_argument("--hold-after-transfer", type=float, default=None,
                        help="seconds the transferred call stays up before we hang it up (default: --hold)")
    args = parser.parse_args()
    if args.transfer == "ignore":
        parser.error("--transfer ignore: pjsua2 cannot accept a REFER without sending NOTIFY and calling the target "
                     "(see this file's docstring); sip/scenarios/transfer_silent_uac.xml plays that caller")
    hold_after_transfer = args.hold if args.hold_after_transfer is None else args.hold_after_transfer

    endpoint = pj.Endpoint()
    endpoint.libCreate()
    config = pj.EpConfig()
    config.uaConfig.maxCalls = max(4, 2 * args.calls)  # room for one transferred call per call
    config.uaConfig.threadCnt = 0
    config.uaConfig.mainThreadOnly = True
    config.logConfig.level = 2
    config.logConfig.consoleLevel = 2
    config.medConfig.clockRate = 8000
    config.medConfig.sndClockRate = 8000
    config.medConfig.noVad = True
    config.medConfig.txDropPct = args.tx_drop_pct
    endpoint.libInit(config)
    transport_config = pj.TransportConfig()
    transport_config.port = 0
    kind = pj.PJSIP_TRANSPORT_TCP if args.transport == "tcp" else pj.PJSIP_TRANSPORT_UDP
    endpoint.transportCreate(kind, transport_config)
    endpoint.libStart()
    endpoint.audDevManager().setNullDev()
    for codec in endpoint.codecEnum2():
        name = codec.codecId.split("/")[0]
        priority = {"PCMU": 200, "PCMA": 200}.get(name, 0)
        if name == args.codec:
            priority = 255
        endpoint.codecSetPriority(codec.codecId, priority)

    accounts = {}
    for user in args.from_user or ["0612345678"]:
        account_config = pj.AccountConfig()
        account_config.idUri = f"sip:{user}@127.0.0.1"
        accounts[user] = pj.Account()
        accounts[user].create(account_config)
    users = list(accounts)

    suffix = ";transport=tcp" if args.transport == "tcp" else ""
    calls = []
    for index in range(args.calls):
        record = os.path.join(args.record_dir, f"call-{index}.wav") if args.record_dir else None
        transfer_record = os.path.join(args.record_dir, f"call-{index}-transfer.wav") if args.record_dir else None
        call = Caller(accounts[users[index % len(users)]], index, record, args.transfer, transfer_record)
        call.makeCall(f"sip:eko@{args.target}{suffix}", pj.CallOpParam(True))
        calls.append(call)
    started = time.monotonic()
    dtmf_plan = []
    for spec in args.dtmf:
        digits, _, at = spec.partition("@")
        dtmf_plan.append([float(at or 0), digits, False])
    play_plan = []
    for spec in args.play:
        path, _, at = spec.rpartition("@")
        if not path or not os.path.isfile(path):
            parser.error(f"--play {spec!r}: expected an existing WAV file, then @SECONDS")
        play_plan.append((float(at), path))
    transfer_play_plan = []
    for spec in args.play_after_transfer:
        path, _, at = spec.rpartition("@")
        if not path or not os.path.isfile(path):
            parser.error(f"--play-after-transfer {spec!r}: expected an existing WAV file, then @SECONDS")
        transfer_play_plan.append((float(at), path))

    def transferred() -> list:
        return [call.transfer_call for call in calls if call.transfer_call is not None]

    def all_ended() -> bool:
        return all(c.disconnected_at is not None for c in calls + transferred())

    while time.monotonic() - started < args.timeout:
        endpoint.libHandleEvents(10)
        now = time.monotonic()
        for call in calls:
            if call.confirmed_at is None or call.disconnected_at is not None:
                continue
            for entry in dtmf_plan:
                if not entry[2] and now - call.confirmed_at >= entry[0]:
                    call.dialDtmf(entry[1])
                    entry[2] = True
            if len(call.played_at) < len(play_plan):  # the plays start in the order given
                at, path = play_plan[len(call.played_at)]
                if now - call.confirmed_at >= at and call.audio is not None:
                    call.play(path)
                    call.played_at.append(round(now - call.confirmed_at, 3))
            if args.hangup == "local" and now - call.confirmed_at >= args.hold and not call.we_hung_up:
                call.we_hung_up = True
                call.hangup(pj.CallOpParam(True))
        for new in transferred():
            if new.confirmed_at is None or new.disconnected_at is not None:
                continue
            if len(new.played_at) < len(transfer_play_plan):
                at, path = transfer_play_plan[len(new.played_at)]
                if now - new.confirmed_at >= at and new.audio is not None:
                    new.play(path)
                    new.played_at.append(round(now - new.confirmed_at, 3))
            if now - new.confirmed_at >= hold_after_transfer and not new.we_hung_up:
                new.we_hung_up = True
                new.hangup(pj.CallOpParam(True))
        if all_ended():
            break
    for call in calls + transferred():
        if call.disconnected_at is None and call.getId() != pj.PJSUA_INVALID_ID:
            call.we_hung_up = True
            try:
                call.hangup(pj.CallOpParam(True))
            except pj.Error:
                pass  # a transferred call whose INVITE has not gone out yet
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and not all_ended():
        endpoint.libHandleEvents(10)
    results = []
    for call in calls:
        new = call.transfer_call
        for each in (call, new):
            if each is None:
                continue
            if each.recorder is not None:
                del each.recorder  # closes the WAV (fixes its header)
                each.recorder = None
            each.players.clear()
            each.audio = None
        answered_at = call.confirmed_at or started
        transfer = {
            "requested": call.refers > 0,
            "refers": call.refers,
            "refer_to": call.refer_to,
            "requested_at": round(call.refer_at - answered_at, 3) if call.refer_at else None,
            "response": call.refer_response,
            "new_call_state": new.state if new else None,
            "new_call_status": new.last_status if new else None,
            "new_call_confirmed_at": round(new.confirmed_at - answered_at, 3) if new and new.confirmed_at else None,
            "new_call_disconnected": new.disconnected_at is not None if new else None,
            "new_call_hung_up_by": ("local" if new.we_hung_up else "remote") if new and new.disconnected_at else None,
            "new_call_seconds": round((new.disconnected_at or time.monotonic()) - new.confirmed_at, 3)
            if new and new.confirmed_at else None,
            "played_at": new.played_at if new else [],
            "recorded": new.record_path if new and new.media_active else None,
        }
        results.append(
            {
                "index": call.index,
                "state": call.state,
                "last_status": call.last_status,
                "answered": call.confirmed_at is not None,
                "disconnected": call.disconnected_at is not None,
                "hung_up_by": "local" if call.we_hung_up else "remote",
                "seconds": (call.disconnected_at or time.monotonic()) - (call.confirmed_at or started),
                "media_active": call.media_active,
                "record": call.record_path,
                "played_at": call.played_at,
                "transfer": transfer,
            }
        )
    sys.stdout.write("\n" + json.dumps(results) + "\n")
    sys.stdout.flush()
    # pjsua2's Python proxies assert if they are collected after the library is gone:
    # drop them first, then leave without running any more destructors.
    for call in calls:
        call.transfer_call = None
    calls.clear()
    accounts.clear()
    gc.collect()
    endpoint.libDestroy()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
