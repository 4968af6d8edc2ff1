"""The report from recorded calls: summarise known records, render the table, the notes."""

import array

import attrs
import pytest

from eko_bench import campaign, fake_tts, procstat, report, udp_queues
from eko_bench.rtp_engine import MediaHandle
from eko_bench.run import CallRecord, ClassifiedHandle, Plan, RunResult

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000  # CLOCK_REALTIME ns


def _media(arrivals_ms, sequences, sources=None, first_sound_index=0):
    arrivals = [T0 + round(value * MS) for value in arrivals_ms]
    return MediaHandle(
        key=0, port=20000,
        arrivals=array.array("q", arrivals),
        sequences=array.array("H", sequences),
        timestamps=array.array("L", [(1000 + 160 * (number - sequences[0])) % (1 << 32) for number in sequences]),
        sources=array.array("L", sources or [7] * len(sequences)),
        first_packet_ns=arrivals[0],
        first_sound_ns=arrivals[first_sound_index],
    )


def _result(records, *, idle=None, steady=()):
    return RunResult(
        target="server", plan=Plan(calls=len(records), concurrency=len(records), rate=10.0, hold=1.0), records=records,
        idle=idle, steady=list(steady), steady_seconds=2.0, steady_window_ns=(T0 + 30 * MS, T0 + 70 * MS),
        bench_cpu_seconds=0.5, engine_busy_seconds=0.2,
        engine_wall_seconds=2.0, lateness_ns=[0, 1 * MS, 2 * MS], sip_retransmissions=1, sip_malformed=0,
        duration_seconds=3.0)


def test_summary_of_known_calls():
    answered = CallRecord(index=0, status=200, invite_sent_ns=T0 - 10 * MS, provisional_ns=T0 - 9 * MS, final_ns=T0 - 8 * MS,
                          media=_media([0, 20, 41, 60, 100], [65534, 65535, 0, 1, 3], first_sound_index=2))
    busy = CallRecord(index=1, status=486, reason="Busy Here", invite_sent_ns=T0, final_ns=T0 + 1 * MS)
    idle = procstat.Sample(at=0.0, cpu_ticks=0, rss_kib=30000)
    steady = [procstat.Sample(at=1.0, cpu_ticks=0, rss_kib=30100),
              procstat.Sample(at=3.0, cpu_ticks=procstat.CLOCK_TICKS, rss_kib=30200)]
    summary = report.summarise(_result([answered, busy], idle=idle, steady=steady))
    assert summary["calls"] == {"attempted": 2, "answered": 1, "failed": {"486": 1}, "failure_reasons": {"486 Busy Here": 1}}
    assert summary["latency_ms"]["invite_to_100"] == {"count": 1, "p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0}
    assert summary["latency_ms"]["invite_to_200"]["max"] == 2.0
    assert summary["latency_ms"]["ok_to_first_rtp"]["p50"] == 8.0
    assert summary["latency_ms"]["ok_to_first_sound"]["p50"] == 49.0
    # gaps 20, 21, 19, 40 ms -> deviations 0, 1, 1, 20
    assert summary["interarrival_deviation_ms"] == {"count": 4, "p50": 1.0, "p90": 20.0, "p99": 20.0, "max": 20.0}
    # Only the gaps ending at 41 and 60 ms fall in the steady window (30-70 ms).
    assert summary["interarrival_deviation_steady_ms"] == {"count": 2, "p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0}
    assert summary["max_gap_ms"] == 40.0
    assert summary["packets"] == {"received": 5, "expected": 6, "lost": 1, "duplicates": 0, "reordered": 0,
                                  "malformed": 0, "srtp_dropped": 0, "calls_with_several_ssrcs": 0, "rtcp_received": 0}
    assert (summary["tls"], summary["srtp"]) == (False, None)  # in clear
    assert summary["server"] == {"cpu_percent": 50.0, "children_cpu_percent": {}, "rss_idle_kib": 30000,
                                 "rss_steady_kib": 30200, "rss_per_call_kib": 100.0}
    assert summary["bench"]["cpu_percent"] == 25.0
    assert summary["bench"]["media_process_cpu_percent"] == 10.0
    assert (summary["bench"]["saturated"], summary["bench"]["late_sending"]) == (False, False)


def test_the_server_s_child_processes_are_reported_beside_its_own_cpu():
    idle = procstat.Sample(at=0.0, cpu_ticks=0, rss_kib=30000)
    steady = [procstat.Sample(at=1.0, cpu_ticks=0, rss_kib=30100), procstat.Sample(at=3.0, cpu_ticks=0, rss_kib=30200)]
    answered = CallRecord(index=0, status=200, invite_sent_ns=T0, final_ns=T0, media=_media([0, 20], [1, 2]))
    result = attrs.evolve(_result([answered], idle=idle, steady=steady),
                          server_children_cpu_seconds={"eko_rtp.asr.relay_process": 0.6})
    summary = report.summarise(result)
    assert summary["server"]["children_cpu_percent"] == {"eko_rtp.asr.relay_process": 30.0}  # 0.6 s of 2 s
    rows = dict(report.rows(summary))
    assert rows["  its child eko_rtp.asr.relay_process CPU %"] == 30.0


def test_a_fronts_workers_are_reported_each_and_summed():
    answered = CallRecord(index=0, status=200, invite_sent_ns=T0, final_ns=T0, media=_media([0, 20], [1, 2]))
    ticks = procstat.CLOCK_TICKS
    busy = [procstat.Sample(at=1.0, cpu_ticks=0, rss_kib=1), procstat.Sample(at=3.0, cpu_ticks=ticks, rss_kib=1)]
    quiet = [procstat.Sample(at=1.0, cpu_ticks=0, rss_kib=1), procstat.Sample(at=3.0, cpu_ticks=ticks // 2, rss_kib=1)]
    summary = report.summarise(attrs.evolve(_result([answered]), worker_samples={101: busy, 202: quiet}))
    assert summary["workers"] == {"cpu_percent": {"101": 50.0, "202": 25.0}, "cpu_percent_sum": 75.0}
    assert summary["server"] is None  # no --server-pid
    rows = dict(report.rows(summary))
    assert (rows["worker pid 101 CPU % of a core"], rows["workers' CPU % summed"]) == (50.0, 75.0)
    # A worker gone before the end of the steady period (restarted, killed) has no figure, nor has the sum.
    gone = report.summarise(attrs.evolve(_result([answered]), worker_samples={101: busy, 202: [quiet[0], None]}))
    assert gone["workers"] == {"cpu_percent": {"101": 50.0, "202": None}, "cpu_percent_sum": None}
    assert report.summarise(_result([answered]))["workers"] is None  # no --worker-pid: no such section


def test_sources_are_accounted_separately():
    # Two SSRCs interleaved on one socket: each is a clean stream, not a storm of loss and reordering.
    media = _media([0, 5, 20, 25, 40, 45], [100, 9000, 101, 9001, 102, 9002], sources=[1, 2, 1, 2, 1, 2])
    record = CallRecord(index=0, status=200, invite_sent_ns=T0, final_ns=T0, media=media)
    packets = report.summarise(_result([record]))["packets"]
    assert (packets["lost"], packets["reordered"], packets["calls_with_several_ssrcs"]) == (0, 0, 1)


def test_drift_over_the_steady_period_leaves_out_lateness_while_calls_were_being_set_up():
    # 150 frames 20 ms apart; the first 50 (before every call was up) arrive 2 ms late.
    arrivals_ms = [20 * n + (2 if n < 50 else 0) for n in range(150)]
    record = CallRecord(index=0, status=200, invite_sent_ns=T0, final_ns=T0, media=_media(arrivals_ms, list(range(150))))
    result = attrs.evolve(_result([record]), steady_window_ns=(T0 + 1000 * MS, T0 + 3000 * MS))
    summary = report.summarise(result)
    assert summary["drift_ms_per_minute_max"] < -1.0  # early lateness read as a clock running fast
    assert abs(summary["drift_steady_ms_per_minute_max"]) < 1e-6  # at N concurrent calls: none
    rows = dict(report.rows(summary))
    assert rows["  steady period only ms/min"] == summary["drift_steady_ms_per_minute_max"]


def _summary(target, answered, p99, **bench):
    return {"target": target, "plan": {"concurrency": answered},
            "calls": {"attempted": answered, "answered": answered, "failed": {}},
            "latency_ms": {name: {"p50": None, "p99": p99, "max": None}
                           for name in ("invite_to_100", "invite_to_200", "ok_to_first_rtp", "ok_to_first_sound")},
            "interarrival_deviation_ms": {"p50": None, "p90": None, "p99": p99, "max": None},
            "interarrival_deviation_steady_ms": {"p50": None, "p90": None, "p99": p99, "max": None}, "max_gap_ms": None,
            "packets": {"received": 0, "lost": 0, "duplicates": 0, "reordered": 0, "calls_with_several_ssrcs": 0},
            "drift_ms_per_minute_max": None, "drift_steady_ms_per_minute_max": None, "steady_seconds": None, "server": None,
            "bench": {"cpu_percent": 40.0, "media_process_cpu_percent": 30.0, "send_lateness_ms": {"p99": 1.0},
                      "saturated": False, "late_sending": False, "clock": "kernel SO_TIMESTAMPNS"} | bench}


def test_table_side_by_side_with_ratios():
    lines = report.table([_summary("server", 6, 2.0), _summary("peer", 4, 0.5)]).splitlines()
    cells = [[cell.strip() for cell in line.split("|")] for line in lines]
    assert cells[0] == ["", "server (6 conc.)", "peer (4 conc.)", "ratio"]
    assert cells[3] == ["calls answered", "6", "4", "1.50"]
    assert ["INVITE->100 ms p99", "2.00", "0.50", "4.00"] in cells
    assert ["INVITE->100 ms p50", "-", "-", ""] in cells
    assert ["bench saturated", "no", "no", ""] in cells


@pytest.mark.parametrize(
    ("bench", "notes"),
    [
        ({}, []),
        ({"late_sending": True, "send_lateness_ms": {"p99": 7.25}},
         ["server: the bench sent caller RTP late (slot lateness p99 7.2 ms) with its media process 30% busy: it was"
          " preempted; received figures are kernel timestamps and stay valid"]),
        ({"saturated": True, "late_sending": True, "cpu_percent": 95.0, "media_process_cpu_percent": 91.0},
         ["server: the bench was saturated (CPU 95% of a core, media process 91%): the load offered was less than planned"]),
    ],
)
def test_bench_notes(bench, notes):
    assert campaign.bench_notes(_summary("server", 1, 1.0, **bench)) == notes


# -- live TTS scenarios --------------------------------------------------------------

S, N, L = fake_tts.SILENT, fake_tts.SOUND, fake_tts.LIVE


@pytest.mark.parametrize(
    "classes, tail, expected",
    [
        ([N, N, L, L], 0, 0),  # filler then live at once
        ([N, N, S, S, S, L], 0, 3),
        ([N, N, S, S, S, L], 2, 1),  # two of the three are the filler's own trailing silence
        ([N, S, S, L], 5, 0),  # never negative
        ([S, S, N, N, S, L, N, S, S, L], 0, 1),  # only up to the first live frame
        ([S, S, L], 0, None),  # no filler before the live audio
        ([N, N, S], 0, None),  # the live audio never came
        ([], 0, None),
    ],
)
def test_join_gap_frames(classes, tail, expected):
    assert report.join_gap_frames(array.array("B", classes), tail) == expected


def _classified(arrivals_ms, classes):
    plain = _media(arrivals_ms, list(range(100, 100 + len(arrivals_ms))))
    return ClassifiedHandle(**{field.name: getattr(plain, field.name) for field in attrs.fields(MediaHandle)},
                            payload_classes=array.array("B", classes))


def _live_result(scenario, records, tail=0):
    plan = Plan(calls=len(records), concurrency=len(records), rate=10.0, hold=1.0, scenario=scenario,
                tts_first_byte_ms=300.0, filler_tail_frames=tail)
    return attrs.evolve(_result(records), plan=plan)


def test_live_tts_summary_and_rows():
    records = [
        CallRecord(index=0, status=200, final_ns=T0 - 10 * MS, media=_classified([0, 20, 300, 320], [S, S, L, L])),
        CallRecord(index=1, status=200, final_ns=T0, media=_classified([0, 20, 40, 60], [S, S, L, L])),
        CallRecord(index=2, status=200, final_ns=T0, media=_classified([0, 20], [S, S])),  # no live audio came
        CallRecord(index=3, status=486, reason="Busy Here"),
    ]
    summary = report.summarise(_live_result("live-tts", records))
    assert summary["live_tts"] == {
        "first_byte_ms": 300.0,
        "ok_to_first_live_ms": {"count": 2, "p50": 40.0, "p90": 310.0, "p99": 310.0, "max": 310.0},
        "calls_without_live": 1,
    }
    assert report.live_rows(summary["live_tts"]) == [
        ("TTS time to first byte ms (set)", 300.0), ("200->first live frame ms p50", 40.0),
        ("200->first live frame ms p99", 310.0), ("200->first live frame ms max", 310.0), ("calls without live audio", 1)]
    cells = {line.split("|")[0].strip(): line.split("|")[1].strip() for line in report.table([summary]).splitlines()[2:]}
    assert (cells["200->first live frame ms p99"], cells["calls without live audio"]) == ("310.00", "1")


def test_live_tts_latency_split_at_the_endpoint():
    from eko_bench.scripts import text_for
    records = [
        CallRecord(index=0, status=200, final_ns=T0 - 10 * MS, call_id="a@b", media=_classified([0, 20, 300, 320], [S, S, L, L])),
        CallRecord(index=1, status=200, final_ns=T0, call_id="c@d", media=_classified([0, 20, 340], [S, S, L])),
        CallRecord(index=2, status=200, final_ns=T0, call_id="e@f", media=_classified([0, 20], [S, S])),  # no live audio
    ]
    timings = {
        # the request read 2 ms after the 200, first byte 300 ms later, live frame 8 ms after it
        text_for("a@b"): (T0 - 8 * MS, T0 + 292 * MS),
        # read 4 ms after the 200, the endpoint 30 ms late, live frame 6 ms after the byte
        text_for("c@d"): (T0 + 4 * MS, T0 + 334 * MS),
    }
    live = report.summarise(attrs.evolve(_live_result("live-tts", records), tts_timings=timings))["live_tts"]
    assert (live["ok_to_request_ms"]["p50"], live["ok_to_request_ms"]["max"]) == (2.0, 4.0)
    assert (live["endpoint_late_ms"]["p50"], live["endpoint_late_ms"]["max"]) == (0.0, 30.0)
    assert (live["first_byte_to_live_ms"]["p50"], live["first_byte_to_live_ms"]["max"]) == (6.0, 8.0)
    rows = dict(report.live_rows(live))
    assert rows["  endpoint late past set TTFB ms p99"] == 30.0
    assert rows["  endpoint first byte->live ms p99"] == 8.0
    without = report.summarise(_live_result("live-tts", records))["live_tts"]
    assert "first_byte_to_live_ms" not in without  # no endpoint timings (a server given by --address)


def test_hybrid_summary_counts_calls_with_a_gap():
    records = [
        CallRecord(index=0, status=200, final_ns=T0, media=_classified(range(0, 120, 20), [N, N, S, L, L, L])),
        CallRecord(index=1, status=200, final_ns=T0, media=_classified(range(0, 140, 20), [N, S, S, S, S, L, L])),
        CallRecord(index=2, status=200, final_ns=T0, media=_classified(range(0, 60, 20), [N, N, N])),
    ]
    live = report.summarise(_live_result("hybrid", records, tail=1))["live_tts"]
    assert live == {
        "first_byte_ms": 300.0,
        "ok_to_first_live_ms": {"count": 2, "p50": 60.0, "p90": 100.0, "p99": 100.0, "max": 100.0},
        "calls_without_live": 1, "filler_tail_frames": 1, "calls_joined": 2, "calls_with_gap": 1, "gap_frames_max": 3}
    assert report.live_rows(live)[-3:] == [("hybrid calls joined", 2), ("hybrid calls with a gap", 1),
                                           ("hybrid gap frames max", 3)]


def test_mixed_summary_reports_the_cached_calls_pacing_apart():
    # Steady window is 30-70 ms after T0: the cached call's gaps ending at 41 and 60 ms count.
    records = [
        CallRecord(index=0, status=200, final_ns=T0, media=_classified([0, 20, 41, 60, 100], [N, N, N, N, N])),
        CallRecord(index=1, status=200, final_ns=T0, media=_classified([0, 20, 45, 60], [S, L, L, L])),
    ]
    live = report.summarise(_live_result("mixed", records))["live_tts"]
    assert live == {
        "first_byte_ms": 300.0,
        "ok_to_first_live_ms": {"count": 1, "p50": 20.0, "p90": 20.0, "p99": 20.0, "max": 20.0},
        "calls_without_live": 1, "calls_live": 1, "calls_cached": 1,
        "cached_calls_deviation_steady_ms": {"count": 2, "p50": 1.0, "p90": 1.0, "p99": 1.0, "max": 1.0},
    }
    assert report.live_rows(live)[-4:] == [
        ("mixed: calls live / cached", "1 / 1"), ("cached calls, steady deviation ms p50", 1.0),
        ("cached calls, steady deviation ms p99", 1.0), ("cached calls, steady deviation ms max", 1.0)]


def test_greeting_scenarios_have_no_live_rows():
    summary = report.summarise(_result([CallRecord(index=0, status=200, final_ns=T0, media=_media([0, 20], [1, 2]))]))
    assert summary["live_tts"] is None
    assert report.live_rows(None) == []
    assert not any(label.startswith("200->first live") for label, _ in report.rows(summary))


# -- caller events and the server's receive queues --------------------------------------


def test_caller_events_are_in_the_plan_and_the_column_header():
    record = CallRecord(index=0, status=200, final_ns=T0, media=_media([0, 20], [1, 2]))
    plain = report.summarise(_result([record]))
    keying = report.summarise(attrs.evolve(_result([record]), plan=Plan(calls=1, concurrency=1, rate=10.0, hold=1.0,
                                                                          caller_events=True)))
    assert (plain["plan"]["caller_events"], keying["plan"]["caller_events"]) == (False, True)
    assert report.table([plain]).splitlines()[0].split("|")[1].strip() == "server (1 conc.)"
    assert report.table([keying]).splitlines()[0].split("|")[1].strip() == "server (1 conc., caller events)"


def test_receive_queues_in_the_summary_and_one_line():
    record = CallRecord(index=0, status=200, final_ns=T0, media=_media([0, 20], [1, 2]))
    worst = udp_queues.QueueSample(sockets=1000, non_empty=40, total_bytes=41600, largest_bytes=2496, drops=0)
    last = udp_queues.QueueSample(sockets=1000, non_empty=12, total_bytes=9984, largest_bytes=1664, drops=0)
    result = attrs.evolve(_result([record]), plan=Plan(calls=1, concurrency=500, rate=10.0, hold=1.0, caller_events=True),
                          rtp_ports=range(30000, 40000), rtp_queues_of="pid 4242", rtp_queue_samples=15,
                          rtp_queues_max=worst, rtp_queues_last=last)
    summary = report.summarise(result)
    assert summary["server_rtp_queues"] == {
        "ports": "30000-39999", "sockets_of": "pid 4242", "samples": 15,
        "max": {"sockets": 1000, "non_empty": 40, "total_bytes": 41600, "largest_bytes": 2496, "drops": 0},
        "at_end": {"sockets": 1000, "non_empty": 12, "total_bytes": 9984, "largest_bytes": 1664, "drops": 0}}
    assert report.queue_line(summary) == (
        "server (500 conc., caller events) RTP receive queues: max 2496 B in one socket, 9984 B total at the end"
        " (12 of 1000 sockets non-empty); at most 41600 B total; 0 datagrams dropped (15 looks over the steady"
        " period, ports 30000-39999, sockets of pid 4242)")


def test_receive_queues_unknown_or_not_sampled():
    record = CallRecord(index=0, status=200, final_ns=T0, media=_media([0, 20], [1, 2]))
    unknown = report.summarise(_result([record]))  # --address without --server-rtp-ports
    assert unknown["server_rtp_queues"] is None and report.queue_line(unknown) is None
    unsampled = report.summarise(attrs.evolve(_result([record]), rtp_ports=range(30000, 40000),
                                              rtp_queues_of="any process"))
    assert report.queue_line(unsampled) == ("server (1 conc.) RTP receive queues: not sampled, no steady period"
                                            " (ports 30000-39999, sockets of any process)")
