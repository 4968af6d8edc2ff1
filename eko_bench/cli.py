"""`eko-bench` (also `bin/eko-bench`, `python -m eko_bench`): load a SIP target on loopback the way a trunk does and report."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from eko_bench import campaign, noise, report, scripts
from eko_bench.rtp_engine import SILENCE, open_wav_as_ulaw
from eko_bench.run import BENCH_RTP_PORTS as BENCH_PORT_RANGE
from eko_bench.run import MAX_CALLS, MAX_SECONDS, SCENARIOS, Plan
from eko_bench.targets import parse_cpus, parse_port_range, server_rtp_ports, trailing_silence_frames
from eko_rtp.config import SCHEMA
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
    parser.add_argument("--audio", help="WAV (8 kHz mono 16-bit) the caller plays, looped (default: silence)")
    parser.add_argument("--caller-events", action="store_true",
                        help="callers also send an RFC 4733 event packet beside each audio packet, 100 packets/s,"
                             " like a phone while a key is held")
    parser.add_argument("--scenario", choices=SCENARIOS, default=SCENARIOS[0],
                        help="what the calls do (default greeting-unknown); live-tts: the server says a text of each"
                             " call's own with live TTS; hybrid: a cached filler, then the live text; mixed: half the calls"
                             " live text, half the cached greeting (the cached calls' pacing is reported apart); with"
                             " --spawn they run against the bench's local fake of the ElevenLabs endpoint")
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


def run(args: argparse.Namespace) -> int:
    filler_tail = 0
    if args.scenario == "hybrid" and args.cache_dir is not None:
        filler_tail = trailing_silence_frames(args.cache_dir, scripts.FILLER)
    plan = Plan(calls=args.calls, concurrency=args.concurrency or args.calls, rate=args.rate, hold=args.hold,
                scenario=args.scenario, tts_first_byte_ms=args.tts_first_byte_ms, filler_tail_frames=filler_tail,
                caller_events=args.caller_events)
    options = campaign.Options(
        target=args.target, address=args.address, spawn=args.spawn, server_cpus=args.server_cpus,
        server_pid=args.server_pid, cache_dir=args.cache_dir, rtp_ports=args.rtp_ports,
        server_args=tuple(args.server_arg), plan=plan, ramp=args.ramp,
        bench_ports=args.bench_rtp_ports, sizes=args.sizes, noise_probe=args.noise_probe,
        keep_cpu_awake=args.keep_cpu_awake, server_rtp_ports=args.server_rtp_ports)
    caller_audio = open_wav_as_ulaw(args.audio) if args.audio else SILENCE
    outcome = campaign.run_sync(options, caller_audio=caller_audio)
    if args.plot:
        report.plot(outcome.results, args.plot)
    if args.json:
        json.dump({"runs": outcome.summaries, "ramp": outcome.ramp, "host_noise": outcome.host_noise,
                   "keep_cpu_awake": args.keep_cpu_awake, "notes": outcome.notes},
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
