"""bin/eko-bench end to end: real pjsua2 peer, real server, real sockets on loopback."""

import json
import os
import pathlib
import re
import subprocess
import sys
import time
import urllib.request

import pytest

from server_helpers import ServerProcess, free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The benchmark as the installed project runs it, from whatever environment runs the tests.
BENCH = [sys.executable, "-m", "eko_bench"]

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture(scope="module")
def phrase_dir(tmp_path_factory):
    """greet.raw and welcome.raw rendered the way the cache renders them (espeak-ng, 8 kHz µ-law)."""
    directory = tmp_path_factory.mktemp("phrases")
    for key, text in (("greet", "Bonjour, je suis Eko."), ("welcome", "Bienvenue au service client.")):
        wav = directory / f"{key}.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-w", str(wav), text], check=True, timeout=30)
        subprocess.run(["sox", str(wav), "-r", "8000", "-c", "1", "-t", "ul", str(directory / f"{key}.raw")],
                       check=True, timeout=30)
    return directory


def bench(*arguments, timeout=120):
    return subprocess.run([*BENCH, *arguments], capture_output=True, text=True, timeout=timeout)


def test_peer_two_calls(phrase_dir):
    done = bench("--target", "peer", "--calls", "2", "--hold", "3", "--cache", str(phrase_dir), "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["target"] == "peer"
    assert run["calls"] == {"attempted": 2, "answered": 2, "failed": {}, "failure_reasons": {}}
    assert run["packets"]["lost"] == 0 and run["packets"]["duplicates"] == 0
    # 3 s of 20 ms packets per call, give or take the first and last few.
    assert 2 * 140 <= run["packets"]["received"] <= 2 * 160
    assert run["interarrival_deviation_ms"]["p50"] < 10
    assert 0 < run["latency_ms"]["invite_to_200"]["max"] < 1000
    assert 0 < run["latency_ms"]["ok_to_first_sound"]["p50"] < 500
    assert abs(run["drift_ms_per_minute_max"]) < 100
    assert run["bench"]["clock"] == "kernel SO_TIMESTAMPNS"
    assert run["server"]["rss_idle_kib"] > 1000 and run["server"]["cpu_percent"] is not None


def _spinners_of(pid):
    """Pids of eko_rtp.server.spinner processes whose parent is ``pid``."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and b"eko_rtp.server.spinner" in command:
            found.append(int(entry.name))
    return found


def test_the_bench_keeps_the_peers_cpu_awake_itself(phrase_dir):
    cpu = min(os.sched_getaffinity(0))
    process = subprocess.Popen([*BENCH, "--target", "peer", "--cache", str(phrase_dir), "--server-cpus", str(cpu),
                                "--keep-cpu-awake", "--noise-probe", "0", "--calls", "1", "--hold", "3", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last_seen = {}  # spinner pid -> (policy, CPUs) at its last look; a spinner starts as SCHED_OTHER, briefly
    deadline = time.monotonic() + 60
    while process.poll() is None and time.monotonic() < deadline:
        for pid in _spinners_of(process.pid):
            try:
                last_seen[pid] = (os.sched_getscheduler(pid), frozenset(os.sched_getaffinity(pid)))
            except OSError:
                pass  # gone between the listing and the look
        time.sleep(0.05)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert last_seen and set(last_seen.values()) == {(os.SCHED_IDLE, frozenset({cpu}))}
    report = json.loads(out)
    assert report["runs"][0]["target"] == "peer" and report["runs"][0]["calls"]["answered"] == 1
    assert _spinners_of(process.pid) == []


def test_peer_states_the_pjsua_call_cap(phrase_dir):
    done = bench("--target", "peer", "--calls", "5", "--hold", "2", "--cache", str(phrase_dir), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["runs"][0]["calls"]["answered"] == 4
    assert report["runs"][0]["calls"]["failed"] == {"486": 1}
    # (a "sent caller RTP late" note may follow on a busy machine)
    assert report["notes"][0] == ("peer: pjsua2-python is built with PJSUA_MAX_CALLS=4; calls beyond 4 at once are"
                                  " refused by pjsua (486)")


def test_refuses_a_target_outside_loopback():
    done = bench("--address", "192.0.2.1:5060", "--calls", "1")
    assert done.returncode == 2
    assert done.stderr == ("eko-bench: error: key '--address': target 192.0.2.1 is outside loopback (127.0.0.0/8, ::1);"
                           " the bench refuses to load other hosts\n")


def test_peer_needs_a_cache():
    done = bench("--target", "peer", "--calls", "1")
    assert (done.returncode, done.stderr) == (2, "eko-bench: error: key '--cache': the peer plays the cache's phrases: give --cache DIR\n")


@pytest.fixture(scope="module")
def built_cache(tmp_path_factory):
    directory = tmp_path_factory.mktemp("cache")
    done = subprocess.run([sys.executable, "-m", "eko_rtp", "cache", "build", "--cache", str(directory)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    if done.returncode != 0:
        pytest.fail(f"eko-rtp cache build failed: {done.stderr[-2000:]}")
    return directory


def test_spawned_server_two_calls(built_cache):
    done = bench("--spawn", "--cache", str(built_cache), "--calls", "2", "--hold", "3", "--json")
    if done.returncode == 2 and "exited with status" in done.stderr and (
            "ImportError" in done.stderr or "ModuleNotFoundError" in done.stderr):
        pytest.skip(f"eko-rtp serve does not start yet: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["target"] == "server"
    assert run["calls"]["answered"] == 2, run["calls"]
    assert run["packets"]["lost"] == 0
    assert 2 * 140 <= run["packets"]["received"] <= 2 * 160
    assert run["interarrival_deviation_ms"]["p50"] < 10
    assert 0 <= run["latency_ms"]["ok_to_first_sound"]["p50"] < 500
    assert run["server"]["rss_idle_kib"] > 1000
    assert run["plan"]["caller_events"] is False
    # The spawned server's range is the bench's to know: its two calls' RTP and RTCP sockets.
    queues = run["server_rtp_queues"]
    assert queues["ports"] == "30000-39999" and re.fullmatch(r"pid \d+", queues["sockets_of"])
    assert queues["samples"] >= 2 and queues["at_end"]["sockets"] == 4 and queues["at_end"]["drops"] == 0



@pytest.mark.parametrize("srtp", [None, "AES_CM_128_HMAC_SHA1_80"])
def test_spawned_server_two_calls_over_tls(built_cache, srtp):
    # The bench makes a throwaway CA, the server's certificate and config, and trusts only that CA.
    done = bench("--spawn", "--cache", str(built_cache), "--calls", "2", "--hold", "3", "--tls",
                 *(["--srtp", srtp] if srtp else []), "--noise-probe", "0", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert (run["tls"], run["srtp"]) == (True, srtp)
    assert run["calls"]["answered"] == 2, run["calls"]
    # The same figures as in clear, on the (decrypted) RTP headers: nothing lost, nothing forged.
    assert run["packets"]["lost"] == 0 and run["packets"]["srtp_dropped"] == 0
    assert 2 * 140 <= run["packets"]["received"] <= 2 * 160
    assert run["interarrival_deviation_ms"]["p50"] < 10
    # Frame 0 follows the 200 OK on the wire (tests/test_sip_tls.py checks that with a
    # stamp per raw read). Here the two calls share one connection, and a read's kernel
    # stamp is its *last* segment's: a read that completes one call's 200 and holds the
    # next call's message carries the later stamp, so the figure may dip below zero.
    assert -5 < run["latency_ms"]["ok_to_first_sound"]["p50"] < 500
    assert run["bench"]["sip_retransmissions"] == 0  # TLS is reliable: nothing is ever resent
    assert run["server"]["cpu_percent"] is not None


def _metric(port, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    assert found, f"no {name} in the server's metrics"
    return float(found.group(1))


def test_callers_keying_at_100_packets_a_second_leave_no_backlog(built_cache, tmp_path):
    # A server the test starts, so its log and metrics outlive the bench's run.
    metrics_port = free_port()
    config = tmp_path / "eko-rtp.toml"
    config.write_text(f'[service]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n', encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as server:
        done = bench("--address", f"127.0.0.1:{server.port}", "--server-pid", str(server.process.pid),
                     "--server-rtp-ports", server.rtp_ports, "--caller-events", "--calls", "3", "--hold", "3", "--json")
        assert done.returncode == 0, done.stderr
        # The server copies its counters to Prometheus once a second: a figure that stays
        # the same across a copy is final.
        received = _metric(metrics_port, "eko_rtp_packets_received_total")
        for _ in range(5):
            time.sleep(1.1)  # waiting out a copy, not timing anything
            previous, received = received, _metric(metrics_port, "eko_rtp_packets_received_total")
            if received == previous:
                break
        backlogs = _metric(metrics_port, "eko_rtp_receive_backlogs_total")
        log = server.log()
    run = json.loads(done.stdout)["runs"][0]
    assert run["plan"]["caller_events"] is True
    assert run["calls"]["answered"] == 3 and run["packets"]["lost"] == 0
    # 3 calls x 3 s at 100 packets/s: about 900, where the audio alone would be about 450.
    assert 700 <= received <= 1000, received
    assert backlogs == 0 and "fell behind" not in log
    queues = run["server_rtp_queues"]
    assert (queues["ports"], queues["sockets_of"]) == (server.rtp_ports, f"pid {server.process.pid}")
    assert queues["samples"] >= 2
    # The last look is at the end of the steady period, when the first call hangs up: its
    # RTP/RTCP pair may already be closed, so 2 or 3 calls' sockets are there.
    assert queues["at_end"]["sockets"] in (4, 6), queues["at_end"]
    assert queues["at_end"]["drops"] == 0 and queues["max"]["drops"] == 0
    # Drained every 10-30 ms: a few datagrams at most (about 0.8 KiB each), never a growing queue.
    assert queues["max"]["largest_bytes"] < 32 * 1024


def test_the_host_probe_brackets_a_pinned_run(built_cache):
    cpu = min(os.sched_getaffinity(0))
    done = bench("--spawn", "--cache", str(built_cache), "--server-cpus", str(cpu), "--calls", "1", "--hold", "2",
                 "--noise-probe", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["keep_cpu_awake"] is False
    assert [(probe["when"], probe["cpus"], probe["wakeups"]) for probe in report["host_noise"]] == [
        ("before the run", [cpu], 100), ("after the run", [cpu], 100)]
    assert report["runs"][0]["calls"]["answered"] == 1
    unpinned = bench("--spawn", "--cache", str(built_cache), "--calls", "1", "--hold", "1", "--json")
    assert unpinned.returncode == 0, unpinned.stderr
    assert json.loads(unpinned.stdout)["host_noise"] == []  # no --server-cpus: nowhere to probe


def test_keep_cpu_awake_spins_beside_the_server_and_the_probe(built_cache):
    cpu = min(os.sched_getaffinity(0))
    done = bench("--spawn", "--cache", str(built_cache), "--server-cpus", str(cpu), "--keep-cpu-awake",
                 "--calls", "1", "--hold", "2", "--noise-probe", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["keep_cpu_awake"] is True
    awake = ", the CPU kept awake as the target's is"
    assert [probe["when"] for probe in report["host_noise"]] == ["before the run" + awake, "after the run" + awake]
    assert report["runs"][0]["calls"]["answered"] == 1
    assert report["notes"][0] == (f"--keep-cpu-awake: SCHED_IDLE spinners kept CPU(s) [{cpu}] from halting (the server's"
                               " own; the bench's for the peer); the target's CPU row counts its own process only,"
                               " and its other children (the recognizer relay) have rows of their own")
    assert report["runs"][0]["steady_seconds"]  # the children were looked for
    assert report["runs"][0]["server"]["children_cpu_percent"] == {}  # the server's spinner is not one of them


@pytest.mark.parametrize("arguments", [["--spawn"], ["--address", "127.0.0.1:5060", "--server-cpus", "0"]])
def test_keep_cpu_awake_needs_a_pinned_target_the_bench_starts(arguments):
    done = bench(*arguments, "--keep-cpu-awake")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "eko-bench: error: key '--keep-cpu-awake': --keep-cpu-awake keeps the CPUs of a target the bench starts awake:"
        " give --server-cpus, and --spawn for the server (a running one takes `eko-rtp serve --keep-cpu-awake`)")


def test_a_noise_probe_out_of_bounds_is_a_user_error():
    done = bench("--spawn", "--noise-probe", "31")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "eko-bench: error: key '--noise-probe': the noise probe runs 0 to 30 s, not 31"


def _tshark_streams(capture):
    """(source port, packets, lost, max delta ms) per RTP stream, from `tshark -z rtp,streams`."""
    decode = [argument for port in range(40000, 40010, 2) for argument in ("-d", f"udp.port=={port},rtp")]
    done = subprocess.run(["tshark", "-r", str(capture), "-q", *decode, "-z", "rtp,streams"],
                          capture_output=True, text=True, timeout=60, check=True)
    streams = []
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 14 and fields[2] == "127.0.0.1" and fields[7].startswith("g711"):
            streams.append((int(fields[3]), int(fields[8]), int(fields[9]), float(fields[13])))
    return streams


def test_tshark_agrees_with_the_bench(phrase_dir, tmp_path):
    capture = tmp_path / "bench.pcap"
    log = tmp_path / "tshark.log"
    with open(log, "w") as log_file:
        tshark = subprocess.Popen(["tshark", "-i", "lo", "-f", "udp portrange 40000-40010", "-w", str(capture)],
                                  stdout=log_file, stderr=log_file)
    try:
        for _ in range(100):  # at most 10 s for the capture to start
            if "Capturing on" in log.read_text() or tshark.poll() is not None:
                break
            time.sleep(0.1)  # polling for readiness, not timing anything
        assert "Capturing on" in log.read_text(), log.read_text()
        done = bench("--target", "peer", "--calls", "2", "--hold", "3", "--cache", str(phrase_dir), "--json")
    finally:
        tshark.terminate()
        tshark.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    from_peer = [stream for stream in _tshark_streams(capture) if 40000 <= stream[0] <= 40010]
    assert len(from_peer) == 2
    assert sum(stream[1] for stream in from_peer) == run["packets"]["received"]
    assert sum(stream[2] for stream in from_peer) == run["packets"]["lost"] == 0
    # Both read kernel timestamps of the same packets: they agree to well under a tenth of a millisecond.
    assert max(stream[3] for stream in from_peer) == pytest.approx(run["max_gap_ms"], abs=0.05)


def test_both_targets_side_by_side_with_a_plot(built_cache, tmp_path):
    pytest.importorskip("matplotlib", reason="--plot needs the optional extra 'plot' (matplotlib)")
    plot = tmp_path / "bench.png"
    done = bench("--target", "both", "--spawn", "--cache", str(built_cache), "--calls", "6", "--hold", "2",
                 "--plot", str(plot))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    def cells(line):
        return [cell.strip() for cell in line.split("|")]

    assert cells(lines[0]) == ["", "server (6 conc.)", "peer (4 conc.)", "ratio"]
    assert cells(lines[3]) == ["calls answered", "6", "4", "1.50"]
    assert ("note: peer: pjsua2-python is built with PJSUA_MAX_CALLS=4; measured at 4 concurrent calls,"
            " the server at 6") in lines
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spawned_server_with_returning_callers(built_cache):
    done = bench("--spawn", "--scenario", "greeting-returning", "--cache", str(built_cache), "--calls", "2",
                 "--hold", "3", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    run = report["runs"][0]
    assert run["plan"]["scenario"] == "greeting-returning"
    assert run["calls"]["answered"] == 2 and run["packets"]["lost"] == 0
    assert run["latency_ms"]["ok_to_first_sound"]["count"] == 2
    assert [note for note in report["notes"] if "late" not in note] == []


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        (["--sizes", "1,x"], "argument --sizes: expected sizes like 1,100,500, got '1,x'"),
        (["--sizes", "0,5"], "argument --sizes: sizes must be within 1..3000, got '0,5'"),
        (["--server-cpus", "a"], "argument --server-cpus: expected a CPU list like 0 or 0,1 or 0-1, got 'a'"),
        (["--bench-rtp-ports", "5-3"], "argument --bench-rtp-ports: expected a port range LO-HI within 1024-65535, got '5-3'"),
        (["--noise-probe", "x"], "argument --noise-probe: invalid float value: 'x'"),
        (["--server-rtp-ports", "5-3"], "argument --server-rtp-ports: port range '5-3' must be LO-HI with"
                                        " 1024 <= LO < HI <= 65535"),
    ],
)
def test_bad_flags_are_usage_errors(arguments, error):
    done = bench(*arguments)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == f"eko-bench: error: {error}"


def test_running_out_of_rtp_ports_is_a_user_error(phrase_dir):
    done = bench("--target", "peer", "--cache", str(phrase_dir), "--calls", "2", "--hold", "1",
                 "--bench-rtp-ports", "20400-20402")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        "eko-bench: error: key '--bench-rtp-ports': no free RTP/RTCP port pair on 127.0.0.1 in 20400-20402")


def _live_run(built_cache, scenario, *extra):
    done = bench("--spawn", "--scenario", scenario, "--cache", str(built_cache), "--calls", "3", "--hold", "3",
                 "--json", *extra)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    run = report["runs"][0]
    assert run["plan"]["scenario"] == scenario
    assert run["calls"]["answered"] == 3 and run["packets"]["lost"] == 0
    return run["live_tts"], report["notes"]


def test_spawned_server_speaks_live_tts(built_cache):
    live, _ = _live_run(built_cache, "live-tts")
    assert live["first_byte_ms"] == 300.0 and live["calls_without_live"] == 0
    first_live = live["ok_to_first_live_ms"]
    assert first_live["count"] == 3
    # No earlier than the endpoint's first byte; within 2 s more on a loaded CI machine.
    assert 300.0 <= first_live["p50"] <= first_live["max"] < 300.0 + 2000.0


def test_spawned_server_joins_filler_and_live_audio(built_cache):
    live, _ = _live_run(built_cache, "hybrid")
    assert live["calls_joined"] == 3 and live["calls_with_gap"] == 0 and live["gap_frames_max"] == 0
    assert live["filler_tail_frames"] >= 0 and live["ok_to_first_live_ms"]["p50"] >= 300.0


def test_hybrid_reports_the_gap_when_the_endpoint_is_slower_than_the_filler(built_cache):
    # The filler lasts about 1.5 s; a 2.5 s first byte leaves about 1 s of silence before the live audio.
    filler_frames = (built_cache / "filler_one_moment.raw").stat().st_size // 160
    done = bench("--spawn", "--scenario", "hybrid", "--cache", str(built_cache), "--calls", "1", "--hold", "5",
                 "--tts-first-byte-ms", "2500", "--json")
    assert done.returncode == 0, done.stderr
    live = json.loads(done.stdout)["runs"][0]["live_tts"]
    assert live["calls_with_gap"] == 1
    # 200 -> first live frame, in frames, less the filler: the gap, give or take the clock's frame and slack.
    expected = round(live["ok_to_first_live_ms"]["p50"] / 20) - filler_frames
    assert abs(live["gap_frames_max"] - expected) <= 2, (live, filler_frames)


def test_spawned_server_mixes_live_and_cached_calls(built_cache):
    done = bench("--spawn", "--scenario", "mixed", "--cache", str(built_cache), "--calls", "6", "--hold", "3", "--json")
    assert done.returncode == 0, done.stderr
    run = json.loads(done.stdout)["runs"][0]
    live = run["live_tts"]
    assert run["calls"]["answered"] == 6 and run["packets"]["lost"] == 0
    assert live["calls_live"] + live["calls_cached"] == 6 and live["calls_without_live"] == live["calls_cached"]
    assert live["ok_to_first_live_ms"]["count"] == live["calls_live"]
    if live["calls_cached"]:
        assert live["cached_calls_deviation_steady_ms"]["count"] > 0


def test_live_scenarios_are_server_only():
    done = bench("--target", "peer", "--scenario", "live-tts", "--cache", "/nonexistent")
    assert (done.returncode, done.stderr) == (
        2, "eko-bench: error: key '--target': live-tts measures the server's live TTS; the peer has none\n")


def test_bin_eko_bench_is_the_same_command():
    done = subprocess.run([str(ROOT / "bin" / "eko-bench"), "--help"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable})
    assert done.returncode == 0 and done.stdout.startswith("usage: eko-bench ")
