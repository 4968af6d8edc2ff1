"""The recognizer relay, end to end: the calls' Deepgram streams run in a child process.

With ``asr.relay = true`` (or ``eko-rtp serve --asr-relay``) the server starts
``python -m eko_rtp.asr.relay_process`` and each call's recognizer stream runs there
(eko_rtp/asr/relay_client.py, eko_rtp/asr/relay_process.py). Everything runs for real
on loopback, with the harness of tests/test_listening_e2e.py: ``eko-rtp serve`` as a
subprocess with the short phrase catalogue, the seeded CRM (the caller has an open
internet ticket: Eko asks whether the call is about it), the fake Deepgram in a
thread of this process, and a caller on raw sockets that speaks espeak-ng French.

Which process holds the websocket to the fake is read from the kernel while the call
runs: the client end of the TCP connection to the fake's port (``/proc/net/tcp``)
and the process whose descriptors hold that socket (``/proc/PID/fd``).

Checked: a spoken "oui" takes the yes branch through the relay (the same handshake
and the same audio bytes as without it); the relay killed (SIGKILL) while the caller
is asked about its ticket: the call logs the failure once, counts it (AsrDropped),
asks for the keys and takes the key's branch; the server starts another relay within
seconds and the next call is recognized through it; no relay outlives the server.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from fake_deepgram import FakeDeepgram, FakeDeepgramThread, Reply, results
from server_helpers import ServerProcess, free_port
from speech_audio import phrase_seconds, phrase_ulaw, quiet_frames, speech_frames
from test_listening_e2e import (  # noqa: F401 (crm_address and short_cache: the fixtures, shared)
    FAILED,
    KEY,
    KEYWORDS,
    QUESTION,
    Plan,
    TalkingCall,
    await_stream,
    crm_address,
    first_frame_lost,
    listen_query,
    log_lines,
    scrape_when,
    short_cache,
    slots,
    talk,
    write_config,
)

STARTED = r"recognizer relay started \(pid (\d+)"
RELAY_ENDED = (r"recognizer relay ended: (it closed its end|its connection broke \(.*\)), killed by SIGKILL; "
               r"calls in progress go on with DTMF, another starts in 1 s$")
DROPPED = "the recognizer relay process ended mid-call"
STOPPED_LISTENING = "speech recognition stopped during the question; asking for a key"
ENDED = r"ended \(\w+\) after \d+ ms.*"


# -- the server and its neighbours (the cache and CRM fixtures are test_listening_e2e's) -----------


def write_relay_config(tmp_path: Path, *, crm: str, base_url: str) -> str:
    """tests/test_listening_e2e.py's config (keywords included), with ``relay = true`` in its [asr] section."""
    (tmp_path / "keywords.txt").write_text(KEYWORDS, encoding="utf-8")
    lines = ["[crm]", f'address = "{crm}"', "budget_ms = 2000",
             "[asr]", f'base_url = "{base_url}"', f'keywords_file = "{tmp_path / "keywords.txt"}"', "relay = true"]
    path = tmp_path / "eko.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def serve(short_cache, config: str, *extra: str) -> ServerProcess:
    cache_dir, catalogue = short_cache
    return ServerProcess(cache_dir, "--phrases", str(catalogue), "--config", config, *extra,
                         env={"DEEPGRAM_API_KEY": KEY})


def relay_pids(server: ServerProcess, *, count: int, timeout: float = 10.0) -> list[int]:
    """The pids of the relays the server started, once it has started ``count``."""
    lines = log_lines(server, STARTED, count=count, timeout=timeout)
    assert len(lines) == count, server.log()[-3000:]
    return [int(re.search(STARTED, line).group(1)) for line in lines]


def parent_and_command(pid: int) -> tuple[int, list[str]]:
    """A live process's parent pid and its arguments."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    parent = int(stat[stat.rindex(")") + 2 :].split()[1])  # after "pid (comm) state"
    command = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    return parent, command


def relay_cpus_expected(server: ServerProcess) -> list[int]:
    """Where the relay should run with ``asr.relay_cpus`` unset: the CPUs the server is not pinned to
    (none when it may run anywhere, as here unless the test itself runs pinned)."""
    return sorted(set(range(os.cpu_count() or 1)) - os.sched_getaffinity(server.process.pid))


def assert_relay_child(pid: int, server: ServerProcess) -> None:
    """``pid`` is a relay the server started: its child, the relay module, on the CPUs it should use."""
    parent, command = parent_and_command(pid)
    assert pid != server.process.pid and parent == server.process.pid, (pid, parent, server.process.pid)
    assert command[1:4] == ["-m", "eko_rtp.asr.relay_process", "--fd"], command
    cpus = relay_cpus_expected(server)
    started = next(line for line in server.log().splitlines() if f"recognizer relay started (pid {pid}" in line)
    if cpus:
        listed = ",".join(map(str, cpus))
        assert command[5:] == ["--cpus", listed] and started.endswith(f", CPUs {listed})"), (command, started)
        # The relay pins itself once its interpreter is up (a few hundred ms after the log line).
        deadline = time.monotonic() + 5
        while os.sched_getaffinity(pid) != set(cpus) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert os.sched_getaffinity(pid) == set(cpus)
    else:
        assert command[5:] == [] and started.endswith(f"(pid {pid})"), (command, started)


def logged_at(line: str) -> float:
    """A server log line's time (``asctime``: local time, to the millisecond) as ``time.time()``."""
    stamp = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
    assert stamp, line
    return time.mktime(time.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S")) + int(stamp.group(2)) / 1000


def gone(pid: int, *, within: float = 0.0) -> bool:
    """The process has exited, or does within ``within`` s (a zombie left for a reaper counts: it runs no more)."""
    deadline = time.monotonic() + within
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat[stat.rindex(")") + 2] == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def socket_owners(remote_port: int, pids: list[int]) -> set[int]:
    """Which of ``pids`` hold an established TCP connection to 127.0.0.1:``remote_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        # sl, local address, remote address (hex IP:port), state (01: ESTABLISHED), ..., inode (10th)
        if int(fields[2].split(":")[1], 16) == remote_port and fields[3] == "01":
            inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for pid in pids:
        for descriptor in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{descriptor}") in inodes:
                    owners.add(pid)
            except FileNotFoundError:
                continue  # closed since the listing
    return owners


class Watch:
    """A ``Plan.hang_up_when`` that never hangs up: it notes, once, who holds the websocket to
    the fake, ``after`` s into the call (the stream is open by then, the caller still talking)."""

    def __init__(self, port: int, pids: list[int], after: float = 1.0):
        self.port, self.pids, self.after = port, pids, after
        self.owners: set[int] | None = None

    def __call__(self, call: TalkingCall) -> bool:
        if self.owners is None and time.monotonic() >= call.answered_at + self.after:
            self.owners = socket_owners(self.port, self.pids)
        return False


def yes_script() -> list[Reply]:
    """Deepgram's way: an interim guess while "oui" is heard, the final once 300 ms of quiet followed it."""
    return [Reply(after_speech_bytes=480, message=results("oui", is_final=False, duration=0.3)),
            Reply(after_speech_bytes=480, after_quiet_bytes=2400,
                  message=results("oui", is_final=True, speech_final=True, duration=0.5))]


def oui_plan(cache_dir: Path, watch: Watch) -> tuple[Plan, int]:
    """Faint hiss (each frame different) while Eko asks, then "oui"; the lead's frame count."""
    lead = tuple(quiet_frames(len(slots(phrase_seconds(cache_dir, QUESTION) + 0.5, None))))
    return Plan(audio=lead + tuple(speech_frames("oui")), hang_up_when=watch), len(lead)


# -- 1. the answer by voice, through the relay -----------------------------------------------------


def test_a_spoken_yes_takes_its_branch_through_the_relay(short_cache, crm_address, tmp_path):
    """``asr.relay = true``: the server starts the relay (a child process of its own), the
    relay holds the websocket to Deepgram, asks for exactly the stream the server would
    and gets the caller's payloads untouched; its transcript takes the yes branch."""
    cache_dir, _ = short_cache
    fake = FakeDeepgram(api_key=KEY)
    fake.script = yes_script()
    with FakeDeepgramThread(fake) as served:
        with serve(short_cache, write_relay_config(tmp_path, crm=crm_address, base_url=fake.base_url)) as server:
            [relay] = relay_pids(server, count=1)
            assert_relay_child(relay, server)
            watch = Watch(fake.port, [server.process.pid, relay])
            plan, lead = oui_plan(cache_dir, watch)
            call = talk(server.address, plan)
            record = await_stream(served)
            said = server.wait_for_log(r"caller said .*").group(0)
            ended = server.wait_for_log(ENDED).group(0)
            log = server.log()
        assert server.process.returncode == 0
        # The server does not wait for its relay at exit: the relay ends on its own when the socket closes.
        assert gone(relay, within=3), "the relay outlived the server"

    assert call.status == 200
    assert watch.owners == {relay}, f"the websocket to Deepgram is held by {watch.owners}, not the relay {relay}"
    assert record.status == 101 and record.path == "/v1/listen"
    assert record.headers["authorization"] == f"Token {KEY}"
    assert record.query == listen_query("mulaw")
    # The yes branch ends with Eko's BYE, which may leave the caller's last packets unheard.
    sent = call.sent_audio()
    skipped = first_frame_lost(record.audio, sent)
    assert record.audio == sent[skipped : skipped + len(record.audio)]
    assert record.audio.find(b"".join(speech_frames("oui"))) == lead * 160
    assert all(size % 160 == 0 and 0 < size <= 800 for size in record.frames) and record.empty_frames == 0
    assert record.close_stream_at is not None and record.ended == "closed"
    assert said == "caller said 'oui': yes"
    reply = call.phrase_at(phrase_ulaw(cache_dir, "transfer_unavailable"))
    assert call.heard_phrase(phrase_ulaw(cache_dir, QUESTION)) and reply is not None
    assert reply.arrival > call.sent[lead + len(speech_frames("oui")) - 1].at
    assert call.server_bye_at is not None
    assert f"; asr={len(record.audio) / 8000:.1f}s" in ended and "(failed)" not in ended, ended
    assert FAILED not in log and "recognizer relay ended" not in log


# -- 2. the relay dies mid-call ---------------------------------------------------------------------


class KillAfterTheQuestion:
    """A ``Plan.hang_up_when`` that never hangs up: ``delay`` s after the caller has heard the
    whole ticket question (the script is listening for the answer), SIGKILL ``pid``, once."""

    def __init__(self, question: bytes, pid: int, delay: float = 0.3):
        self.question, self.pid, self.delay = question, pid, delay
        self.asked_at: float | None = None
        self.killed_at: float | None = None
        self.killed_wall = 0.0  # time.time() then, to compare with the server's log times

    def __call__(self, call: TalkingCall) -> bool:
        if self.asked_at is None:
            if call.heard_phrase(self.question):
                self.asked_at = time.monotonic()
        elif self.killed_at is None and time.monotonic() >= self.asked_at + self.delay:
            os.kill(self.pid, signal.SIGKILL)
            self.killed_at, self.killed_wall = time.monotonic(), time.time()
        return False


def test_the_relay_killed_mid_call_the_call_goes_on_with_the_keys_and_a_new_relay_takes_over(
        short_cache, crm_address, tmp_path):
    """``--asr-relay``; the relay is killed while Eko waits for the caller's answer: the call
    logs the failure once, counts it (AsrDropped), asks for the keys, and the caller's 1
    takes the yes branch. The server starts another relay about a second later; the next
    call says "oui" and is recognized through it."""
    cache_dir, _ = short_cache
    question, keys, promise = (phrase_ulaw(cache_dir, name)
                               for name in (QUESTION, "press_yes_no", "transfer_unavailable"))
    # The key once press_yes_no (which starts when the relay dies) has been heard whole.
    press_at = len(question) / 8000 + 0.3 + len(keys) / 8000 + 1.0
    fake = FakeDeepgram(api_key=KEY)
    fake.script = yes_script()  # waits for speech: the first call sends none
    metrics_port = free_port()
    with FakeDeepgramThread(fake) as served:
        config = write_config(tmp_path, crm=crm_address, base_url=fake.base_url, keywords=True,
                              metrics_port=metrics_port)
        with serve(short_cache, config, "--asr-relay") as server:
            [first_relay] = relay_pids(server, count=1)
            assert_relay_child(first_relay, server)
            kill = KillAfterTheQuestion(question, first_relay)
            keyed = talk(server.address, Plan(audio=tuple(quiet_frames(round((press_at + 3) / 0.020))),
                                              digits=((press_at, "1"),), hang_up_when=kill))
            [dropped] = served.call(fake.wait_for_streams, 1, 10, ended=True)
            keyed_ended = server.wait_for_log(ENDED).group(0)
            first_relay, second_relay = relay_pids(server, count=2)
            assert_relay_child(second_relay, server)
            after_kill = server.log()

            watch = Watch(fake.port, [server.process.pid, second_relay])
            plan, lead = oui_plan(cache_dir, watch)
            spoken = talk(server.address, plan)
            _, recognized = served.call(fake.wait_for_streams, 2, 10, ended=True)
            said = server.wait_for_log(r"caller said .*").group(0)
            spoken_ended = log_lines(server, ENDED, count=2)[1]
            heard = len(keyed.heard) + len(spoken.heard)
            metrics = scrape_when(metrics_port, lambda values: values.get(
                ("eko_rtp_frames_sent_total", ()), 0) >= heard)
            log = server.log()
        assert server.process.returncode == 0
        assert gone(second_relay, within=3), "the relay outlived the server"

    # The relay died while the script listened, and the call carried on with the keys.
    assert kill.killed_at is not None, "the question was never heard whole: the relay was not killed"
    assert gone(first_relay)
    assert keyed.status == 200 and [digit for digit, _ in keyed.digits_sent] == ["1"]
    failures = [line for line in log.splitlines() if FAILED in line]
    assert len(failures) == 1 and failures[0].endswith(FAILED + DROPPED), failures
    assert STOPPED_LISTENING in after_kill and "caller pressed 1" in after_kill
    asking = keyed.phrase_at(keys)
    assert asking is not None and kill.killed_at < asking.arrival < keyed.digits_sent[0][1], \
        "press_yes_no must be heard whole, after the relay died and before the key"
    assert keyed.phrase_at(promise).arrival > keyed.digits_sent[0][1]
    assert keyed.server_bye_at is not None
    assert re.search(r"; asr=\d+\.\ds \(failed\)", keyed_ended), keyed_ended
    # The fake saw the relay's connection go without CloseStream, after the caller's audio up to then.
    assert dropped.status == 101 and dropped.ended == "client-closed" and dropped.close_stream_at is None
    skipped = first_frame_lost(dropped.audio, keyed.sent_audio())
    assert dropped.audio == keyed.sent_audio()[skipped : skipped + len(dropped.audio)]
    assert len(dropped.audio) >= len(question)
    # The relay ended once, and another started about a second later (asr.relay restart delay: 1 s).
    [relay_ended] = [line for line in after_kill.splitlines() if re.search(RELAY_ENDED, line)]
    [_, restarted] = [line for line in after_kill.splitlines() if re.search(STARTED, line)]
    assert second_relay != first_relay
    assert logged_at(relay_ended) - kill.killed_wall < 1.0, (relay_ended, kill.killed_wall)
    assert 0.95 <= logged_at(restarted) - logged_at(relay_ended) < 2.0, (relay_ended, restarted)
    # Counted once, by kind.
    counted = {labels: value for (name, labels), value in metrics.items() if name == "eko_asr_failures_total"}
    assert counted == {(("kind", "AsrDropped"),): 1.0}, counted

    # The next call: recognized through the new relay.
    assert spoken.status == 200 and spoken.server_bye_at is not None
    assert watch.owners == {second_relay}, watch.owners
    assert said == "caller said 'oui': yes"
    assert recognized.status == 101 and recognized.headers["authorization"] == f"Token {KEY}"
    assert recognized.query == listen_query("mulaw")
    sent = spoken.sent_audio()
    skipped = first_frame_lost(recognized.audio, sent)
    assert recognized.audio == sent[skipped : skipped + len(recognized.audio)]
    assert recognized.audio.find(b"".join(speech_frames("oui"))) == lead * 160
    assert spoken.heard_phrase(promise)
    assert f"; asr={len(recognized.audio) / 8000:.1f}s" in spoken_ended and "(failed)" not in spoken_ended
