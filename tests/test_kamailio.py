"""Kamailio with sip/kamailio/kamailio.cfg in front of real Eko RTP servers, all on loopback.

Checks what sip/README.md and sip/trunk/ promise about the front: calls are spread
over the nodes and answered by them, RTP goes straight from the node to the caller,
in-dialog requests go through the front to the node that answered, a draining node
(SIGTERM: 503 to OPTIONS and INVITE) leaves the rotation while its call in progress
finishes, and an INVITE that a node answers 503 or never answers is offered to the
next node.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

from eko_bench import uac
from raw_caller import place_call
from server_helpers import REPO, ServerProcess, free_port, free_sipp_media_port

pytestmark = pytest.mark.interop

CONFIG = REPO / "sip" / "kamailio" / "kamailio.cfg"
RECORD_ROUTE_SCENARIO = REPO / "sip" / "kamailio" / "call_via_proxy.xml"
TRUNK_SCENARIO = REPO / "sip" / "trunk" / "trunk_call.xml"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
KAMAILIO = shutil.which("kamailio", path=SBIN_PATH)
KAMCMD = shutil.which("kamcmd", path=SBIN_PATH)

needs_kamailio = pytest.mark.skipif(
    KAMAILIO is None or KAMCMD is None,
    reason="kamailio/kamcmd not installed (bin/eko-dev test installs the Debian package kamailio)",
)


class Kamailio(ServerProcess):
    """kamailio in the foreground (-DD -E) with the repository's config and test defines.

    Its stderr is collected, and it is stopped, the way ServerProcess does it for the server.
    """

    def __init__(self, directory: Path, nodes: list[int], *, ping_interval: int, fr_timer_ms: int = 1000,
                 ready_flags: str | None = None, trunks: tuple[str, ...] = ("127.0.0.1",),
                 defines: dict[str, str | int] | None = None, config: Path = CONFIG):
        """``trunks``: the addresses of group 1 of the address list (any port); the callers
        of these tests bind 127.0.0.1. ``defines``: further ``-A NAME=value`` (TRUNK_RATE ...).
        ``config``: another kamailio.cfg (an older one, to measure a change against)."""
        self.directory = directory
        self.port = free_port()
        self.address = ("127.0.0.1", self.port)
        self.nodes = [f"sip:127.0.0.1:{port}" for port in nodes]
        # Ready when every node shows these: "A" active; "P" probed with OPTIONS, "X" not
        # probed (ping interval 0).
        self.ready_flags = ready_flags or ("AP" if ping_interval else "AX")
        self.control = f"unix:{directory / 'kamailio_ctl'}"
        dispatcher_list = directory / "dispatcher.list"
        dispatcher_list.write_text("".join(f"1 {uri} 0 0\n" for uri in self.nodes), encoding="utf-8")
        address_list = directory / "address.list"
        address_list.write_text("".join(f"1 {address} 32 0 trunk-{address}\n" for address in trunks), encoding="utf-8")
        self.command = [
            KAMAILIO, "-DD", "-E", "-f", str(config),
            "-Y", str(directory), "-P", str(directory / "kamailio.pid"),
            "-A", f"LISTEN=udp:127.0.0.1:{self.port}",
            "-A", f'DISPATCHER_LIST="{dispatcher_list}"',
            "-A", f'ADDRESS_LIST="{address_list}"',
            "-A", f'CTL_SOCKET="{self.control}"',
            "-A", f"DS_PING_INTERVAL={ping_interval}",
            "-A", f"FR_TIMER={fr_timer_ms}",
            "-A", "CHILDREN=2",
            *(argument for name, value in (defines or {}).items() for argument in ("-A", f"{name}={value}")),
        ]
        self.process = subprocess.Popen(self.command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def script_lines(self, pattern: str) -> list[re.Match]:
        """Matches of ``pattern`` in the config's own xlog lines (those tagged <script>)."""
        regex = re.compile(pattern)
        with self._lock:
            return [m for line in self.lines if "<script>" in line for m in [regex.search(line)] if m]

    def wait_for_script_lines(self, pattern: str, count: int = 1, timeout: float = 5.0) -> list[re.Match]:
        """``script_lines(pattern)`` once it has ``count`` matches (or at ``timeout``): a line
        Kamailio logs while it answers can reach us after the answer does."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.script_lines(pattern)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.02)

    def dispatcher_flags(self) -> dict[str, str]:
        """URI -> FLAGS of each node, as `kamcmd dispatcher.list` reports them (e.g. "AP", "IP")."""
        completed = subprocess.run([KAMCMD, "-s", self.control, "dispatcher.list"],
                                   capture_output=True, text=True, timeout=5)
        if completed.returncode != 0:
            return {}
        return dict(re.findall(r"URI: (\S+)\s+FLAGS: (\S+)", completed.stdout))

    def wait_for_flags(self, expected: dict[str, str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        flags: dict[str, str] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"kamailio exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            flags = self.dispatcher_flags()
            if flags == expected:
                return
            time.sleep(0.1)
        raise AssertionError(f"dispatcher flags {flags}, expected {expected} within {timeout} s:\n{self.log()[-4000:]}")

    def __enter__(self) -> "Kamailio":
        try:
            self.wait_for_flags({uri: self.ready_flags for uri in self.nodes}, timeout=10)
        except BaseException:
            self.stop()  # __exit__ does not run when __enter__ raises
            raise
        return self


@contextmanager
def two_nodes_behind_a_front(cache: Path, directory: Path, *, ping_interval: int):
    """Two Eko RTP servers and the front dispatching to them; yields (a, b, front)."""
    with ServerProcess(cache) as a, ServerProcess(cache) as b, \
            Kamailio(directory, [a.port, b.port], ping_interval=ping_interval) as front:
        yield a, b, front


def invites_from(server: ServerProcess, front: Kamailio) -> list[str]:
    """Call-IDs of the INVITEs ``server`` received, all of which must have come from ``front``."""
    found = re.findall(r"\[call=(\S+)\]: INVITE received from (\S+) at", server.log())
    assert all(source == f"127.0.0.1:{front.port}" for _, source in found), found
    return [call_id for call_id, _ in found]


def options(target: tuple[str, int]) -> uac.Message:
    """One OPTIONS to ``target``; its final response."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        endpoint = uac.Endpoint(local_host="127.0.0.1", local_port=sock.getsockname()[1],
                                target_host=target[0], target_port=target[1])
        sock.sendto(uac.options(endpoint, call_id=secrets.token_hex(8), branch=uac.new_branch()), target)
        sock.settimeout(5)
        for _ in range(5):
            response = uac.parse_message_untrusted(sock.recvfrom(65535)[0])
            if response.status >= 200:
                return response
    raise AssertionError(f"no final response to OPTIONS from {target}")


def drain_the_node_of_a_call(pool: ThreadPoolExecutor, front: Kamailio, a: ServerProcess, b: ServerProcess,
                             *, hold: float):
    """Place a call of ``hold`` seconds through ``front`` (in ``pool``), SIGTERM the node that
    took it; return the call's future, the draining node and the other one."""
    in_progress = pool.submit(place_call, front.address, hold=hold, timeout=20)
    deadline = time.monotonic() + 5
    while not (invites_from(a, front) or invites_from(b, front)) and time.monotonic() < deadline:
        time.sleep(0.02)
    draining, staying = (a, b) if invites_from(a, front) else (b, a)
    assert len(invites_from(draining, front)) == 1 and invites_from(staying, front) == []
    draining.process.send_signal(signal.SIGTERM)
    draining.wait_for_log(r"draining: 1 call\(s\) in progress")
    return in_progress, draining, staying


def assert_one_failover(front: Kamailio, flags: dict[str, str], *, failed_port: int, status: str, next_port: int):
    """The front logged exactly one INVITE failure, on ``failed_port`` with ``status``, retried the
    INVITE on ``next_port``, and ``flags`` (kamcmd) show the failed node inactive, still not probed."""
    failed_uri, next_uri = f"sip:127.0.0.1:{failed_port}", f"sip:127.0.0.1:{next_port}"
    failed = front.script_lines(r"node (\S+) failed the INVITE \((\d+)\); marked inactive")
    assert [(m.group(1), m.group(2)) for m in failed] == [(failed_uri, status)]
    assert [m.group(1) for m in front.script_lines(r"new call to (\S+) \(failover\)")] == [next_uri]
    assert flags == {failed_uri: "IP", next_uri: "AX"}


def assert_answered_with_media(record) -> None:
    # [100 INVITE, 200 INVITE, 200 BYE]: a second 200 for the INVITE would mean the
    # ACK never reached the node (it retransmits the 200 after T1 = 0.5 s).
    assert record.status == 200 and record.responses == [100, 200, 200], record.responses
    assert not record.server_hung_up
    # The front carries no media: every packet came from the node's RTP port. A 1 s
    # hold is 50 frames of 20 ms; allow for the first frame's timing.
    assert len(record.packets) >= 45, len(record.packets)


def run_sipp(scenario: Path, target: tuple[str, int], directory: Path, *, local_host: str = "127.0.0.1") -> str:
    """Run one call of ``scenario`` from ``local_host`` against ``target``; an explanation if it
    failed, else ""."""
    sipp = shutil.which("sipp")
    assert sipp, "sipp is not installed (apt-get install sip-tester)"
    completed = subprocess.run(
        [sipp, "-sf", str(scenario), "-m", "1", "-l", "1", "-nostdin",
         "-i", local_host, "-p", str(free_port()), "-mp", str(free_sipp_media_port()),
         "-timeout", "20s", "-timeout_error", "-trace_err", f"{target[0]}:{target[1]}"],
        capture_output=True, text=True, timeout=35, cwd=directory,
    )
    if completed.returncode == 0:
        return ""
    errors = "\n".join(p.read_text(errors="replace")[-3000:] for p in directory.glob("*errors.log"))
    return f"sipp exit {completed.returncode}\n{completed.stdout[-2000:]}\n{errors}"


@needs_kamailio
def test_the_config_passes_kamailio_syntax_check(tmp_path):
    completed = subprocess.run(
        [KAMAILIO, "-c", "-f", str(CONFIG), "-A", f'DISPATCHER_LIST="{REPO / "sip" / "kamailio" / "dispatcher.list"}"',
         "-A", f'ADDRESS_LIST="{REPO / "sip" / "kamailio" / "address.list"}"'],
        capture_output=True, text=True, timeout=30,
    )
    assert completed.returncode == 0, completed.stderr
    assert "config file ok, exiting..." in completed.stderr.lower(), completed.stderr


@needs_kamailio
def test_calls_are_spread_over_the_nodes_and_end_through_the_front(built_cache, tmp_path):
    with two_nodes_behind_a_front(built_cache, tmp_path, ping_interval=1) as (a, b, front):
        first = place_call(front.address, hold=1.0, timeout=10)
        second = place_call(front.address, hold=1.0, timeout=10)
        a.wait_for_log(r"ended \(remote_bye\)")
        b.wait_for_log(r"ended \(remote_bye\)")
        on_a, on_b = invites_from(a, front), invites_from(b, front)
    assert_answered_with_media(first)
    assert_answered_with_media(second)
    assert len(on_a) == 1 and len(on_b) == 1, (on_a, on_b)  # round robin: one call each
    # raw_caller ignores Record-Route; the front relays its ACK and BYE to the node.
    relayed = front.script_lines(r"in-dialog (ACK|BYE) from \S+ without Route; relaying to node (\S+)")
    assert sorted(m.group(1) for m in relayed) == ["ACK", "ACK", "BYE", "BYE"], relayed


@needs_kamailio
def test_a_caller_that_follows_record_route_is_loose_routed_to_its_node(built_cache, tmp_path):
    with two_nodes_behind_a_front(built_cache, tmp_path, ping_interval=1) as (a, b, front):
        failure = run_sipp(RECORD_ROUTE_SCENARIO, front.address, tmp_path)
        assert not failure, f"{failure}\n{front.log()[-3000:]}"
        served = [server for server in (a, b) if invites_from(server, front)]
        assert len(served) == 1
        served[0].wait_for_log(r"ended \(remote_bye\)")
    # Its ACK and BYE carried the front's Route header and went to the node that answered.
    routed = front.script_lines(r"in-dialog (\S+) from \S+ routed to (\S+)")
    assert [(m.group(1), m.group(2)) for m in routed] == [
        ("ACK", f"sip:eko@127.0.0.1:{served[0].port}"), ("BYE", f"sip:eko@127.0.0.1:{served[0].port}")]
    assert front.script_lines(r"without Route") == []


@needs_kamailio
def test_a_draining_node_leaves_the_rotation_and_finishes_its_call(built_cache, tmp_path):
    with two_nodes_behind_a_front(built_cache, tmp_path, ping_interval=1) as (a, b, front), \
            ThreadPoolExecutor(1) as pool:
        in_progress, draining, staying = drain_the_node_of_a_call(pool, front, a, b, hold=6.0)
        # The next OPTIONS probe gets 503: the node is marked inactive (and still probed).
        front.wait_for_flags({f"sip:127.0.0.1:{draining.port}": "IP", f"sip:127.0.0.1:{staying.port}": "AP"}, timeout=5)
        assert options(front.address).status == 200  # the front is healthy while a node is

        new_calls = [place_call(front.address, hold=1.0, timeout=10) for _ in range(3)]
        call = in_progress.result(timeout=20)
        assert draining.process.wait(10) == 0  # its last call over, the drained node exits
        draining_log = draining.log()
        on_staying = invites_from(staying, front)

        # Started again on the same address, it answers the probes with 200 and is back.
        with ServerProcess(built_cache, port=draining.port) as restarted:
            front.wait_for_flags({f"sip:127.0.0.1:{draining.port}": "AP", f"sip:127.0.0.1:{staying.port}": "AP"},
                                 timeout=5)
            back = [place_call(front.address, hold=1.0, timeout=10) for _ in range(2)]
            on_restarted = invites_from(restarted, front)

    for record in new_calls:
        assert_answered_with_media(record)
    assert len(on_staying) == 3, on_staying
    assert len(re.findall(r"INVITE received", draining_log)) == 1  # the 503s went to probes only
    # The call in progress ended on the caller's BYE, relayed by the front to the draining node.
    assert_answered_with_media(call)
    assert len(call.packets) >= 250, len(call.packets)  # 6 s of 20 ms frames, not cut short
    assert re.search(r"ended \(remote_bye\)", draining_log), draining_log[-2000:]
    for record in back:
        assert_answered_with_media(record)
    assert len(on_restarted) == 1, on_restarted  # round robin again: one of the two calls


@needs_kamailio
def test_the_node_hangs_up_through_the_front_when_its_drain_grace_is_over(built_cache, tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[service]\ndrain_grace_seconds = 1\n", encoding="utf-8")
    with ServerProcess(built_cache, "--config", str(config)) as node, \
            Kamailio(tmp_path, [node.port], ping_interval=1) as front, ThreadPoolExecutor(1) as pool:
        in_progress = pool.submit(place_call, front.address, hold=15.0, timeout=20)
        node.wait_for_log(r"INVITE received")
        node.process.send_signal(signal.SIGTERM)
        call = in_progress.result(timeout=20)
        assert node.process.wait(10) == 0
    assert call.status == 200 and call.server_hung_up
    # The node sent its BYE along the route set (the front's Record-Route), not straight
    # to the caller's Contact: the front loose-routed it.
    routed = front.script_lines(rf"in-dialog BYE from 127\.0\.0\.1:{node.port} routed to (\S+)")
    assert len(routed) == 1 and re.fullmatch(r"sip:trunk@127\.0\.0\.1:\d+", routed[0].group(1)), routed


@needs_kamailio
def test_an_invite_answered_503_is_offered_to_the_next_node(built_cache, tmp_path):
    # No probing (interval 0): only the 503 to the INVITE can take the node out.
    with two_nodes_behind_a_front(built_cache, tmp_path, ping_interval=0) as (a, b, front), \
            ThreadPoolExecutor(1) as pool:
        in_progress, draining, staying = drain_the_node_of_a_call(pool, front, a, b, hold=4.0)
        # Round robin: of the next two INVITEs, one is first sent to the draining node.
        new_calls = [place_call(front.address, hold=1.0, timeout=10) for _ in range(2)]
        flags = front.dispatcher_flags()
        call = in_progress.result(timeout=20)
        on_staying = invites_from(staying, front)

    for record in new_calls:
        assert_answered_with_media(record)
    assert len(on_staying) == 2, on_staying
    assert_one_failover(front, flags, failed_port=draining.port, status="503", next_port=staying.port)
    assert_answered_with_media(call)


@needs_kamailio
def test_an_invite_a_node_never_answers_is_offered_to_the_next_node(built_cache, tmp_path):
    dead_port = free_port()  # nothing listens there
    with ServerProcess(built_cache) as live, \
            Kamailio(tmp_path, [dead_port, live.port], ping_interval=0, fr_timer_ms=1000) as front:
        records = [place_call(front.address, hold=1.0, timeout=10) for _ in range(2)]
        flags = front.dispatcher_flags()
        on_live = invites_from(live, front)

    for record in records:
        assert_answered_with_media(record)
    assert len(on_live) == 2, on_live
    # tm ends a branch that timed out with a local 408.
    assert_one_failover(front, flags, failed_port=dead_port, status="408", next_port=live.port)
    # The caller waited NODE_FR_TIMER (0.5 s, not fr_timer) for the dead node, once, then never again.
    waits = sorted(record.answered_at - record.invite_sent for record in records)
    assert waits[0] < 0.3 and 0.4 < waits[1] < 1.2, waits


@needs_kamailio
def test_with_no_node_alive_the_front_answers_503(tmp_path):
    dead_port = free_port()  # nothing listens there
    # The first probe fails (no answer; on loopback the ICMP error may end it sooner than
    # fr_timer): the only node is inactive once the front is up.
    with Kamailio(tmp_path, [dead_port], ping_interval=1, fr_timer_ms=1000, ready_flags="IP") as front:
        probe = options(front.address)
        record = place_call(front.address, hold=1.0, timeout=5)
    assert (probe.status, probe.reason, probe.header("retry-after")) == (503, "No Eko RTP Server Available", "30")
    assert record.status == 503 and record.responses == [503], record.responses


def test_the_trunk_example_call_is_answered_as_documented(built_cache, tmp_path):
    # sip/trunk/trunk_call.xml checks the 200 OK itself (Record-Route echoed, Contact,
    # Session-Expires 1800;refresher=uac, Require: timer). A CRM address where nothing
    # listens makes the server log its look-up of the caller number: From is anonymous,
    # so the number can only come from P-Asserted-Identity.
    with ServerProcess(built_cache, "--crm", f"127.0.0.1:{free_port()}") as server:
        failure = run_sipp(TRUNK_SCENARIO, server.address, tmp_path)
        assert not failure, f"{failure}\n{server.log()[-3000:]}"
        server.wait_for_log(r"ended \(remote_bye\)")
        server.wait_for_log(r"CRM look-up of \+\*{7}5678: ")  # +33612345678, masked in logs
