"""Admission and health, on a real ``eko-rtp serve`` over loopback (issue 17).

Who may call (``sip.trusted_networks``, ``sip.untrusted_action``), whose
P-Asserted-Identity is believed and what ``Privacy: id`` leaves of the number, how
much (``sip.max_calls``, ``sip.invite_rate_per_source``), and whether OPTIONS tell the
truth when no call could succeed (RTP ports, file descriptors, phrases). A second
loopback address (127.0.0.2) plays a source outside the trusted networks. Requests are
raw SIP over UDP, read with the bench's own small parser (``eko_bench.uac``).
"""

from __future__ import annotations

import os
import random
import re
import resource
import shutil
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from eko_bench import uac
from raw_caller import place_call
from server_helpers import ServerProcess, free_port, start_crm

TRUSTED_HOST, STRANGER_HOST = "127.0.0.1", "127.0.0.2"
PAI = "P-Asserted-Identity: <sip:+33612345678@127.0.0.1;user=phone>"


class Phone:
    """A SIP endpoint on one loopback address: raw requests, responses read as they come."""

    def __init__(self, server: tuple[str, int], host: str = TRUSTED_HOST):
        self.server = server
        self.sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sip.bind((host, 0))
        self.rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.rtp.bind((host, 0))
        self.endpoint = uac.Endpoint(local_host=host, local_port=self.sip.getsockname()[1],
                                     target_host=server[0], target_port=server[1])

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()

    def __enter__(self) -> "Phone":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def send_invite(self, *, caller: str = "0600000000", headers: tuple[str, ...] = (),
                    sdp: bytes | None = None) -> uac.Dialog:
        dialog = uac.Dialog(endpoint=self.endpoint, call_id=uac.new_tag() + "@admission", from_tag=uac.new_tag(),
                            caller=caller)
        offer = sdp if sdp is not None else uac.sdp_offer(address=self.endpoint.local_host,
                                                          rtp_port=self.rtp.getsockname()[1], session_id=1)
        data = dialog.invite(branch=uac.new_branch(), sdp=offer)
        if headers:
            data = data.replace(b"\r\nContact:", "".join(f"\r\n{h}" for h in headers).encode() + b"\r\nContact:", 1)
        self.sip.sendto(data, self.server)
        return dialog

    def responses(self, call_id: str, timeout: float) -> list[uac.Message]:
        """Responses for ``call_id`` until a final one, or until ``timeout`` passes in silence."""
        received = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sip.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                message = uac.parse_message_untrusted(self.sip.recvfrom(65535)[0])
            except socket.timeout:
                break
            if message.is_response and message.call_id == call_id:
                received.append(message)
                if message.status >= 200:
                    break
            elif not message.is_response and message.method == "BYE":
                self.sip.sendto(uac.response_to(message, 200, "OK"), self.server)
        return received

    def invite(self, timeout: float = 10.0, **kwargs) -> tuple[uac.Dialog, list[uac.Message]]:
        dialog = self.send_invite(**kwargs)
        return dialog, self.responses(dialog.call_id, timeout)

    def call(self, **kwargs) -> uac.Dialog:
        """An answered and ACKed call (held until :meth:`hang_up`)."""
        dialog, received = self.invite(**kwargs)
        assert received and received[-1].status == 200, [m.status for m in received]
        dialog = dialog.confirmed(received[-1])
        self.sip.sendto(dialog.ack(), self.server)
        return dialog

    def hang_up(self, dialog: uac.Dialog) -> int | None:
        self.sip.sendto(dialog.bye(branch=uac.new_branch()), self.server)
        received = self.responses(dialog.call_id, 5.0)
        return received[-1].status if received else None

    def options(self, timeout: float = 5.0) -> uac.Message | None:
        call_id = uac.new_tag() + "@probe"
        self.sip.sendto(uac.options(self.endpoint, call_id=call_id, branch=uac.new_branch()), self.server)
        received = self.responses(call_id, timeout)
        return received[-1] if received else None


def config_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / f"eko-rtp-{random.randrange(1 << 30)}.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def no_common_codec_offer() -> bytes:
    return (b"v=0\r\no=- 7 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n")


def call_lines(server: ServerProcess, call_id: str) -> list[str]:
    return [line for line in server.lines if f"[call={call_id}]" in line]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def narrow_rtp_range(pairs: int) -> tuple[int, str]:
    low = random.randrange(40000, 60000, 2)
    return low, f"{low}-{low + 2 * pairs}"


class NotifySocket:
    """A stand-in for systemd's notify socket: the STATUS= lines the server sends."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.statuses: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                data = self.sock.recv(65535).decode()
            except BlockingIOError:
                return self.statuses
            self.statuses += [line[len("STATUS="):] for line in data.splitlines() if line.startswith("STATUS=")]

    def close(self) -> None:
        self.sock.close()


# ---- 1. who may call ----------------------------------------------------------------


def test_an_untrusted_source_is_refused_before_any_lookup_or_port(built_cache, tmp_path):
    config = config_file(tmp_path, '[sip]\ntrusted_networks = ["127.0.0.1/32"]\n')
    # A CRM address where nothing listens: any look-up would be logged with its number.
    with ServerProcess(built_cache, "--config", config, "--crm", f"127.0.0.1:{free_port()}") as server, \
            Phone(server.address, STRANGER_HOST) as stranger, Phone(server.address) as trunk:
        dialog, received = stranger.invite(caller="0612345678")
        assert [m.status for m in received] == [403]  # no 100 Trying: nothing was started
        assert stranger.options().status == 403
        assert trunk.options().status == 200  # handled in order: the stranger's INVITE is long done
        server.wait_for_log(rf"WARNING .*INVITE from {STRANGER_HOST}:\d+ refused, source not in"
                            r" sip.trusted_networks -> 403$")
        assert not [line for line in server.lines if "INVITE received" in line or "CRM look-up" in line
                    or dialog.call_id in line]
        assert place_call(server.address, hold=0.3).status == 200  # the trunk is served as before


def test_drop_is_silence_for_untrusted_sources(built_cache, tmp_path):
    config = config_file(tmp_path, '[sip]\ntrusted_networks = ["127.0.0.1/32"]\nuntrusted_action = "drop"\n')
    with ServerProcess(built_cache, "--config", config) as server, Phone(server.address, STRANGER_HOST) as stranger, \
            Phone(server.address) as trunk:
        _, received = stranger.invite(timeout=1.0)
        assert received == []
        assert stranger.options(timeout=1.0) is None
        assert trunk.options().status == 200
        server.wait_for_log(rf"INVITE from {STRANGER_HOST}:\d+ refused, source not in sip.trusted_networks"
                            r" -> dropped$")


# ---- 2. whose identity is believed -------------------------------------------------------


def test_p_asserted_identity_is_believed_from_trusted_sources_only(built_cache, tmp_path):
    # "accept": strangers may call, as who their From says.
    config = config_file(tmp_path, '[sip]\ntrusted_networks = ["127.0.0.1/32"]\nuntrusted_action = "accept"\n')
    with ServerProcess(built_cache, "--config", config, "--crm", f"127.0.0.1:{free_port()}") as server:
        looked_up = {}
        for host in (STRANGER_HOST, TRUSTED_HOST):
            with Phone(server.address, host) as phone:
                dialog = phone.call(caller="0611112222", headers=(PAI,))
                match = wait_for(lambda: [line for line in call_lines(server, dialog.call_id)
                                          if "CRM look-up of" in line])
                assert match, server.log()[-3000:]
                looked_up[host] = re.search(r"CRM look-up of (\S+):", match[0]).group(1)
                assert phone.hang_up(dialog) == 200
    assert looked_up == {STRANGER_HOST: "+*******2222", TRUSTED_HOST: "+*******5678"}


def test_a_withheld_number_identifies_the_caller_and_goes_nowhere_else(built_cache, tmp_path):
    crm, address = start_crm(tmp_path)
    try:
        with ServerProcess(built_cache, "--crm", address) as server:
            server.wait_for_log(r"CRM connected")
            stored = {}
            for privacy in ("Privacy: id", "Privacy: none"):
                with Phone(server.address) as trunk:
                    dialog = trunk.call(caller="anonymous", headers=(PAI, privacy))
                    # RFC 3325: we are the Trust Domain's end, so the asserted number finds the caller...
                    server.wait_for_log(rf"\[call={re.escape(dialog.call_id)}\].*CRM look-up of \+\*{{7}}5678:"
                                        r" known caller")
                    assert trunk.hang_up(dialog) == 200
                server.wait_for_log(rf"\[call={re.escape(dialog.call_id)}\].*ended \(remote_bye\)")
                database = sqlite3.connect(tmp_path / "crm.sqlite3")
                try:
                    rows = wait_for(lambda: database.execute("SELECT phone FROM call_log WHERE call_id = ?",
                                                             (dialog.call_id,)).fetchall())
                finally:
                    database.close()
                stored[privacy] = rows
    finally:
        crm.terminate()
        crm.wait(10)
    # ... and is not kept: no number in the call log (nor a callback to it) when it was withheld.
    assert stored == {"Privacy: id": [(None,)], "Privacy: none": [("+33612345678",)]}


# ---- 3. how much ----------------------------------------------------------------------


def test_max_calls_answers_503_and_options_503_while_full(built_cache, tmp_path):
    config = config_file(tmp_path, "[sip]\nmax_calls = 2\n")
    with ServerProcess(built_cache, "--config", config) as server, Phone(server.address) as trunk:
        calls = [trunk.call(), trunk.call()]
        _, received = trunk.invite()
        assert [(m.status, m.header("retry-after")) for m in received] == [(503, "5")]  # before any 100 or port
        probe = trunk.options()
        assert (probe.status, probe.header("retry-after")) == (503, "5")
        server.wait_for_log(r"INVITE from 127.0.0.1:\d+ refused, sip.max_calls calls in progress -> 503$")
        assert trunk.hang_up(calls.pop()) == 200
        assert wait_for(lambda: trunk.options().status == 200, timeout=5)
        assert trunk.call() is not None
    assert server.log().count("INVITE received") == 3


def test_a_source_over_its_invite_rate_gets_503_and_a_stranger_silence(built_cache, tmp_path):
    config = config_file(tmp_path, '[sip]\ntrusted_networks = ["127.0.0.1/32"]\ninvite_rate_per_source = 0.2\n'
                                   "invite_burst = 2\n")
    with ServerProcess(built_cache, "--config", config) as server, Phone(server.address) as trunk, \
            Phone(server.address, STRANGER_HOST) as stranger:
        # Offers we cannot answer (G.729 only): each INVITE ends at once, 488, and spends a token.
        finals = [trunk.invite(sdp=no_common_codec_offer())[1][-1] for _ in range(3)]
        assert [(m.status, m.header("retry-after")) for m in finals] == [(488, None), (488, None), (503, "5")]
        assert trunk.options().status == 200  # OPTIONS are not rate limited
        # A stranger's refusals spend its tokens too; beyond them, silence (never a reflector).
        answered = [stranger.invite(timeout=1.0)[1] for _ in range(3)]
        assert [[m.status for m in received] for received in answered] == [[403], [403], []]
        server.wait_for_log(r"INVITE from 127.0.0.1:\d+ refused, source over sip.invite_rate_per_source -> 503$")


# ---- 5. health ------------------------------------------------------------------------


def test_options_say_503_when_no_rtp_port_pair_is_free(built_cache, tmp_path):
    low, ports = narrow_rtp_range(2)
    notify = NotifySocket(tmp_path / "notify.sock")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", low + 2))  # another process holds the second pair
    try:
        with ServerProcess(built_cache, "--rtp-ports", ports, env={"NOTIFY_SOCKET": notify.path}) as server, \
                Phone(server.address) as trunk:
            server.wait_for_log(rf"sip.max_calls 2000 is above the 2 RTP port pairs of media.rtp_ports {ports}:"
                                " at most 2 calls at once")
            first = trunk.call()
            assert trunk.options().status == 200  # one pair looks free: nothing says otherwise yet
            _, received = trunk.invite()
            assert [(m.status, m.header("retry-after")) for m in received] == [(100, None), (503, "5")]
            probe = trunk.options()
            assert (probe.status, probe.header("retry-after")) == (503, "5")
            server.wait_for_log(rf"WARNING .*no new call can succeed: no free RTP port pair in {low}-{low + 3} on"
                                r" 127.0.0.1 \(media.rtp_ports\); OPTIONS and new INVITEs get 503")
            assert wait_for(lambda: any("UNHEALTHY" in s and "no free RTP port pair" in s for s in notify.read())), \
                notify.statuses
            blocker.close()
            assert trunk.hang_up(first) == 200
            assert wait_for(lambda: trunk.options().status == 200, timeout=5)
            server.wait_for_log(r"rtp_ports: recovered; new calls are taken again")
            # Both pairs held by our own calls: the server knows before anyone is refused.
            held = [trunk.call(), trunk.call()]
            assert trunk.options().status == 503
            server.wait_for_log(rf"no new call can succeed: all 2 RTP port pairs of media.rtp_ports {ports} are in use")
            for dialog in held:
                trunk.hang_up(dialog)
    finally:
        blocker.close()
        notify.close()


def test_ports_another_process_held_are_found_again_without_a_call(built_cache):
    # No call of ours ends to free a pair, and INVITEs are answered 503 by the SIP core
    # meanwhile: the server's probe is what finds the range usable again.
    low, ports = narrow_rtp_range(1)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", low + 1))  # the pair's RTCP port
    try:
        with ServerProcess(built_cache, "--rtp-ports", ports) as server, Phone(server.address) as trunk:
            assert trunk.options().status == 200
            assert [m.status for m in trunk.invite()[1]] == [100, 503]
            assert trunk.options().status == 503
            assert [m.status for m in trunk.invite()[1]] == [503]  # not even tried
            blocker.close()
            assert wait_for(lambda: trunk.options().status == 200, timeout=5)
            server.wait_for_log(r"INFO eko_rtp.server: rtp_ports: recovered; new calls are taken again")
            assert place_call(server.address, hold=0.3).status == 200
    finally:
        blocker.close()


def open_descriptors(pid: int) -> list[int]:
    return sorted(int(name) for name in os.listdir(f"/proc/{pid}/fd"))


def test_running_out_of_file_descriptors_is_a_503_not_a_traceback_flood(built_cache):
    with ServerProcess(built_cache) as server, Phone(server.address) as trunk:
        pid = server.process.pid
        assert trunk.options().status == 200
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        used = set(open_descriptors(pid))
        lowest_free = next(number for number in range(len(used) + 1) if number not in used)
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (lowest_free, hard))  # the next socket is one too many
        try:
            finals = [trunk.invite()[1][-1] for _ in range(3)]
            assert [(m.status, m.header("retry-after")) for m in finals] == [(503, "5")] * 3
            probe = trunk.options()
            assert (probe.status, probe.header("retry-after")) == (503, "5")
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
        assert wait_for(lambda: trunk.options().status == 200, timeout=10)
        server.wait_for_log(r"file_descriptors: recovered; new calls are taken again")
        assert place_call(server.address, hold=0.3).status == 200
    log = server.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]
    assert len(re.findall(r"WARNING eko_rtp.server \[call=[^]]+\]: no new call can succeed: out of file descriptors"
                          r" \(EMFILE: Too many open files\) opening sockets: raise LimitNOFILE="
                          r" \(systemd\) or ulimit -n; OPTIONS and new INVITEs get 503", log)) == 1
    # The later INVITEs met the health check in the SIP core: one line for them all.
    assert len(re.findall(r"INVITE from .* refused, no new call can succeed: out of file descriptors", log)) == 1


def test_a_cache_without_the_greeting_makes_the_server_unhealthy(built_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(built_cache, cache)
    (cache / "greet.raw").unlink()
    notify = NotifySocket(tmp_path / "notify.sock")
    try:
        with ServerProcess(cache, "--degraded", env={"NOTIFY_SOCKET": notify.path}) as server, \
                Phone(server.address) as trunk:
            probe = trunk.options()
            assert (probe.status, probe.header("retry-after")) == (503, "5")
            _, received = trunk.invite()
            assert [m.status for m in received] == [503]
            server.wait_for_log(r"WARNING .*no new call can succeed: the phrase cache lacks greet, which every call of"
                                r" the script needs \(build it: eko-rtp cache build\)")
            statuses = wait_for(notify.read)
            assert statuses[0] == ("0 active call(s); UNHEALTHY, OPTIONS and new calls get 503: the phrase cache"
                                   " lacks greet, which every call of the script needs (build it: eko-rtp cache"
                                   " build)")
    finally:
        notify.close()
