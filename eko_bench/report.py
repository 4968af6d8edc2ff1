"""From a run's records to the report: a JSON-ready dict, a table for people, a plot.

The summary is a plain dict (``--json`` prints it as is). Times are milliseconds;
``None`` means there was nothing to measure (no answered call, no steady period).
The bench calls itself saturated when its media process or the bench as a whole
(SIP process plus media process, on the one core it is pinned to) used more than
``SATURATION_CPU_PERCENT`` of a core over the steady period. Its send lateness (how
late the media loop served each 1 ms send slot) is reported beside it: on a shared
machine a late slot usually means the bench was preempted, not saturated. Arrival
figures are kernel receive timestamps either way, not when the bench read a packet.

The listening scenario adds ``listening`` (``listening_summary``): the talkspurts the
callers started, what became of each (``barge_in.py``), the barge-in latency over all
of them and over the steady period only, and the fake speech-recognition endpoint's
counters when it ran. The bench's helper processes (that endpoint) count in the
bench's CPU and are shown apart.

The server's RTP receive queues (``server_rtp_queues``, when its port range is known)
are what ``ss`` calls Recv-Q, summed over its sockets in that range: bytes of kernel
buffer, a few times the payload of each waiting datagram (see ``udp_queues.py``).
"""

from __future__ import annotations

import collections

import attrs

from eko_bench import barge_in, procstat, scripts, stats
from eko_bench.fake_tts import LIVE, SILENT
from eko_bench.run import LIVE_SCENARIOS, RunResult
from eko_rtp.errors import UserError

LATE_SENDING_MS = 5.0
SATURATION_CPU_PERCENT = 90.0
_NS_TO_MS = 1e-6


def _dist_ms(values_ns: list[int]) -> dict:
    found = stats.distribution(values_ns).scaled(_NS_TO_MS)
    return {"count": found.count, "p50": found.p50, "p90": found.p90, "p99": found.p99, "max": found.max}


# Named instants of a call: SIP ones on the record, RTP ones on its media handle.
_INSTANTS = {
    "invite": lambda record: record.invite_sent_ns,
    "100": lambda record: record.provisional_ns,
    "200": lambda record: record.final_ns,
    "first_rtp": lambda record: record.media.first_packet_ns if record.media else None,
    "first_sound": lambda record: record.media.first_sound_ns if record.media else None,
    "first_live": lambda record: first_live_ns(record.media),
}


def first_live_ns(media) -> int | None:
    """Arrival of the call's first packet carrying the fake endpoint's audio (None: none came,
    or the media was not classified)."""
    classes = getattr(media, "payload_classes", None)
    if not classes:
        return None
    try:
        return media.arrivals[classes.index(LIVE)]
    except ValueError:
        return None


def join_gap_frames(classes, filler_tail_frames: int = 0) -> int | None:
    """Silence frames between the cached filler and the first live frame, less the filler's own
    trailing silence; None when there is no live frame or no filler sound before it."""
    try:
        live = classes.index(LIVE)
    except ValueError:
        return None
    silent = 0
    for position in range(live - 1, -1, -1):
        if classes[position] != SILENT:
            return max(0, silent - filler_tail_frames)
        silent += 1
    return None  # silence back to the first packet: the filler never played


def _endpoint_split(answered, timings: dict, first_byte_ms: float) -> dict:
    """200 -> first live frame in three parts, from the fake endpoint's own clock readings
    (CLOCK_REALTIME, like the packet timestamps): the server's request after the 200, the
    endpoint's lateness past its set time to first byte (its threads share the bench's
    GIL), and the server's first byte -> first live packet."""
    to_request, endpoint_late, to_frame = [], [], []
    for record in answered:
        timing = timings.get(scripts.text_for(record.call_id)) if record.call_id else None
        live = first_live_ns(record.media)
        if timing is None or live is None or record.final_ns is None:
            continue
        arrived, first_byte = timing
        to_request.append(arrived - record.final_ns)
        endpoint_late.append(first_byte - arrived - round(first_byte_ms * 1e6))
        to_frame.append(live - first_byte)
    if not to_frame:
        return {}
    return {"ok_to_request_ms": _dist_ms(to_request), "endpoint_late_ms": _dist_ms(endpoint_late),
            "first_byte_to_live_ms": _dist_ms(to_frame)}


def live_summary(result: RunResult) -> dict | None:
    """The live TTS figures of a live-tts or hybrid run (None for the other scenarios)."""
    plan = result.plan
    if plan.scenario not in LIVE_SCENARIOS:
        return None
    answered = [record for record in result.records if record.status is not None and 200 <= record.status < 300]
    found = {"first_byte_ms": plan.tts_first_byte_ms,
             "ok_to_first_live_ms": _dist_ms(_deltas(answered, "200", "first_live")),
             "calls_without_live": sum(first_live_ns(record.media) is None for record in answered)}
    found.update(_endpoint_split(answered, result.tts_timings, plan.tts_first_byte_ms))
    if plan.scenario == "mixed":
        cached = [record for record in answered if record.media is not None and first_live_ns(record.media) is None]
        found.update({"calls_live": len(answered) - len(cached), "calls_cached": len(cached),
                      "cached_calls_deviation_steady_ms": _dist_ms(deviations_ns(result, steady_only=True, records=cached))})
    if plan.scenario == "hybrid":
        gaps = [join_gap_frames(record.media.payload_classes, plan.filler_tail_frames)
                for record in answered if record.media is not None]
        measured = [gap for gap in gaps if gap is not None]
        found.update({"filler_tail_frames": plan.filler_tail_frames, "calls_joined": len(measured),
                      "calls_with_gap": sum(gap > 0 for gap in measured),
                      "gap_frames_max": max(measured, default=None)})
    return found


def talkspurts_of(result: RunResult) -> list[list[barge_in.Talkspurt]]:
    """Per answered call, what became of each of its caller's talkspurts."""
    window_ns = round(barge_in.WINDOW_SECONDS * 1e9)
    found = []
    for record in result.records:
        if record.status is None or not 200 <= record.status < 300 or record.media is None:
            continue
        media = record.media
        found.append(barge_in.talkspurts(media.onsets_ns, media.arrivals, media.sound, quiet_frames=result.plan.quiet_frames,
                                         window_ns=window_ns, phrase_frames=result.plan.phrase_frames))
    return found


def listening_summary(result: RunResult) -> dict | None:
    """The listening scenario's figures (None for the other scenarios)."""
    plan = result.plan
    if plan.scenario != "listening":
        return None
    per_call = talkspurts_of(result)
    spurts = [spurt for call in per_call for spurt in call]
    outcomes = collections.Counter(spurt.outcome for spurt in spurts)
    latencies = [spurt.latency_ns for spurt in spurts if spurt.outcome is barge_in.Outcome.BARGED]
    steady = []
    if result.steady_window_ns is not None:
        start, end = result.steady_window_ns
        steady = [spurt.latency_ns for spurt in spurts
                  if spurt.outcome is barge_in.Outcome.BARGED and start <= spurt.onset_ns <= end]
    asr = result.asr_stats
    return {
        "mode": plan.listening,
        "lead_in_ms": plan.lead_in_seconds * 1000,
        "quiet_frames": plan.quiet_frames,
        "phrase_frames": plan.phrase_frames,
        "window_ms": barge_in.WINDOW_SECONDS * 1000,
        "talkspurts": len(spurts),
        "outcomes": {outcome.value: outcomes.get(outcome, 0) for outcome in barge_in.Outcome},
        "talkspurts_without_barge_in": outcomes.get(barge_in.Outcome.MISSED, 0),
        "calls_without_barge_in": sum(not any(spurt.outcome is barge_in.Outcome.BARGED for spurt in call)
                                      for call in per_call),
        "barge_in_latency_ms": _dist_ms(latencies),
        "barge_in_latency_steady_ms": _dist_ms(steady),
        "fake_asr": None if asr is None else {
            key: asr[key] for key in ("streams", "open_max", "refused", "closed_cleanly", "client_closed", "dropped",
                                      "protocol_errors", "audio_frames", "keepalives", "close_streams", "pings",
                                      "results_sent")} | {"audio_seconds": asr["audio_bytes"] / 8000},
    }


def listening_comparison(summaries: list[dict]) -> dict | None:
    """Listening runs side by side by mode (``--listening compare``): per mode the runs' server CPU
    (% of a core, and per call), RSS per call and steady deviation p99, each as the mean over the
    runs and the list of runs; None unless listening ran both on and off."""
    by_mode: dict[str, list[dict]] = {}
    for summary in summaries:
        listening = summary.get("listening")
        if listening is not None:
            by_mode.setdefault(listening["mode"], []).append(summary)
    if "off" not in by_mode or len(by_mode) < 2:
        return None

    def figures(runs: list[dict]) -> dict:
        def series(value) -> dict:
            values = [value(run) for run in runs]
            known = [item for item in values if item is not None]
            return {"mean": sum(known) / len(known) if known else None, "runs": values}

        def server(key):
            return lambda run: (run["server"] or {}).get(key)

        return {"runs": len(runs),
                "server_cpu_percent": series(server("cpu_percent")),
                "server_cpu_percent_per_call": series(
                    lambda run: None if (run["server"] or {}).get("cpu_percent") is None
                    else run["server"]["cpu_percent"] / run["plan"]["concurrency"]),
                "rss_per_call_kib": series(server("rss_per_call_kib")),
                "deviation_steady_p99_ms": series(lambda run: run["interarrival_deviation_steady_ms"]["p99"]),
                "barge_in_latency_p50_ms": series(lambda run: run["listening"]["barge_in_latency_ms"]["p50"]),
                "barge_in_latency_p99_ms": series(lambda run: run["listening"]["barge_in_latency_ms"]["p99"])}

    return {mode: figures(runs) for mode, runs in by_mode.items()}


def comparison_lines(comparison: dict | None) -> list[str]:
    """One line a mode for people (none without a comparison)."""
    if comparison is None:
        return []
    lines = []
    for mode, found in comparison.items():
        def mean(key, digits=2):
            value = found[key]["mean"]
            return "-" if value is None else f"{value:.{digits}f}"
        lines.append(f"listening: {LISTENING_WORDS[mode]}, mean of {found['runs']} run(s): server CPU"
                     f" {mean('server_cpu_percent', 1)}% of a core, {mean('server_cpu_percent_per_call', 3)}% per call,"
                     f" RSS {mean('rss_per_call_kib', 1)} KiB per call, steady deviation p99"
                     f" {mean('deviation_steady_p99_ms')} ms, barge-in p50/p99 {mean('barge_in_latency_p50_ms', 1)} /"
                     f" {mean('barge_in_latency_p99_ms', 1)} ms")
    return lines


def _deltas(records, start: str, end: str) -> list[int]:
    """``end - start`` (ns) for every answered call that has both instants."""
    values = []
    for record in records:
        if record.status is None or not 200 <= record.status < 300:
            continue
        first, later = _INSTANTS[start](record), _INSTANTS[end](record)
        if first is not None and later is not None:
            values.append(later - first)
    return values


def by_source(media) -> dict[int, tuple[list[int], list[int], list[int]]]:
    """One call's packets split by SSRC, each in arrival order: (arrivals, sequence numbers, timestamps)."""
    streams: dict[int, tuple[list[int], list[int], list[int]]] = {}
    for arrival, sequence, stamp, source in zip(media.arrivals, media.sequences, media.timestamps, media.sources):
        arrivals, sequences, stamps = streams.setdefault(source, ([], [], []))
        arrivals.append(arrival)
        sequences.append(sequence)
        stamps.append(stamp)
    return streams


def deviations_ns(result: RunResult, *, steady_only: bool = False, records=None) -> list[int]:
    """Inter-arrival deviations pooled over calls (``records``, default all); ``steady_only``:
    only gaps that end inside the steady period (every planned call up), i.e. "at N
    concurrent calls"."""
    pooled: list[int] = []
    window = result.steady_window_ns
    if steady_only and window is None:
        return pooled
    for record in result.records if records is None else records:
        if record.media is None:
            continue
        arrivals = record.media.arrivals
        deviations = stats.interarrival_deviations(arrivals)
        if steady_only:
            start, end = window
            deviations = [d for d, arrival in zip(deviations, arrivals[1:]) if start <= arrival <= end]
        pooled.extend(deviations)
    return pooled


def workers_summary(result: RunResult) -> dict | None:
    """A front's workers (``--worker-pid``): each one's CPU over the steady period, % of a
    core, and their sum; None without workers. A worker that was gone by the end of the
    steady period, or a run without one, has None, and so has the sum."""
    if not result.worker_samples:
        return None
    each: dict[str, float | None] = {}
    for pid, samples in result.worker_samples.items():
        first, last = (samples[0], samples[-1]) if len(samples) >= 2 else (None, None)
        each[str(pid)] = procstat.cpu_percent(first, last) if first is not None and last is not None else None
    known = [value for value in each.values() if value is not None]
    return {"cpu_percent": each, "cpu_percent_sum": sum(known) if len(known) == len(each) else None}


def queue_summary(result: RunResult) -> dict | None:
    """The server's RTP receive queues over the steady period (None: its RTP ports are unknown)."""
    if result.rtp_ports is None:
        return None
    ports = result.rtp_ports
    return {"ports": f"{ports.start}-{ports.stop - 1}", "sockets_of": result.rtp_queues_of,
            "samples": result.rtp_queue_samples,
            "max": attrs.asdict(result.rtp_queues_max) if result.rtp_queues_max else None,
            "at_end": attrs.asdict(result.rtp_queues_last) if result.rtp_queues_last else None}


def summarise(result: RunResult) -> dict:
    """The report of one run as a JSON-ready dict."""
    records = result.records
    answered = [record for record in records if record.status is not None and 200 <= record.status < 300]
    failed = collections.Counter(str(record.status) for record in records if record not in answered)
    reasons = collections.Counter(f"{record.status} {record.reason}".strip() for record in records if record not in answered)
    quality = stats.NO_PACKETS
    drifts = []
    steady_drifts = []
    window = result.steady_window_ns
    gaps = []
    fallback = 0
    malformed = 0
    srtp_dropped = 0
    several_sources = 0
    rtcp = 0
    for record in answered:
        media = record.media
        # RFC 3550 §6.4.1: sequence and timestamp accounting is per synchronisation source.
        streams = by_source(media)
        several_sources += len(streams) > 1
        for arrivals, sequences, stamps in streams.values():
            quality = quality + stats.sequence_quality(sequences)
            drift = stats.drift_ms_per_minute(arrivals, stamps)
            if drift is not None:
                drifts.append(drift)
            if window is not None:
                # Drift at N concurrent calls: the packets of the steady period only, so
                # lateness while other calls were still being set up is not read as drift.
                inside = [(arrival, stamp) for arrival, stamp in zip(arrivals, stamps) if window[0] <= arrival <= window[1]]
                drift = stats.drift_ms_per_minute([a for a, _ in inside], [t for _, t in inside])
                if drift is not None:
                    steady_drifts.append(drift)
        gap = stats.max_gap_ns(media.arrivals)
        if gap is not None:
            gaps.append(gap)
        rtcp += media.rtcp_received
        fallback += media.fallback_clock
        malformed += media.malformed
        srtp_dropped += media.srtp_dropped
    server = None
    if result.idle is not None or result.steady:
        steady_rss = max((sample.rss_kib for sample in result.steady), default=None)
        per_call = None
        if steady_rss is not None and result.idle is not None and answered:
            per_call = (steady_rss - result.idle.rss_kib) / result.plan.simultaneous
        server = {
            "cpu_percent": procstat.cpu_percent(result.steady[0], result.steady[-1]) if len(result.steady) >= 2 else None,
            # Its child processes, on other CPUs (the recognizer relay), apart: the row above is the media core.
            "children_cpu_percent": {name: 100.0 * seconds / result.steady_seconds
                                     for name, seconds in result.server_children_cpu_seconds.items()}
                                    if result.steady_seconds else {},
            "rss_idle_kib": result.idle.rss_kib if result.idle else None,
            "rss_steady_kib": steady_rss,
            "rss_per_call_kib": per_call,
        }
    lateness = _dist_ms(result.lateness_ns)
    bench_cpu = None
    if result.bench_cpu_seconds is not None and result.steady_seconds:
        bench_cpu = 100.0 * result.bench_cpu_seconds / result.steady_seconds
    if result.media_cpu_seconds is not None and result.steady_seconds:
        media_busy = 100.0 * result.media_cpu_seconds / result.steady_seconds  # at N calls, like the rest
    elif result.engine_wall_seconds:
        media_busy = 100.0 * result.engine_busy_seconds / result.engine_wall_seconds  # no steady period: its whole life
    else:
        media_busy = None
    saturated = bool(max(media_busy or 0, bench_cpu or 0) > SATURATION_CPU_PERCENT)
    helpers = {name: 100.0 * seconds / result.steady_seconds
               for name, seconds in result.helper_cpu_seconds.items()} if result.steady_seconds else {}
    plan = result.plan
    return {
        "target": result.target,
        # Encryption, on the run's own line: the figures are comparable with a run in clear.
        "tls": plan.tls,
        "srtp": plan.srtp.value if plan.srtp is not None else None,
        "plan": {"calls": plan.calls, "concurrency": plan.concurrency, "rate": plan.rate, "hold": plan.hold,
                 "scenario": plan.scenario, "caller_events": plan.caller_events,
                 **({"listening": plan.listening} if plan.scenario == "listening" else {})},
        "loadavg": {"before": result.loadavg_before, "after": result.loadavg_after},
        "calls": {"attempted": len(records), "answered": len(answered), "failed": dict(sorted(failed.items())),
                  "failure_reasons": dict(sorted(reasons.items()))},
        "latency_ms": {
            "invite_to_100": _dist_ms(_deltas(records, "invite", "100")),
            "invite_to_200": _dist_ms(_deltas(records, "invite", "200")),
            "ok_to_first_rtp": _dist_ms(_deltas(records, "200", "first_rtp")),
            "ok_to_first_sound": _dist_ms(_deltas(records, "200", "first_sound")),
        },
        "interarrival_deviation_ms": _dist_ms(deviations_ns(result)),
        "interarrival_deviation_steady_ms": _dist_ms(deviations_ns(result, steady_only=True)),
        "max_gap_ms": max(gaps) * _NS_TO_MS if gaps else None,
        "packets": {"received": quality.received, "expected": quality.expected, "lost": quality.lost,
                    "duplicates": quality.duplicates, "reordered": quality.reordered, "malformed": malformed,
                    "srtp_dropped": srtp_dropped, "calls_with_several_ssrcs": several_sources, "rtcp_received": rtcp},
        "drift_ms_per_minute_max": max(drifts, key=abs) if drifts else None,
        "drift_steady_ms_per_minute_max": max(steady_drifts, key=abs) if steady_drifts else None,
        "steady_seconds": result.steady_seconds,
        "live_tts": live_summary(result),
        "listening": listening_summary(result),
        "server": server,
        "workers": workers_summary(result),
        "server_rtp_queues": queue_summary(result),
        "hostile_sip": result.hostile_sip,
        "bench": {
            "cpu_percent": bench_cpu,
            "media_process_cpu_percent": media_busy,
            "helpers_cpu_percent": helpers,
            "send_lateness_ms": lateness,
            "late_sending": bool((lateness["p99"] or 0) > LATE_SENDING_MS),
            "saturated": saturated,
            "clock": "kernel SO_TIMESTAMPNS" if fallback == 0 else f"time.time_ns() fallback for {fallback} packets",
            "sip_retransmissions": result.sip_retransmissions,
            "sip_malformed": result.sip_malformed,
            "duration_seconds": result.duration_seconds,
        },
    }


def _format(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, dict):
        return " ".join(f"{key}:{count}" for key, count in value.items()) or "-"
    return str(value)


def rows(summary: dict) -> list[tuple[str, object]]:
    """(label, value) rows of the human table, in reading order."""
    out: list[tuple[str, object]] = [
        ("calls attempted", summary["calls"]["attempted"]),
        ("calls answered", summary["calls"]["answered"]),
        ("calls failed (by SIP code)", summary["calls"]["failed"]),
    ]
    for name, label in (("invite_to_100", "INVITE->100 ms"), ("invite_to_200", "INVITE->200 ms"),
                        ("ok_to_first_rtp", "200->first RTP ms"), ("ok_to_first_sound", "200->first sound ms")):
        found = summary["latency_ms"][name]
        out += [(f"{label} p50", found["p50"]), (f"{label} p99", found["p99"]), (f"{label} max", found["max"])]
    deviation = summary["interarrival_deviation_ms"]
    out += [(f"inter-arrival deviation ms {key}", deviation[key]) for key in ("p50", "p90", "p99", "max")]
    steady = summary["interarrival_deviation_steady_ms"]
    out += [(f"  steady period only ms {key}", steady[key]) for key in ("p50", "p90", "p99", "max")]
    out += [("max gap ms", summary["max_gap_ms"])]
    out += live_rows(summary.get("live_tts"))
    out += listening_rows(summary.get("listening"))
    packets = summary["packets"]
    out += [(f"packets {key}", packets[key]) for key in ("received", "lost", "duplicates", "reordered")]
    if summary.get("srtp"):
        out += [("packets failing SRTP (not recorded)", packets["srtp_dropped"])]
    out += [("calls with several SSRCs", packets["calls_with_several_ssrcs"])]
    out += [("drift ms/min (largest)", summary["drift_ms_per_minute_max"]),
            ("  steady period only ms/min", summary["drift_steady_ms_per_minute_max"]),
            ("steady period s", summary["steady_seconds"])]
    server = summary["server"] or {}
    workers = summary.get("workers")
    if workers is not None:
        out += [*((f"worker pid {pid} CPU % of a core", value) for pid, value in workers["cpu_percent"].items()),
                ("workers' CPU % summed", workers["cpu_percent_sum"])]
    out += [("target CPU % of a core", server.get("cpu_percent")),
            *((f"  its child {name} CPU %", value) for name, value in (server.get("children_cpu_percent") or {}).items()),
            ("target RSS idle KiB", server.get("rss_idle_kib")),
            ("target RSS steady KiB", server.get("rss_steady_kib")), ("target RSS per call KiB", server.get("rss_per_call_kib"))]
    bench = summary["bench"]
    out += [("bench CPU % of a core", bench["cpu_percent"]), ("bench media process CPU %", bench["media_process_cpu_percent"]),
            *((f"bench {name.replace('_', ' ')} CPU %", value) for name, value in _helper_cpu(summary).items()),
            ("bench send lateness p99 ms", bench["send_lateness_ms"]["p99"]),
            ("bench saturated", bench["saturated"]), ("arrival clock", bench["clock"])]
    return out


def live_rows(live: dict | None) -> list[tuple[str, object]]:
    """The live TTS rows (none for the greeting scenarios)."""
    if live is None:
        return []
    latency = live["ok_to_first_live_ms"]
    out: list[tuple[str, object]] = [("TTS time to first byte ms (set)", live["first_byte_ms"])]
    out += [(f"200->first live frame ms {key}", latency[key]) for key in ("p50", "p99", "max")]
    out += [("calls without live audio", live["calls_without_live"])]
    if "first_byte_to_live_ms" in live:
        out += [(f"  200->request at endpoint ms {key}", live["ok_to_request_ms"][key]) for key in ("p50", "p99")]
        out += [(f"  endpoint late past set TTFB ms {key}", live["endpoint_late_ms"][key]) for key in ("p50", "p99")]
        out += [(f"  endpoint first byte->live ms {key}", live["first_byte_to_live_ms"][key]) for key in ("p50", "p99")]
    if "calls_cached" in live:
        cached = live["cached_calls_deviation_steady_ms"]
        out += [("mixed: calls live / cached", f"{live['calls_live']} / {live['calls_cached']}")]
        out += [(f"cached calls, steady deviation ms {key}", cached[key]) for key in ("p50", "p99", "max")]
    if "calls_with_gap" in live:
        out += [("hybrid calls joined", live["calls_joined"]),
                ("hybrid calls with a gap", live["calls_with_gap"]),
                ("hybrid gap frames max", live["gap_frames_max"])]
    return out


def listening_rows(listening: dict | None) -> list[tuple[str, object]]:
    """The listening rows (none for the other scenarios)."""
    if listening is None:
        return []
    latency, steady, outcomes = listening["barge_in_latency_ms"], listening["barge_in_latency_steady_ms"], listening["outcomes"]
    out: list[tuple[str, object]] = [("listening", LISTENING_WORDS[listening["mode"]]),
                                     ("caller talkspurts", listening["talkspurts"])]
    out += [(f"barge-in latency ms {key}", latency[key]) for key in ("p50", "p90", "p99", "max")]
    out += [(f"  barge-in, steady period only ms {key}", steady[key]) for key in ("p50", "p99")]
    out += [("talkspurts barged in (measured)", outcomes["barged"]),
            ("  barged in during a bot pause", outcomes["barged_in_pause"]),
            ("  bot already quiet", outcomes["bot_quiet"]),
            ("  no barge-in observed", outcomes["missed"]),
            ("  call ended first", outcomes["unfinished"]),
            ("calls without a barge-in", listening["calls_without_barge_in"])]
    # The same rows with listening off (no endpoint), so runs compare side by side.
    asr = listening["fake_asr"]
    out += [("fake ASR streams (most at once)", None if asr is None else f"{asr['streams']} ({asr['open_max']})"),
            ("fake ASR closed cleanly / dropped", None if asr is None else f"{asr['closed_cleanly']} / {asr['dropped']}"),
            ("fake ASR audio s", None if asr is None else asr["audio_seconds"])]
    return out


def _helper_cpu(summary: dict) -> dict:
    """The bench's helper processes' CPU % by name; in the listening scenario the fake ASR's
    always has a row (empty when it did not run), so runs compare side by side."""
    helpers = dict(summary["bench"].get("helpers_cpu_percent") or {})
    if summary["plan"].get("scenario") == "listening":
        helpers.setdefault("fake_asr", None)
    return helpers


LISTENING_WORDS = {"vad": "VAD barge-in", "asr": "VAD barge-in + ASR stream", "off": "off (no VAD, no ASR)"}


def column_label(summary: dict) -> str:
    """'server (500 conc.)', or 'server (500 conc., caller events)' when callers sent RFC 4733 events,
    or 'server (500 conc., listening vad)'."""
    plan = summary["plan"]
    events = ", caller events" if plan.get("caller_events") else ""
    listening = f", listening {plan['listening']}" if plan.get("listening") else ""
    encrypted = "".join(part for part in (", TLS" if summary.get("tls") else "",
                                          f", SRTP {summary['srtp']}" if summary.get("srtp") else ""))
    return f"{summary['target']} ({plan['concurrency']} conc.{events}{listening}{encrypted})"


def queue_line(summary: dict) -> str | None:
    """One line for people on the server's RTP receive queues (None when they were not looked at)."""
    queues = summary.get("server_rtp_queues")
    if queues is None:
        return None
    label = f"{column_label(summary)} RTP receive queues"
    where = f"ports {queues['ports']}, sockets of {queues['sockets_of']}"
    worst, last = queues["max"], queues["at_end"]
    if worst is None or last is None:
        return f"{label}: not sampled, no steady period ({where})"
    return (f"{label}: max {worst['largest_bytes']} B in one socket, {last['total_bytes']} B total at the end"
            f" ({last['non_empty']} of {last['sockets']} sockets non-empty); at most {worst['total_bytes']} B total;"
            f" {last['drops']} datagrams dropped ({queues['samples']} looks over the steady period, {where})")


def table(summaries: list[dict]) -> str:
    """One column per target; with two, a ratio column (first / second) for numbers."""
    columns = [rows(summary) for summary in summaries]
    headers = ["", *(column_label(summary) for summary in summaries)]
    if len(summaries) == 2:
        headers.append("ratio")
    lines = []
    for position, (label, _) in enumerate(columns[0]):
        values = [column[position][1] for column in columns]
        cells = [label, *(_format(value) for value in values)]
        if len(values) == 2:
            first, second = values
            numeric = all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
            cells.append(f"{first / second:.2f}" if numeric and second else "")
        lines.append(cells)
    widths = [max(len(str(cells[index])) for cells in [headers, *lines]) for index in range(len(headers))]
    rendered = [" | ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip() for cells in [headers, *lines]]
    rendered.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(rendered)


def plot(results: list[RunResult], path: str) -> None:
    """Draw INVITE->200 / 200->first sound latencies and the inter-arrival histogram to ``path``."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as pyplot
    except ImportError:
        raise UserError("--plot needs matplotlib: pip install 'eko-rtp[plot]'", key="--plot") from None
    figure, (latency_axis, jitter_axis) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    for result in results:
        for start, end, label in (("invite", "200", "INVITE->200"), ("200", "first_sound", "200->first sound")):
            values = sorted(value * _NS_TO_MS for value in _deltas(result.records, start, end))
            if values:
                latency_axis.plot(values, [(rank + 1) / len(values) for rank in range(len(values))],
                                  drawstyle="steps-post", label=f"{result.target}: {label}")
        deviations = [value * _NS_TO_MS for value in deviations_ns(result)]
        if deviations:
            jitter_axis.hist(deviations, bins=100, histtype="step", log=True, label=result.target)
    latency_axis.set(xlabel="ms", ylabel="fraction of calls", title="latency (CDF)")
    latency_axis.legend(fontsize="small")
    jitter_axis.set(xlabel="|inter-arrival - 20 ms|, ms", ylabel="packets", title="inter-arrival deviation")
    jitter_axis.legend(fontsize="small")
    figure.tight_layout()
    try:
        figure.savefig(path)
    except OSError as error:
        raise UserError(f"cannot write the plot: {error}", path=path) from None
