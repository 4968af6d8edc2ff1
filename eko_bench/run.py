"""One load run against one target: place the calls, hold them, hang up, sample the target.

Theory of operation: call ``i`` is placed at ``t0 + i / rate`` (absolute schedule)
once fewer than ``concurrency`` calls are up; it is held for ``hold`` seconds from
its 200 OK (or until the far end sends BYE) and then hung up. SIP runs in trio
(``sip_client.py``); RTP in the media process (``rtp_engine.py``).

The *steady period* is when the planned number of simultaneous calls is up: it
starts when the first ``min(calls, concurrency)`` INVITEs have all ended (answered
or failed) and ends when the first call starts hanging up. The target's CPU and RSS
and the bench's own CPU are sampled over it; RSS before the first call is the idle
figure. A hold shorter than the ramp-up (calls / rate) leaves no steady period,
and the report says so. When the server's RTP port range is known, its sockets'
receive queues are looked at about once a second over the same period
(``udp_queues.py``): the worst figures seen and the last look are kept.

With ``caller_events`` each caller sends an RFC 4733 event packet beside every
audio packet (100 packets a second, as a phone does while a key is held), in the
telephone-event payload type the bench's offer names.

In the listening scenario every caller talks (``caller_speech.py``): silence for a
lead-in after the 200 OK, then its audio looped; the RTP engine records when it
sends each talkspurt's first packet and whether each packet it receives is sound,
for the barge-in figures (``barge_in.py``). ``listening`` says what the server does
with the caller's voice: ``vad`` (voice activity detection and barge-in), ``asr``
(that, and every call streamed to the bench's fake speech-recognition endpoint) or
``off`` (``listen.vad = false``, no recognition: the same calls, nobody listening).

The bench's helper processes that serve the target (the fake speech-recognition
endpoint) run on the bench's CPU: their CPU over the steady period is sampled and
counted as the bench's. ``/proc/loadavg`` is read before and after each run: on a
shared machine it says whether something else was running.

Encrypted calls: with ``tls`` the signalling goes over one TLS connection to the
target's SIP-over-TLS port (``sip_client.py``), with ``srtp`` each call offers
RTP/SAVP with one ``a=crypto`` of that suite and its media is SRTP both ways
(``rtp_engine.py``). Every figure keeps its definition: the run's steady period, the
same kernel arrival stamps of the same (decrypted) RTP headers, the same CPU samples.
"""

from __future__ import annotations

import array
import multiprocessing
import resource
import secrets
import time

import attrs
import trio

from eko_bench import barge_in, caller_speech, fake_tts, procstat, rtp_engine, uac, udp_queues
from eko_bench.rtp_engine import MediaHandle, RtpEngine
from eko_bench.sip_client import SipClient
from eko_bench.targets import Target, check_loopback
from eko_rtp.errors import UserError
from eko_rtp.media.sdes import CryptoSuite

MAX_CALLS = 3000
MAX_SECONDS = 600.0
SAMPLE_INTERVAL = 0.5
QUEUE_SAMPLE_INTERVAL = 1.0  # s between looks at the server's receive queues (a parse of /proc/net/udp)
# The bench's own RTP/RTCP pairs when none are given: apart from the server's default
# media.rtp_ports (20000-29999), a spawned server's 30000-39999 and the peer's 40000 on.
BENCH_RTP_PORTS = range(10000, 20000)
SCENARIOS = ("greeting-unknown", "greeting-returning", "live-tts", "hybrid", "mixed", "listening")
LIVE_SCENARIOS = ("live-tts", "hybrid", "mixed")  # the server speaks live TTS from the bench's fake endpoint
LISTENING_MODES = ("vad", "asr", "off")  # what the server does with the caller's voice (listening scenario)
MAX_FIRST_BYTE_MS = 10_000
PROTOCOL_ERROR_STATUS = 0  # not a SIP code: the answer could not be used (reason in the record)


@attrs.frozen(kw_only=True)
class Plan:
    """What one run does; validated against the bench's hard caps."""

    calls: int
    concurrency: int
    rate: float
    hold: float
    scenario: str = "greeting-unknown"
    local_host: str = "127.0.0.1"
    tts_first_byte_ms: float = 300.0  # the fake endpoint's time to first byte (live scenarios)
    # Silence frames that end the cached filler (hybrid): not a gap between filler and live audio.
    filler_tail_frames: int = 0
    caller_events: bool = False  # an RFC 4733 event packet beside each caller audio packet (100 packets/s)
    listening: str = "vad"  # listening scenario: vad, asr (VAD and the fake ASR endpoint) or off
    lead_in_seconds: float = caller_speech.LEAD_IN_SECONDS  # listening: caller silence after the 200 OK
    # listening: silent packets in a row that mean the bot stopped (longer than its phrase's pauses)
    quiet_frames: int = barge_in.QUIET_FRAMES
    phrase_frames: int | None = None  # listening: the phrase's length to its last sound (from the cache)
    tls: bool = False  # SIP over TLS to the target's TLS port
    srtp: CryptoSuite | None = None  # offer RTP/SAVP with one a=crypto of this suite; None: clear RTP

    def __attrs_post_init__(self) -> None:
        if not 1 <= self.calls <= MAX_CALLS:
            raise UserError(f"{self.calls} calls is outside 1..{MAX_CALLS}", key="--calls")
        if not 1 <= self.concurrency <= MAX_CALLS:
            raise UserError(f"concurrency {self.concurrency} is outside 1..{MAX_CALLS}", key="--concurrency")
        if not 0 < self.rate <= 1000:
            raise UserError(f"rate {self.rate} calls/s is outside (0, 1000]", key="--rate")
        if not 0 < self.hold <= MAX_SECONDS:
            raise UserError(f"hold {self.hold} s is outside (0, {MAX_SECONDS:.0f}]", key="--hold")
        if self.scenario not in SCENARIOS:
            raise UserError(f"scenario {self.scenario!r} is not one of {', '.join(SCENARIOS)}", key="--scenario")
        if not 0 <= self.tts_first_byte_ms <= MAX_FIRST_BYTE_MS:
            raise UserError(f"time to first byte {self.tts_first_byte_ms} ms is outside 0..{MAX_FIRST_BYTE_MS}",
                            key="--tts-first-byte-ms")
        if self.listening not in LISTENING_MODES:
            raise UserError(f"listening {self.listening!r} is not one of {', '.join(LISTENING_MODES)}", key="--listening")
        if not 0 <= self.lead_in_seconds <= 10:
            raise UserError(f"a caller lead-in of {self.lead_in_seconds} s is outside 0..10 s", key="--scenario")
        if not 1 <= self.quiet_frames <= 500:
            raise UserError(f"{self.quiet_frames} quiet frames is outside 1..500", key="--cache")
        if self.phrase_frames is not None and self.phrase_frames < 1:
            raise UserError(f"a phrase of {self.phrase_frames} frames has no sound", key="--cache")
        if self.filler_tail_frames < 0:
            raise UserError(f"filler tail of {self.filler_tail_frames} frames is negative", key="--cache")
        if self.estimated_seconds > MAX_SECONDS:
            raise UserError(f"the run would take about {self.estimated_seconds:.0f} s (calls / rate, in waves of"
                            f" concurrency, plus hold), over the {MAX_SECONDS:.0f} s cap", key="--hold")
        if self.srtp is not None and self.scenario in LIVE_SCENARIOS:
            # Their payload classifier reads packets as they come off the socket: still encrypted.
            raise UserError(f"{self.scenario} is not measured with SRTP (its payload check reads the wire)",
                            key="--srtp")
        check_loopback(self.local_host)

    @property
    def simultaneous(self) -> int:
        return min(self.calls, self.concurrency)

    @property
    def estimated_seconds(self) -> float:
        waves = -(-self.calls // self.concurrency)
        return max(self.calls / self.rate, waves * self.hold) + self.hold

    def caller(self, index: int) -> str:
        """The calling number (docs/crm-rpc.md): synthetic client ``index + 1`` for greeting-returning
        (``+337`` and eight digits), else ``+336`` and eight digits, which no seeded CRM knows."""
        if self.scenario == "greeting-returning":
            return f"+337{index + 1:08d}"
        return f"+336{index:08d}"


@attrs.define
class ClassifiedHandle(MediaHandle):
    """A call's media with, per received RTP packet in arrival order, what its payload was
    (``fake_tts.SILENT``, ``SOUND`` or ``LIVE``)."""

    payload_classes: array.array = attrs.field(factory=lambda: array.array("B"))


class _ClassifyingSocket:
    """A call's RTP socket in the media process that classifies each payload it hands over.

    It sees exactly the packets the loop records (same checks: RTP version 2, not
    RTCP on the RTP port), so ``payload_classes`` lines up with ``arrivals``.
    Only the live scenarios pay for it; the greeting scenarios' loop is untouched.
    """

    def __init__(self, wrapped, classes: array.array):
        self._wrapped = wrapped
        self._classes = classes
        self.sendto = wrapped.sendto
        self.fileno = wrapped.fileno
        self.close = wrapped.close

    def recvmsg_into(self, buffers, ancillary_size):
        received = self._wrapped.recvmsg_into(buffers, ancillary_size)
        size, packet = received[0], buffers[0]
        if size >= 12 and packet[0] >> 6 == 2 and not 192 <= packet[1] <= 223:
            start = 12 + 4 * (packet[0] & 0x0F)  # RFC 3550 §5.1: header plus 4 bytes per CSRC
            self._classes.append(fake_tts.classify_payload(bytes(packet[start:size]), packet[1] & 0x7F))
        return received


class _ClassifyingLoop(rtp_engine.MediaLoop):
    compiled_receive = False  # the classifying socket wrapper must see every packet

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._classes: dict[int, array.array] = {}

    def _open(self, key: int) -> None:
        super()._open(key)
        media = self._calls[key]
        classes = self._classes[key] = array.array("B")
        media.socket = _ClassifyingSocket(media.socket, classes)

    def results(self, key: int) -> dict:
        return {**super().results(key), "payload_classes": self._classes[key]}


def _classifying_child(connection, caller_audio: bytes) -> None:
    # A spawned process of its own: swapping the loop class here changes nothing elsewhere.
    rtp_engine.MediaLoop = _ClassifyingLoop
    rtp_engine._child(connection, caller_audio)


class ClassifyingEngine(RtpEngine):
    """The RTP engine, recording what each received payload was (live TTS scenarios)."""

    def __init__(self, *, host: str, caller_audio: bytes, ports: range):
        super().__init__(host=host, caller_audio=caller_audio, ports=ports)
        self._process = multiprocessing.get_context("spawn").Process(
            target=_classifying_child, args=(self._child_end, caller_audio), name="eko-bench-rtp", daemon=True)

    def open_call(self) -> ClassifiedHandle:
        plain = super().open_call()
        handle = ClassifiedHandle(key=plain.key, port=plain.port)
        self._handles[handle.key] = handle
        return handle


@attrs.define
class CallRecord:
    """What happened to one call; times are kernel CLOCK_REALTIME ns."""

    index: int
    status: int | None = None
    reason: str = ""
    invite_sent_ns: int | None = None
    provisional_ns: int | None = None
    final_ns: int | None = None
    media: MediaHandle | None = None
    payload_type: int | None = None
    bye_status: int | None = None
    remote_hangup: bool = False
    call_id: str | None = None


@attrs.define
class RunResult:
    target: str
    plan: Plan
    records: list[CallRecord]
    idle: procstat.Sample | None
    steady: list[procstat.Sample]
    steady_seconds: float | None
    # The steady period on the arrival clock (CLOCK_REALTIME ns, as the kernel stamps packets).
    steady_window_ns: tuple[int, int] | None
    bench_cpu_seconds: float | None
    engine_busy_seconds: float
    engine_wall_seconds: float
    lateness_ns: list[int]
    sip_retransmissions: int
    sip_malformed: int
    duration_seconds: float
    media_cpu_seconds: float | None = None  # the media process alone, over the steady period
    # live scenarios: the fake endpoint's text -> (request read, first byte written), REALTIME ns
    tts_timings: dict = attrs.Factory(dict)
    # The server's RTP receive queues over the steady period (None: its port range is unknown):
    # the ports looked at, whose sockets, how many looks, each figure's largest value, the last look.
    rtp_ports: range | None = None
    rtp_queues_of: str | None = None
    rtp_queue_samples: int = 0
    rtp_queues_max: udp_queues.QueueSample | None = None
    rtp_queues_last: udp_queues.QueueSample | None = None
    # The bench's helper processes (name -> CPU seconds over the steady period), counted as the bench's.
    helper_cpu_seconds: dict = attrs.Factory(dict)
    # The server's child processes (name -> CPU seconds over the steady period): the recognizer
    # relay works for the server on another CPU (procstat.children; spinners left out).
    server_children_cpu_seconds: dict = attrs.Factory(dict)
    # A front's workers (--worker-pid): pid -> their samples over the steady period (None: gone by then).
    worker_samples: dict = attrs.Factory(dict)
    loadavg_before: str | None = None  # /proc/loadavg's first three fields
    loadavg_after: str | None = None
    asr_stats: dict | None = None  # listening with asr: the fake endpoint's counters
    hostile_sip: dict | None = None  # --hostile-sip: what the flood beside the calls sent (hostile_sip.Flood)


async def run_load(target: Target, plan: Plan, *, caller_audio: bytes, ports: range = BENCH_RTP_PORTS) -> RunResult:
    """Place ``plan.calls`` calls at ``target`` and record everything the report needs."""
    queues = _QueueWatch.for_target(target)  # first: it may refuse, before anything is open
    loadavg_before = read_loadavg()
    if plan.scenario in LIVE_SCENARIOS:
        engine = ClassifyingEngine(host=plan.local_host, caller_audio=caller_audio, ports=ports)
    elif plan.scenario == "listening":
        talk = caller_speech.caller_talk(caller_audio, lead_in_seconds=plan.lead_in_seconds)
        engine = RtpEngine(host=plan.local_host, caller_audio=caller_audio, ports=ports, talk=talk, classify_sound=True)
    else:
        engine = RtpEngine(host=plan.local_host, caller_audio=caller_audio, ports=ports)
    client = await open_sip_client(target, plan)
    if queues is not None:
        queues.exclude_ports.add(client.endpoint.local_port)
    records = [CallRecord(index=index) for index in range(plan.calls)]
    run_token = secrets.token_hex(4)
    settled = 0
    all_up = trio.Event()
    first_down = trio.Event()
    steady: list[procstat.Sample] = []
    bench_cpu: list[float] = []
    media_cpu: list[float] = []
    helper_cpu: dict[str, list[float]] = {name: [] for name in target.helpers}
    child_cpu: dict[int, tuple[str, list[float]]] = {}  # the server's children, found when the calls are up
    workers: dict[int, list[procstat.Sample | None]] = {pid: [] for pid in target.workers}  # a front's workers
    idle = procstat.sample(target.pid, time.monotonic()) if target.pid else None
    limiter = trio.CapacityLimiter(plan.concurrency)
    started = time.monotonic()

    def settle() -> None:
        nonlocal settled
        settled += 1
        if settled == plan.simultaneous:
            all_up.set()

    async def one_call(record: CallRecord) -> None:
        media = engine.open_call()
        record.media = media
        record.call_id = f"{run_token}-{record.index}@eko-bench"
        dialog = uac.Dialog(endpoint=client.endpoint, call_id=record.call_id,
                            from_tag=uac.new_tag(), caller=plan.caller(record.index))
        crypto = uac.srtp_offer(plan.srtp) if plan.srtp is not None else None
        offer = uac.sdp_offer(address=plan.local_host, rtp_port=media.port, session_id=record.index + 1, crypto=crypto)
        try:
            outcome, dialog = await client.invite(dialog, offer)
            record.status = outcome.status
            record.invite_sent_ns, record.provisional_ns, record.final_ns = (
                outcome.sent_ns, outcome.provisional_ns, outcome.final_ns)
            if not 200 <= outcome.status < 300:
                record.reason = outcome.response.reason if outcome.response else "no response (timeout)"
                settle()
                return
            try:
                answer = uac.parse_sdp_answer_untrusted(outcome.response.body)
                check_loopback(answer.address)
                keys = uac.srtp_keys_untrusted(crypto, answer) if crypto is not None else None
            except (uac.BenchProtocolError, UserError) as error:
                record.status, record.reason = PROTOCOL_ERROR_STATUS, f"unusable SDP answer: {error}"
                settle()
                await client.bye(dialog)
                return
            record.payload_type = answer.payload_type
            engine.start_sending(media, (answer.address, answer.port), answer.payload_type,
                                 event_payload_type=uac.TELEPHONE_EVENT_PAYLOAD_TYPE if plan.caller_events else None,
                                 srtp=keys)
            settle()
            hangup = client.remote_hangups.get(dialog.call_id)
            with trio.move_on_after(plan.hold):
                await hangup.wait()
                record.remote_hangup = True
            if queues is not None and not first_down.is_set():
                # The steady period's last look, before the first BYE: once the server has
                # it, it closes that call's sockets, and a look after that races the close.
                queues.look(time.monotonic(), last=True)
            first_down.set()
            if not record.remote_hangup:
                record.bye_status = await client.bye(dialog)
        except uac.BenchProtocolError as error:
            record.status, record.reason = PROTOCOL_ERROR_STATUS, str(error)
            settle()
        finally:
            engine.stop(media)

    async def place_calls() -> None:
        async with trio.open_nursery() as calls:
            t0 = trio.current_time()
            for record in records:
                await trio.sleep_until(t0 + record.index / plan.rate)
                await limiter.acquire_on_behalf_of(record.index)

                async def held(record=record) -> None:
                    try:
                        await one_call(record)
                    finally:
                        limiter.release_on_behalf_of(record.index)

                calls.start_soon(held)

    async def sample_steady() -> None:
        await all_up.wait()
        if target.pid:
            child_cpu.update({pid: (label, []) for pid, label in procstat.children(target.pid).items()})
        while True:
            if target.pid:
                found = procstat.sample(target.pid, time.monotonic())
                if found is not None:
                    steady.append(found)
                for pid, (_label, seconds) in child_cpu.items():
                    child = procstat.sample(pid, time.monotonic())
                    if child is not None:
                        seconds.append(child.cpu_ticks / procstat.CLOCK_TICKS)
            for pid, samples in workers.items():
                samples.append(procstat.sample(pid, time.monotonic()))  # None once it has gone
            usage = resource.getrusage(resource.RUSAGE_SELF)
            media_process = procstat.sample(engine.pid, time.monotonic())
            media_seconds = media_process.cpu_ticks / procstat.CLOCK_TICKS if media_process else 0.0
            helpers_seconds = 0.0
            for name, pid in target.helpers.items():
                helper = procstat.sample(pid, time.monotonic())
                seconds = helper.cpu_ticks / procstat.CLOCK_TICKS if helper else 0.0
                helper_cpu[name].append(seconds)
                helpers_seconds += seconds
            bench_cpu.append(usage.ru_utime + usage.ru_stime + media_seconds + helpers_seconds)
            media_cpu.append(media_seconds)
            if queues is not None and not first_down.is_set():
                queues.look(time.monotonic(), last=False)  # the last look is the first call's, before its BYE
            if first_down.is_set():
                return
            with trio.move_on_after(SAMPLE_INTERVAL):
                await first_down.wait()

    engine.start()
    steady_started = steady_ended = None
    steady_realtime = [0, 0]
    try:
        with trio.fail_after(plan.estimated_seconds + 60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.receive_loop)

                async def sampler() -> None:
                    nonlocal steady_started, steady_ended
                    await all_up.wait()
                    if first_down.is_set():
                        return  # a call hung up before the last was up: no steady period
                    steady_started = time.monotonic()
                    steady_realtime[0] = time.time_ns()
                    await sample_steady()
                    steady_ended = time.monotonic()
                    steady_realtime[1] = time.time_ns()

                nursery.start_soon(sampler)
                await place_calls()
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        raise UserError(f"the run against {target.name} at {target.host}:{target.port} did not finish within"
                        f" {plan.estimated_seconds + 60:.0f} s (its expected length plus 60 s)") from None
    except BaseExceptionGroup as group:
        # A call that hit a user error (no free RTP port pair) is said as such, not as a task traceback.
        user_errors = group.subgroup(UserError)
        if user_errors is None:
            raise
        first = user_errors.exceptions[0]
        while isinstance(first, BaseExceptionGroup):  # nurseries nest: calls inside place_calls inside the run
            first = first.exceptions[0]
        raise first from None
    finally:
        client.close()
        engine.close()
    steady_seconds = None
    if steady_started is not None and steady_ended is not None and steady_ended > steady_started:
        steady_seconds = steady_ended - steady_started
    return RunResult(
        target=target.name,
        plan=plan,
        records=records,
        idle=idle,
        steady=steady,
        steady_seconds=steady_seconds,
        steady_window_ns=tuple(steady_realtime) if steady_seconds is not None else None,
        bench_cpu_seconds=(bench_cpu[-1] - bench_cpu[0]) if len(bench_cpu) >= 2 else None,
        media_cpu_seconds=(media_cpu[-1] - media_cpu[0]) if len(media_cpu) >= 2 else None,
        engine_busy_seconds=engine.busy_seconds,
        engine_wall_seconds=engine.wall_seconds,
        lateness_ns=list(engine.lateness_ns),
        sip_retransmissions=client.retransmissions,
        sip_malformed=client.malformed,
        duration_seconds=time.monotonic() - started,
        rtp_ports=queues.ports if queues else None,
        rtp_queues_of=queues.whose if queues else None,
        rtp_queue_samples=queues.samples if queues else 0,
        rtp_queues_max=queues.worst if queues else None,
        rtp_queues_last=queues.last if queues else None,
        helper_cpu_seconds={name: seconds[-1] - seconds[0] for name, seconds in helper_cpu.items() if len(seconds) >= 2},
        server_children_cpu_seconds=_by_label(child_cpu),
        worker_samples=workers,
        loadavg_before=loadavg_before,
        loadavg_after=read_loadavg(),
    )


async def open_sip_client(target: Target, plan: Plan) -> SipClient:
    """The run's signalling: a UDP socket, or (``plan.tls``) one TLS connection to the target's TLS port."""
    if not plan.tls:
        return await SipClient.open(local_host=plan.local_host, target_host=target.host, target_port=target.port)
    if target.tls_port is None:
        raise UserError(f"{target.name} has no SIP-over-TLS port", key="--tls")
    try:
        return await SipClient.open(local_host=plan.local_host, target_host=target.host, target_port=target.tls_port,
                                    tls=target.tls_context())
    except (OSError, trio.BrokenResourceError, trio.TooSlowError) as error:
        cause = error.__cause__ or error
        raise UserError(f"no TLS connection to {target.host}:{target.tls_port}: {cause}", key="--tls") from None


def read_loadavg() -> str | None:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg says them (None where there is none)."""
    try:
        with open("/proc/loadavg", encoding="ascii") as handle:
            return " ".join(handle.read().split()[:3])
    except OSError:
        return None


def _by_label(child_cpu: dict[int, tuple[str, list[float]]]) -> dict[str, float]:
    """CPU seconds over the steady period per child name (two relays in a row add up)."""
    total: dict[str, float] = {}
    for label, seconds in child_cpu.values():
        if len(seconds) >= 2:
            total[label] = total.get(label, 0.0) + seconds[-1] - seconds[0]
    return total


class _QueueWatch:
    """Looks at the server's RTP receive queues at most once per ``QUEUE_SAMPLE_INTERVAL``.

    The server's sockets are listed once, at the first look: the steady period opens and
    closes no call, and reading a descriptor link per socket costs more than the look
    itself at hundreds of calls (the bench's SIP process shares its CPU with the media
    process).
    """

    def __init__(self, *, ports: range, pid: int | None, exclude_ports: set[int]):
        self.ports = ports
        self.pid = pid
        self.whose = f"pid {pid}" if pid else "any process"
        self.exclude_ports = exclude_ports
        self.samples = 0
        self.worst: udp_queues.QueueSample | None = None
        self.last: udp_queues.QueueSample | None = None
        self._inodes: frozenset[int] | None = None
        self._last_look = -float("inf")

    @classmethod
    def for_target(cls, target: Target) -> _QueueWatch | None:
        """None when the target's RTP ports are unknown. The SIP sockets (the server's here, the
        bench's once it is open) are left out: ephemeral ports may fall inside the RTP range."""
        if target.rtp_ports is None:
            return None
        if target.pid:
            try:
                udp_queues.socket_inodes(target.pid)
            except PermissionError:
                raise UserError(f"cannot read /proc/{target.pid}/fd to tell the server's sockets from others; run the"
                                " bench as the server's user, or leave out --server-rtp-ports", key="--server-pid") from None
        return cls(ports=target.rtp_ports, pid=target.pid, exclude_ports={target.port})

    def look(self, now: float, *, last: bool) -> None:
        """Sample if a look is due (always on the ``last`` one, at the end of the steady period)."""
        if not last and now - self._last_look < QUEUE_SAMPLE_INTERVAL:
            return
        self._last_look = now
        if self.pid and self._inodes is None:
            self._inodes = udp_queues.socket_inodes(self.pid)
            if self._inodes is None:
                return  # the server has gone; the run reports its calls
        found = udp_queues.sample(self.ports, inodes=self._inodes, exclude_ports=self.exclude_ports)
        self.samples += 1
        self.last = found
        self.worst = found if self.worst is None else self.worst.larger(found)
