"""`eko-bench` (also `bin/eko-bench`, `python -m eko_bench`): load a SIP target on loopback the way a trunk does and report."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile

from eko_bench import barge_in, caller_speech, campaign, hostile_sip, noise, report, scripts
from eko_bench.rtp_engine import SILENCE, open_wav_as_ulaw
from eko_bench.run import BENCH_RTP_PORTS as BENCH_PORT_RANGE
from eko_bench.run import MAX_CALLS, MAX_SECONDS, SCENARIOS, Plan
from eko_bench.targets import parse_cpus, parse_port_range, phrase_shape, server_rtp_ports, trailing_silence_frames
from eko_rtp.config import SCHEMA
from eko_rtp.media.sdes import CryptoSuite
from eko_rtp.errors import UserError

# Three ranges kept apart, so a bench beside a server on its defaults, a spawned
# server or the pjsua2 peer (RTP from 40000, campaign.py) never competes for a port:
SERVER_RTP_PORTS = SCHEMA["media"]["rtp_ports"][1]  # eko-rtp's media.rtp_ports default
SPAWNED_RTP_PORTS = "30000-39999"  # --rtp-ports: a spawned server's
# Below Linux's ephemeral ports (32768-60999) too, so outgoing connections take none of its pairs.
BENCH_RTP_PORTS = f"{BENCH_PORT_RANGE.start}-{BENCH_PORT_RANGE.stop - 1}"  # --bench-rtp-ports: the bench's own


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eko-bench",
        description="Acts as a SIP trunk on loopback: places calls at a rate and concurrency, holds them, sends"
                    " caller RTP, receives and times the target's RTP, hangs up, and reports latency, jitter,"
                    f" loss, drift, CPU and memory. Hard caps: {MAX_CALLS} calls, {MAX_SECONDS:.0f} s.")
    parser.add_argument("--target", choices=("server", "peer", "both"), default="server",
                        help="what to measure (default server; peer = bench/peers/pjsua2_bot.py)")
    parser.add_argument("--address", help="HOST:PORT of a running server (loopback only)")
    parser.add_argument("--spawn", action="store_true", help="start `eko-rtp serve` on a free port and stop it after")
    parser.add_argument("--server-cpus", type=_flag(parse_cpus), help="pin the spawned target to these CPUs (e.g. 0); the bench takes the rest")
    parser.add_argument("--server-pid", type=int, help="sample CPU and RSS of this pid (a server given by --address)")
    parser.add_argument("--worker-pid", dest="worker_pids", type=int, action="append", default=[],
                        help="--address is a front (sip/kamailio): one of the workers behind it, repeated for each;"
                             " the report gives each one's CPU over the steady period and their sum")
    parser.add_argument("--cache", dest="cache_dir", help="phrase cache directory (passed to the server; the peer plays its greet/welcome)")
    parser.add_argument("--rtp-ports", default=SPAWNED_RTP_PORTS,
                        help=f"RTP port range for a spawned server (default {SPAWNED_RTP_PORTS})")
    parser.add_argument("--server-rtp-ports", type=_flag(_server_rtp_ports),
                        help="RTP port range of the server at --address, to sample its receive queues (with"
                             " --server-pid, only its own sockets there); a spawned server's is --rtp-ports")
    parser.add_argument("--bench-rtp-ports", type=_flag(parse_port_range), default=BENCH_RTP_PORTS,
                        help=f"the bench's own RTP/RTCP port pairs (default {BENCH_RTP_PORTS}: apart from eko-rtp's"
                             f" default media.rtp_ports {SERVER_RTP_PORTS}, a spawned server's --rtp-ports"
                             f" {SPAWNED_RTP_PORTS}, the pjsua2 peer's ports from 40000 and Linux's ephemeral ports)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for a spawned server (repeatable)")
    parser.add_argument("--calls", type=int, default=10, help="calls to place in all (default 10)")
    parser.add_argument("--concurrency", type=int, help="at most this many at once (default: --calls)")
    parser.add_argument("--rate", type=float, default=100.0, help="calls placed per second (default 100)")
    parser.add_argument("--hold", type=float, default=10.0, help="seconds each call is held after its 200 (default 10)")
    parser.add_argument("--sizes", type=_flag(parse_sizes), default=(),
                        help="run once per size, calls = concurrency = SIZE, side by side (e.g. 1,100,500,1000)")
    parser.add_argument("--audio", help="WAV (8 kHz mono 16-bit) the caller plays, looped (default: silence; listening: a"
                                        " French sentence of about 2 s and a 1.5 s pause, rendered with espeak-ng and sox)")
    parser.add_argument("--caller-events", action="store_true",
                        help="callers also send an RFC 4733 event packet beside each audio packet, 100 packets/s,"
                             " like a phone while a key is held")
    parser.add_argument("--scenario", choices=SCENARIOS, default=SCENARIOS[0],
                        help="what the calls do (default greeting-unknown); live-tts: the server says a text of each"
                             " call's own with live TTS; hybrid: a cached filler, then the live text; mixed: half the calls"
                             " live text, half the cached greeting (the cached calls' pacing is reported apart); with"
                             " --spawn they run against the bench's local fake of the ElevenLabs endpoint; listening:"
                             f" every caller talks over the bot from {caller_speech.LEAD_IN_SECONDS:g} s after the 200"
                             f" while the server says the cached {scripts.LISTEN_PHRASE!r} (interruptible) and listens"
                             f" {scripts.LISTEN_SECONDS:g} s, again and again; reports barge-in latency per talkspurt")
    parser.add_argument("--asr", action="store_true",
                        help="listening: also stream every call to the bench's fake speech-recognition endpoint"
                             " (a local stand-in for Deepgram; needs --spawn); without it, VAD barge-in only")
    parser.add_argument("--listening", choices=("on", "off", "compare"), default="on",
                        help="listening: on (default: VAD, and ASR with --asr); off (listen.vad = false, no ASR: the"
                             " same calls with nobody listening); compare (each run on, then off, --rounds times;"
                             " a server of its own each; needs --spawn; the bench's --config comes after any"
                             " --server-arg --config)")
    parser.add_argument("--rounds", type=int, default=1,
                        help=f"--listening compare: pairs of runs, alternating on and off (1 to {campaign.MAX_ROUNDS},"
                             " default 1)")
    parser.add_argument("--tts-first-byte-ms", type=float, default=300.0,
                        help="the fake TTS endpoint's time to first byte, ms (live-tts, hybrid, mixed; default 300); past"
                             f" {(campaign.SERVER_FIRST_BYTE_TIMEOUT - campaign.TTS_TIMEOUT_MARGIN) * 1000:.0f} ms the"
                             " spawned server's first_byte_timeout is raised to match")
    parser.add_argument("--ramp", action="store_true",
                        help=f"find the most concurrent calls with deviation p99 <= {campaign.RAMP_P99_MS} ms and no loss"
                             f" (steps {', '.join(map(str, campaign.RAMP_STEPS))})")
    parser.add_argument("--noise-probe", type=float, default=3.0, metavar="SECONDS",
                        help="with --server-cpus: before and after the run, measure for this long how late the host"
                             " wakes a sleeping process on those CPUs, the floor under every deviation figure"
                             " (default 3; 0: skip)")
    parser.add_argument("--keep-cpu-awake", action="store_true",
                        help="with --server-cpus: keep those CPUs from halting between frames with SCHED_IDLE spinners"
                             " (the server's own --keep-cpu-awake; the bench runs them for the peer and for the probe)")
    parser.add_argument("--hostile-sip", type=_flag(hostile_sip.parse_hostile_sip), metavar="RATE:SIZE",
                        help="while the calls run, send the server RATE datagrams a second of an OPTIONS of SIZE bytes"
                             " stuffed with Via parameters, from another loopback source (e.g. 30:60000; the"
                             " figures then say what hostile signalling costs the calls)")
    parser.add_argument("--tls", action="store_true",
                        help="SIP over TLS: every call's signalling on one TLS connection, as a trunk keeps; with"
                             " --spawn the server gets a certificate from a throwaway CA the bench makes and trusts for"
                             " the run; with --address, HOST:PORT is the server's SIP-over-TLS port")
    parser.add_argument("--tls-ca", metavar="FILE",
                        help="with --tls and --address: the PEM CA bundle the server's certificate chains to"
                             " (default: the system's store); the certificate must name the address's IP")
    parser.add_argument("--srtp", choices=[suite.value for suite in CryptoSuite], metavar="SUITE",
                        help="SRTP: each call offers RTP/SAVP with one a=crypto of SUITE ("
                             + ", ".join(suite.value for suite in CryptoSuite) + ") and its media is SRTP both ways;"
                             " a spawned server requires SRTP (and, without --tls, accepts its keys over clear SIP);"
                             " the figures keep their definitions, on the decrypted RTP headers")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--plot", help="also draw latency and inter-arrival plots to this PNG (needs matplotlib)")
    return parser


def _flag(parse):
    """An argparse ``type`` from a parser that raises UserError: argparse reports it as a usage error."""
    def convert(text: str):
        try:
            return parse(text)
        except UserError as error:
            raise argparse.ArgumentTypeError(error.detail) from None
    convert.__name__ = parse.__name__
    return convert


def _server_rtp_ports(text: str) -> range:
    return server_rtp_ports(text, key="--server-rtp-ports")


def parse_sizes(text: str) -> tuple[int, ...]:
    """'1,100,500' -> (1, 100, 500), each within the bench's call cap."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(f"expected sizes like 1,100,500, got {text!r}", key="--sizes") from None
    if not sizes or not all(1 <= size <= MAX_CALLS for size in sizes):
        raise UserError(f"sizes must be within 1..{MAX_CALLS}, got {text!r}", key="--sizes")
    return sizes


def listening_mode(args: argparse.Namespace) -> str:
    """The plan's listening mode from --listening and --asr."""
    if args.listening == "off":
        if args.asr:
            raise UserError("listening off streams nothing: leave out --asr", key="--asr")
        return "off"
    return "asr" if args.asr else "vad"


def phrase_timing(args: argparse.Namespace) -> tuple[int, int | None]:
    """(quiet frames, phrase frames) for the barge-in figures: a quiet run past the longest pause
    of the phrase the cache holds, and the phrase's length to its last sound (None: no cache)."""
    if args.scenario != "listening" or args.cache_dir is None:
        return barge_in.QUIET_FRAMES, None
    shape = phrase_shape(args.cache_dir, scripts.LISTEN_PHRASE)
    try:
        quiet = barge_in.quiet_frames_for(shape.longest_pause_frames, round(scripts.LISTEN_SECONDS * 50))
    except ValueError as error:
        raise UserError(f"{scripts.LISTEN_PHRASE!r}: {error}", path=args.cache_dir) from None
    return quiet, shape.sound_frames


def caller_audio_for(args: argparse.Namespace) -> bytes:
    """What callers send: --audio, or silence, or (listening) the rendered French sentence."""
    if args.audio:
        audio = open_wav_as_ulaw(args.audio)
    elif args.scenario == "listening":
        with tempfile.TemporaryDirectory(prefix="eko-bench-caller-") as directory:
            audio = open_wav_as_ulaw(caller_speech.render_sentence(directory))
    else:
        return SILENCE
    if args.scenario == "listening":
        caller_speech.caller_talk(audio)  # refuses audio in which no talkspurt starts, before anything runs
    return audio


def run(args: argparse.Namespace) -> int:
    filler_tail = 0
    if args.scenario == "hybrid" and args.cache_dir is not None:
        filler_tail = trailing_silence_frames(args.cache_dir, scripts.FILLER)
    quiet, phrase_frames = phrase_timing(args)
    plan = Plan(calls=args.calls, concurrency=args.concurrency or args.calls, rate=args.rate, hold=args.hold,
                scenario=args.scenario, tts_first_byte_ms=args.tts_first_byte_ms, filler_tail_frames=filler_tail,
                caller_events=args.caller_events, listening=listening_mode(args), quiet_frames=quiet,
                phrase_frames=phrase_frames, tls=args.tls, srtp=CryptoSuite(args.srtp) if args.srtp else None)
    options = campaign.Options(
        target=args.target, address=args.address, spawn=args.spawn, server_cpus=args.server_cpus,
        server_pid=args.server_pid, worker_pids=tuple(args.worker_pids), cache_dir=args.cache_dir, rtp_ports=args.rtp_ports,
        server_args=tuple(args.server_arg), plan=plan, ramp=args.ramp,
        bench_ports=args.bench_rtp_ports, sizes=args.sizes, noise_probe=args.noise_probe,
        keep_cpu_awake=args.keep_cpu_awake, server_rtp_ports=args.server_rtp_ports,
        compare_off=args.listening == "compare", rounds=args.rounds, hostile_sip=args.hostile_sip,
        tls_ca=args.tls_ca)
    caller_audio = caller_audio_for(args)
    outcome = campaign.run_sync(options, caller_audio=caller_audio)
    if args.plot:
        report.plot(outcome.results, args.plot)
    if args.json:
        json.dump({"runs": outcome.summaries, "ramp": outcome.ramp, "host_noise": outcome.host_noise,
                   "keep_cpu_awake": args.keep_cpu_awake, "notes": outcome.notes,
                   "listening_comparison": report.listening_comparison(outcome.summaries)},
                  sys.stdout, indent=2)
        print()
    else:
        if outcome.ramp is not None:
            for step in outcome.ramp["steps"]:
                p99 = step["deviation_p99_ms"]
                cpu = step["server_cpu_percent"]
                print(f"ramp {step['concurrent']:>5} calls: answered {step['answered']}, deviation p99"
                      f" {'-' if p99 is None else f'{p99:.2f}'} ms, lost {step['lost']}, server CPU"
                      f" {'-' if cpu is None else f'{cpu:.0f}'}%, bench saturated {step['bench_saturated']}"
                      f" -> {'pass' if step['passed'] else 'FAIL'}")
            print(f"largest passing ({outcome.ramp['criterion']}): {outcome.ramp['largest_passing']}")
        else:
            print(report.table(outcome.summaries))
            for summary in outcome.summaries:
                line = report.queue_line(summary)
                if line is not None:
                    print(line)
            for summary in outcome.summaries:
                print(f"{report.column_label(summary)} load average before/after: {summary['loadavg']['before']}"
                      f" / {summary['loadavg']['after']}")
            for line in report.comparison_lines(report.listening_comparison(outcome.summaries)):
                print(line)
        for probe in outcome.host_noise:
            print(noise.describe(probe, probe["when"]))
        for note in outcome.notes:
            print(f"note: {note}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The `eko-bench` console script: usage errors exit 2, user errors name the flag and exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return run(args)
    except UserError as error:
        print(f"eko-bench: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
