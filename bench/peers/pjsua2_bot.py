#!/usr/bin/env python3
"""A reference playback bot, built the way a Python team would build it with pjsua2.

What it is for: ``eko-bench --target peer`` spawns this and measures it with the
very harness that measures ``eko-rtp serve``, so the two can be compared. It does
what Eko's default script does: answer every INVITE, play the same cached phrases
(``greet`` then ``welcome``), then stay on the line (silence) until the caller hangs up.

How: one pjsua2 ``Endpoint`` with the null sound device (no audio hardware; the
conference bridge is clocked by pjmedia's own timer), VAD off so silence is still
sent as RTP (as Eko does), 8 kHz bridge (no resampling), and per call one
``AudioMediaPlayer`` over a WAV made from the cache's µ-law ``.raw`` files
(pjmedia's WAV player reads 16-bit PCM; the µ-law is decoded once at start-up).

Known limits of the PyPI wheel (pjsua2-python): PJSUA_MAX_CALLS is 4 (a fifth
simultaneous INVITE is answered 486 by pjsua itself; ``maxCalls`` above 4 is cut
silently) and there are at most 32 media players.

Usage: pjsua2_bot.py --listen 127.0.0.1:5070 --rtp-port 40000 --audio greet.raw [--audio welcome.raw]
It runs until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import array
import os
import signal
import sys
import tempfile
import wave

import pjsua2 as pj

PJSUA_MAX_CALLS = 4  # compiled into the PyPI wheel
_ULAW_BIAS = 0x84


def ulaw_to_pcm16(data: bytes) -> bytes:
    """µ-law (G.711) bytes to 16-bit little-endian PCM, for pjmedia's WAV player."""
    table = []
    for code in range(256):
        code = ~code & 0xFF
        exponent = (code >> 4) & 0x07
        magnitude = ((((code & 0x0F) << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
        table.append(-magnitude if code & 0x80 else magnitude)
    samples = array.array("h", (table[byte] for byte in data))
    if sys.byteorder != "little":
        samples.byteswap()
    return samples.tobytes()


def write_wav(raw_paths: list[str], directory: str) -> str:
    audio = b"".join(open(path, "rb").read() for path in raw_paths)
    if not audio:
        raise SystemExit(f"pjsua2_bot: no audio in {raw_paths}")
    path = os.path.join(directory, "phrase.wav")
    with wave.open(path, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(8000)
        writer.writeframes(ulaw_to_pcm16(audio))
    return path


class BotCall(pj.Call):
    def __init__(self, bot: "Bot", account: pj.Account, call_id: int):
        super().__init__(account, call_id)
        self.bot = bot
        self.player: pj.AudioMediaPlayer | None = None

    def onCallMediaState(self, prm):  # noqa: N802 (pjsua2 callback name)
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type == pj.PJMEDIA_TYPE_AUDIO and media.status == pj.PJSUA_CALL_MEDIA_ACTIVE and self.player is None:
                self.player = pj.AudioMediaPlayer()
                self.player.createPlayer(self.bot.wav_path, pj.PJMEDIA_FILE_NO_LOOP)
                self.player.startTransmit(self.getAudioMedia(index))

    def onCallState(self, prm):  # noqa: N802
        if self.getInfo().state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.bot.finished.append(self)


class BotAccount(pj.Account):
    def __init__(self, bot: "Bot"):
        super().__init__()
        self.bot = bot

    def onIncomingCall(self, prm):  # noqa: N802
        call = BotCall(self.bot, self, prm.callId)
        self.bot.calls.add(call)
        answer = pj.CallOpParam()
        answer.statusCode = 200
        call.answer(answer)


class Bot:
    def __init__(self, *, host: str, port: int, rtp_port: int, wav_path: str):
        self.wav_path = wav_path
        self.calls: set[BotCall] = set()
        self.finished: list[BotCall] = []
        self.endpoint = pj.Endpoint()
        self.endpoint.libCreate()
        config = pj.EpConfig()
        config.uaConfig.maxCalls = PJSUA_MAX_CALLS
        config.uaConfig.threadCnt = 0  # callbacks run on our thread, in libHandleEvents
        config.uaConfig.mainThreadOnly = True
        config.medConfig.noVad = True  # send silence as RTP, like Eko
        config.medConfig.clockRate = 8000
        config.medConfig.sndClockRate = 8000
        config.medConfig.ptime = 20
        config.medConfig.ecTailLen = 0
        config.logConfig.level = 1
        config.logConfig.consoleLevel = 1
        self.endpoint.libInit(config)
        transport = pj.TransportConfig()
        transport.boundAddress = host
        transport.port = port
        self.endpoint.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        self.endpoint.libStart()
        self.endpoint.audDevManager().setNullDev()
        for codec, priority in (("PCMU/8000", 255), ("PCMA/8000", 254)):
            self.endpoint.codecSetPriority(codec, priority)
        account_config = pj.AccountConfig()
        account_config.idUri = f"sip:bot@{host}:{port}"
        account_config.mediaConfig.transportConfig.port = rtp_port
        account_config.mediaConfig.transportConfig.boundAddress = host
        self.account = BotAccount(self)
        self.account.create(account_config)

    def run(self, stop: list[bool]) -> None:
        while not stop:
            self.endpoint.libHandleEvents(10)
            while self.finished:  # drop pjsua2 objects on our thread, after pjsua is done with them
                call = self.finished.pop()
                self.calls.discard(call)

    def close(self) -> None:
        self.endpoint.hangupAllCalls()
        for _ in range(20):
            self.endpoint.libHandleEvents(10)
        self.calls.clear()
        self.account.shutdown()
        self.endpoint.libDestroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT for SIP over UDP")
    parser.add_argument("--rtp-port", type=int, default=40000, help="first RTP port (default 40000)")
    parser.add_argument("--audio", action="append", required=True, help="µ-law .raw file to play (repeatable, played in order)")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    with tempfile.TemporaryDirectory(prefix="pjsua2-bot-") as directory:
        bot = Bot(host=host, port=int(port), rtp_port=args.rtp_port, wav_path=write_wav(args.audio, directory))
        print(f"pjsua2_bot: listening on {host}:{port}, max {PJSUA_MAX_CALLS} calls", file=sys.stderr, flush=True)
        try:
            bot.run(stop)
        finally:
            bot.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
