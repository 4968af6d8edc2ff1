"""Several workers on one box: the plan (CPU, ports, cache per worker), the rolling restart's
rules with fakes, the front's dispatcher list, and two real workers behind a real Kamailio
taking 200 calls while they are restarted one at a time."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eko_rtp.config import HostPort, load_config
from eko_rtp.errors import UserError
from eko_rtp.service.front import dispatcher_list, parse_dispatcher_flags
from eko_rtp.service.rolling import Operations, RollingSettings, WorkerRestarted, rolling_restart
from eko_rtp.service.sip_probe import probe_options
from eko_rtp.service.workers import Worker, WorkerSettings, plan_workers, worker_config
from server_helpers import REPO, ServerProcess, free_port

LOOPBACK = "127.0.0.1"


def settings(**changes) -> WorkerSettings:
    values = dict(sip_listen=HostPort(host=LOOPBACK, port=5070), tls_port=None, rtp_ports=(20000, 29999),
                  cpus=(2, 3), dynamic_cache_dir="/var/cache/eko-rtp/dynamic",
                  metrics_listen=HostPort(host=LOOPBACK, port=9464), source="eko-rtp.toml")
    values.update(changes)
    return WorkerSettings(**values)


def summary(worker: Worker) -> tuple:
    return (worker.index, worker.cpu, str(worker.sip), worker.tls_port, worker.rtp_ports, worker.dynamic_cache_dir,
            None if worker.metrics is None else str(worker.metrics))


# -- the plan --------------------------------------------------------------------------

PLANS = [
    ("two workers split everything", settings(), 2, [
        (0, 2, "127.0.0.1:5070", None, (20000, 24999), "/var/cache/eko-rtp/dynamic/worker-0", "127.0.0.1:9464"),
        (1, 3, "127.0.0.1:5071", None, (25000, 29999), "/var/cache/eko-rtp/dynamic/worker-1", "127.0.0.1:9465"),
    ]),
    ("one worker, no CPUs given, metrics off", settings(cpus=(), metrics_listen=None), 1, [
        (0, None, "127.0.0.1:5070", None, (20000, 29999), "/var/cache/eko-rtp/dynamic/worker-0", None),
    ]),
    ("an odd pair left over stays unused; TLS ports count up too",
     settings(rtp_ports=(30000, 30011), tls_port=5080, cpus=(0, 1, 5), dynamic_cache_dir="cache/dynamic/"), 3, [
         (0, 0, "127.0.0.1:5070", 5080, (30000, 30003), "cache/dynamic/worker-0", "127.0.0.1:9464"),
         (1, 1, "127.0.0.1:5071", 5081, (30004, 30007), "cache/dynamic/worker-1", "127.0.0.1:9465"),
         (2, 5, "127.0.0.1:5072", 5082, (30008, 30011), "cache/dynamic/worker-2", "127.0.0.1:9466"),
     ]),
    ("more CPUs than workers: the first ones", settings(cpus=(4, 5, 6, 7)), 2, [
        (0, 4, "127.0.0.1:5070", None, (20000, 24999), "/var/cache/eko-rtp/dynamic/worker-0", "127.0.0.1:9464"),
        (1, 5, "127.0.0.1:5071", None, (25000, 29999), "/var/cache/eko-rtp/dynamic/worker-1", "127.0.0.1:9465"),
    ]),
    ("metrics on any port stay on any port", settings(metrics_listen=HostPort(host=LOOPBACK, port=0)), 2, [
        (0, 2, "127.0.0.1:5070", None, (20000, 24999), "/var/cache/eko-rtp/dynamic/worker-0", "127.0.0.1:0"),
        (1, 3, "127.0.0.1:5071", None, (25000, 29999), "/var/cache/eko-rtp/dynamic/worker-1", "127.0.0.1:0"),
    ]),
]


@pytest.mark.parametrize("given, count, expected", [plan[1:] for plan in PLANS], ids=[plan[0] for plan in PLANS])
def test_the_plan_gives_each_worker_its_own_share(given, count, expected):
    assert [summary(worker) for worker in plan_workers(given, count)] == expected


ERRORS = [
    ("no workers", settings(), 0, "key '--workers': the number of workers must be within 1 to 64, got 0"),
    ("more workers than CPUs", settings(), 3,
     "eko-rtp.toml, key 'media.cpus': 3 workers need 3 CPUs, one each; it lists 2 (2,3)"),
    ("no CPUs for several workers", settings(cpus=()), 2,
     "eko-rtp.toml, key 'media.cpus': 2 workers need 2 CPUs listed here, one each (e.g. \"0-1\"); none is given"),
    ("too few RTP ports", settings(rtp_ports=(20000, 20001)), 2,
     "eko-rtp.toml, key 'media.rtp_ports': 20000-20001 holds 1 RTP/RTCP port pair(s), fewer than one per worker"
     " for 2 workers: widen it"),
    ("SIP port 0", settings(sip_listen=HostPort(host=LOOPBACK, port=0)), 2,
     "eko-rtp.toml, key 'sip.listen': workers need a fixed SIP port (the front's dispatcher list names each):"
     " got port 0"),
    ("a SIP port inside the RTP range", settings(sip_listen=HostPort(host=LOOPBACK, port=19999)), 2,
     "eko-rtp.toml, key 'sip.listen': worker 1's SIP port 20000 is inside media.rtp_ports 20000-29999: move one"
     " or the other"),
    ("SIP ports running into the metrics port", settings(metrics_listen=HostPort(host=LOOPBACK, port=5071)), 2,
     "eko-rtp.toml, key 'sip.listen': worker 1's SIP port 5071 is also worker 0's metrics port 5071 (2 workers"
     " take consecutive ports from each configured one): space them further apart"),
    ("TLS ports running into the SIP ports", settings(tls_port=5071), 2,
     "eko-rtp.toml, key 'sip.listen': worker 1's SIP port 5071 is also worker 0's TLS port 5071 (2 workers take"
     " consecutive ports from each configured one): space them further apart"),
    ("ports beyond 65535", settings(sip_listen=HostPort(host=LOOPBACK, port=65535), metrics_listen=None), 2,
     "eko-rtp.toml, key 'sip.listen': worker 1's SIP port 65536 is beyond 65535 (2 workers count up from the"
     " configured port): lower it"),
]


@pytest.mark.parametrize("given, count, message", [error[1:] for error in ERRORS], ids=[error[0] for error in ERRORS])
def test_a_plan_that_cannot_work_names_the_key_to_change(given, count, message):
    with pytest.raises(UserError) as raised:
        plan_workers(given, count)
    assert str(raised.value) == message


def test_a_worker_runs_the_config_with_its_share(tmp_path):
    config_file = tmp_path / "eko-rtp.toml"
    config_file.write_text('[sip]\nlisten = "127.0.0.1:5070"\n[media]\nrtp_ports = "40000-40399"\ncpus = "0"\n'
                           '[tts]\ndynamic_cache_dir = "/var/cache/eko-rtp/dynamic"\n'
                           '[service]\nmetrics_listen = "127.0.0.1:9464"\n', encoding="utf-8")
    config = worker_config(load_config(config_file), index=0, count=1)
    assert [config[key] for key in ("sip.listen", "media.rtp_ports", "media.cpus", "tts.dynamic_cache_dir",
                                    "service.metrics_listen")] == [
        "127.0.0.1:5070", "40000-40399", "0", "/var/cache/eko-rtp/dynamic/worker-0", "127.0.0.1:9464"]
    with pytest.raises(UserError) as raised:
        worker_config(load_config(config_file), index=1, count=1)
    assert str(raised.value) == "key '--worker': worker 1 does not exist: 1 worker(s) are numbered 0 to 0"


def test_serve_wants_worker_and_workers_together():
    completed = subprocess.run([sys.executable, "-m", "eko_rtp", "serve", "--workers", "2"],
                               capture_output=True, text=True, cwd=REPO, timeout=60)
    assert (completed.returncode, completed.stderr.splitlines()[-1]) == (
        2, "eko-rtp: error: key '--worker': --worker and --workers go together")


# -- the front's list ------------------------------------------------------------------

def test_the_dispatcher_list_names_every_worker_in_set_1():
    text = dispatcher_list(plan_workers(settings(), 2))
    assert [line for line in text.splitlines() if not line.startswith("#")] == [
        "1 sip:127.0.0.1:5070 0 0", "1 sip:127.0.0.1:5071 0 0"]


def test_the_front_flags_are_read_from_kamcmd():
    output = ("{\n\tNRSETS: 1\n\tRECORDS: {\n\t\tSET: {\n\t\t\tID: 1\n\t\t\tTARGETS: {\n\t\t\t\tDEST: {\n"
              "\t\t\t\t\tURI: sip:127.0.0.1:5070\n\t\t\t\t\tFLAGS: AP\n\t\t\t\t\tPRIORITY: 0\n\t\t\t\t}\n"
              "\t\t\t\tDEST: {\n\t\t\t\t\tURI: sip:127.0.0.1:5071\n\t\t\t\t\tFLAGS: IP\n\t\t\t\t}\n")
    assert parse_dispatcher_flags(output) == {"sip:127.0.0.1:5070": "AP", "sip:127.0.0.1:5071": "IP"}


# -- the rolling restart's rules, with fakes ---------------------------------------------

class FakeBox:
    """Workers that take ``restart_seconds`` to drain and restart and ``ready_seconds`` more to answer 200,
    and a front that takes them back ``rotation_seconds`` after that; time is a number moved by sleep."""

    def __init__(self, workers, *, restart_seconds=3.0, ready_seconds=1.0, rotation_seconds=0.5, down=()):
        self.time = 100.0
        self.workers = workers
        self.restart_seconds, self.ready_seconds, self.rotation_seconds = restart_seconds, ready_seconds, rotation_seconds
        self.back_at = {worker.index: (None if worker.index in down else -1e9) for worker in workers}
        self.events = []

    def restart(self, worker):
        assert any(self.healthy(other) for other in self.workers if other is not worker) or len(self.workers) == 1
        self.events.append(("restart", worker.index, self.time))
        self.time += self.restart_seconds
        self.back_at[worker.index] = self.time + self.ready_seconds

    def healthy(self, worker):
        back = self.back_at[worker.index]
        return back is not None and self.time >= back

    def probe(self, worker):
        return 200 if self.healthy(worker) else None

    def in_rotation(self, worker):
        return self.healthy(worker) and self.time >= self.back_at[worker.index] + self.rotation_seconds

    def sleep(self, seconds):
        self.time += seconds

    def operations(self, *, front=True):
        return Operations(restart=self.restart, probe=self.probe, in_rotation=self.in_rotation if front else None,
                          now=lambda: self.time, sleep=self.sleep, report=self.events.append)


def test_workers_are_restarted_one_at_a_time_each_back_in_rotation_before_the_next():
    box = FakeBox(plan_workers(settings(), 2))
    done = rolling_restart(box.workers, box.operations(), RollingSettings(poll_interval=0.25))
    assert done == [WorkerRestarted(index=0, restart=3.0, healthy=1.0, in_rotation=0.5),
                    WorkerRestarted(index=1, restart=3.0, healthy=1.0, in_rotation=0.5)]
    assert [event for event in box.events if isinstance(event, tuple)] == [("restart", 0, 100.0),
                                                                            ("restart", 1, 104.5)]
    assert "worker 0: back in 4.5 s (drain and restart 3.0 s, OPTIONS 200 after 1.0 s, in rotation after 0.5 s)" \
        in box.events


def test_without_a_front_to_ask_the_restart_waits_the_settle_time():
    box = FakeBox(plan_workers(settings(), 2))
    done = rolling_restart(box.workers, box.operations(front=False), RollingSettings(settle=2.0, poll_interval=0.25))
    assert [(step.index, step.in_rotation) for step in done] == [(0, 2.0), (1, 2.0)]


def test_a_worker_already_down_stops_the_restart_before_anything_is_touched():
    box = FakeBox(plan_workers(settings(), 2), down={1})
    with pytest.raises(UserError) as raised:
        rolling_restart(box.workers, box.operations())
    assert str(raised.value) == (
        "worker 1 (127.0.0.1:5071) gets no answer to OPTIONS: restarting worker 0 now could leave no worker taking"
        " calls; bring it back first (systemctl status eko-rtp@1.service), then run the rolling restart again")
    assert not [event for event in box.events if isinstance(event, tuple)]


STUCK = [
    ("a worker that does not come back", dict(ready_seconds=1000.0), RollingSettings(healthy_timeout=10.0),
     "worker 0 (127.0.0.1:5070) did not answer OPTIONS with 200 within 10 s of its restart (systemctl status"
     " eko-rtp@0.service); the workers after it were not restarted"),
    ("a front that does not take it back", dict(rotation_seconds=1000.0), RollingSettings(rotation_timeout=5.0),
     "the front did not take worker 0 (sip:127.0.0.1:5070) back into its rotation within 5 s of its OPTIONS 200"
     " (kamcmd dispatcher.list); the workers after it were not restarted"),
]


@pytest.mark.parametrize("box_timing, rolling, message", [case[1:] for case in STUCK], ids=[case[0] for case in STUCK])
def test_a_worker_stuck_after_its_restart_stops_the_restart_there(box_timing, rolling, message):
    box = FakeBox(plan_workers(settings(), 2), **box_timing)
    with pytest.raises(UserError) as raised:
        rolling_restart(box.workers, box.operations(), rolling)
    assert str(raised.value) == message
    assert [event for event in box.events if isinstance(event, tuple)] == [("restart", 0, 100.0)]


def test_the_options_probe_gets_the_worker_s_answer_or_nothing(built_cache):
    assert probe_options(HostPort(host=LOOPBACK, port=free_port()), timeout=0.5) is None
    with ServerProcess(built_cache) as server:
        assert probe_options(HostPort(host=LOOPBACK, port=server.port)) == 200
        server.process.send_signal(signal.SIGTERM)  # no calls: it drains and exits at once
        server.process.wait(10)


# -- two real workers behind a real Kamailio ---------------------------------------------

from test_kamailio import Kamailio, needs_kamailio  # noqa: E402  (after the pure tests: one import per concern)


def consecutive_free_ports(count: int, *, avoid: range = range(0)) -> int:
    """A port P with P..P+count-1 free on loopback (UDP and TCP), none of them in ``avoid``."""
    import socket

    for _ in range(50):
        base = free_port()
        if base + count > 65535 or any(port in avoid for port in range(base, base + count)):
            continue
        held = []
        try:
            for port in range(base, base + count):
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    sock = socket.socket(socket.AF_INET, kind)
                    held.append(sock)
                    sock.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def plan_two_workers(directory: Path, *, rtp_low: int) -> tuple[Path, tuple[Worker, ...]]:
    """A config in ``directory`` for two workers on the first two CPUs we may use, SIP on two free
    consecutive ports, RTP from ``rtp_low`` (800 ports); the file and its plan."""
    cpus = sorted(os.sched_getaffinity(0))[:2]
    # The kernel's free ports and the RTP range can meet: the planner refuses a SIP port inside it.
    base = consecutive_free_ports(2, avoid=range(rtp_low, rtp_low + 800))
    config_file = directory / "eko-rtp.toml"
    config_file.write_text(
        f'[sip]\nlisten = "{LOOPBACK}:{base}"\n[media]\nrtp_ports = "{rtp_low}-{rtp_low + 799}"\n'
        f'cpus = "{cpus[0]},{cpus[1]}"\n[tts]\ndynamic_cache_dir = "{directory / "dynamic"}"\n', encoding="utf-8")
    return config_file, plan_workers(WorkerSettings.from_config(load_config(config_file)), 2)


class Workers:
    """The planned workers as ``eko-rtp serve --worker I --workers N`` processes, pinned like CPUAffinity= would."""

    def __init__(self, cache: Path, config_file: Path, workers: tuple[Worker, ...]):
        self.cache, self.config_file, self.workers = cache, config_file, workers
        self.processes: dict[int, ServerProcess] = {}
        self.logs: list[str] = []  # of the processes stopped

    def start(self, worker: Worker) -> ServerProcess:
        low, high = worker.rtp_ports
        # ServerProcess passes --listen and --rtp-ports of its own; the plan's are given again (the last wins).
        process = ServerProcess(self.cache, "--config", str(self.config_file), "--workers", str(len(self.workers)),
                                "--worker", str(worker.index), "--rtp-ports", f"{low}-{high}", port=worker.sip.port,
                                cpus={worker.cpu})
        self.processes[worker.index] = process.__enter__()
        return process

    def restart(self, worker: Worker) -> None:
        """What systemctl restart does: SIGTERM (drain), wait for the exit, start, wait until ready."""
        process = self.processes.pop(worker.index)
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0, process.log()[-3000:]
        process.stop()
        self.logs.append(process.log())
        self.start(worker)

    def stop(self) -> None:
        for process in self.processes.values():
            process.stop()
            self.logs.append(process.log())
        self.processes.clear()


@needs_kamailio
@pytest.mark.interop
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two CPUs")
def test_two_workers_behind_the_front_take_200_calls_through_a_rolling_restart(built_cache, tmp_path):
    # RTP apart from the bench's 10000-19999 and other tests' 30000-60000 draws.
    config_file, workers = plan_two_workers(tmp_path, rtp_low=41000 + 2 * (os.getpid() % 1000) * 2)
    box = Workers(built_cache, config_file, workers)
    bench_done: dict = {}
    try:
        for worker in workers:
            box.start(worker)
        # The front as a box runs it for its workers: Call-ID hash, probes every second.
        with Kamailio(tmp_path, [worker.sip.port for worker in workers], ping_interval=1, fr_timer_ms=1000,
                      defines={"DS_ALGORITHM": '"0"'}) as front:
            written = (tmp_path / "dispatcher.list").read_text(encoding="utf-8").splitlines()
            assert written == [line for line in dispatcher_list(workers).splitlines() if not line.startswith("#")]

            def run_bench():
                bench_done["result"] = subprocess.run(
                    [str(REPO / "bin" / "eko-bench"), "--address", f"{LOOPBACK}:{front.port}",
                     "--calls", "200", "--rate", "20", "--hold", "3", "--json"],
                    capture_output=True, text=True, cwd=REPO, timeout=100)

            bench = threading.Thread(target=run_bench)
            bench.start()
            # Both workers are taking calls before the first one goes.
            deadline = time.monotonic() + 20
            while not all(re.search(r"INVITE received", process.log()) for process in box.processes.values()):
                assert time.monotonic() < deadline, f"the calls did not reach both workers: {bench_done}"
                time.sleep(0.1)
            operations = Operations(
                restart=box.restart, probe=lambda worker: probe_options(worker.sip),
                in_rotation=lambda worker: front.dispatcher_flags().get(worker.sip_uri, "").startswith("A"),
                now=time.monotonic, sleep=time.sleep)
            started = time.monotonic()
            steps = rolling_restart(workers, operations, RollingSettings(healthy_timeout=20, rotation_timeout=10,
                                                                         poll_interval=0.1))
            rolling_seconds = time.monotonic() - started
            bench.join(110)
            assert not bench.is_alive(), "the bench did not finish"
            front_log = front.log()
    finally:
        box.stop()

    completed = bench_done["result"]
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = json.loads(completed.stdout)["runs"][0]
    assert [step.index for step in steps] == [0, 1]
    assert rolling_seconds < 40, steps
    # Every call answered (none refused by the front: no 503 reached the caller), every packet there.
    assert run["calls"] == {"attempted": 200, "answered": 200, "failed": {}, "failure_reasons": {}}, run["calls"]
    assert run["packets"]["lost"] == 0 and run["packets"]["received"] >= 200 * 140, run["packets"]
    # The calls were spread over both workers, before and after their restarts (4 processes).
    invites = [len(re.findall(r"INVITE received", log)) for log in box.logs]
    assert len(invites) == 4 and all(count > 0 for count in invites[:2]), invites
    assert sum(invites) >= 200, invites
    assert "No Eko RTP Server Available" not in front_log


@needs_kamailio
@pytest.mark.interop
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="two workers need two CPUs")
def test_the_bench_through_the_front_reports_each_workers_cpu(built_cache, tmp_path):
    """What docs/BENCHMARKS.md's capacity of a box is measured with: the bench at the front,
    each worker's CPU over the steady period (--worker-pid) and their sum."""
    config_file, workers = plan_two_workers(tmp_path, rtp_low=43000 + 2 * (os.getpid() % 1000) * 2)
    box = Workers(built_cache, config_file, workers)
    try:
        for worker in workers:
            box.start(worker)
        pids = [box.processes[worker.index].process.pid for worker in workers]
        with Kamailio(tmp_path, [worker.sip.port for worker in workers], ping_interval=1,
                      defines={"DS_ALGORITHM": '"0"'}) as front:
            completed = subprocess.run(
                [str(REPO / "bin" / "eko-bench"), "--address", f"{LOOPBACK}:{front.port}",
                 *(argument for pid in pids for argument in ("--worker-pid", str(pid))),
                 "--calls", "40", "--rate", "20", "--hold", "4", "--json"],
                capture_output=True, text=True, cwd=REPO, timeout=100)
    finally:
        box.stop()
    assert completed.returncode == 0, completed.stderr[-3000:]
    run = json.loads(completed.stdout)["runs"][0]
    assert run["calls"]["answered"] == 40 and run["packets"]["lost"] == 0, (run["calls"], run["packets"])
    # Each worker took part of the calls (the Call-ID hash), so each spent CPU on them.
    invites = [len(re.findall(r"INVITE received", log)) for log in box.logs]
    assert len(invites) == 2 and all(count > 0 for count in invites) and sum(invites) == 40, invites
    each = run["workers"]["cpu_percent"]
    assert set(each) == {str(pid) for pid in pids}
    assert all(value is not None and 0 < value < 100 for value in each.values()), each
    assert run["workers"]["cpu_percent_sum"] == pytest.approx(sum(each.values()))
    assert run["server"] is None  # the front's own process is not a server the bench samples
