"""A bench invocation end to end: set up targets, run the plan (or the ramp), tear down.

``--target server`` measures ``eko-rtp serve`` (spawned with ``--spawn`` or already
running at ``--address``), ``--target peer`` the pjsua2 reference bot, and
``--target both`` one after the other with the same harness, the peer at the
sizes it can take (PJSUA_MAX_CALLS = 4 in the PyPI wheel).

The ramp runs bounded steps of equal calls and concurrency and reports the largest
at which inter-arrival deviation p99 ≤ 2 ms, nothing was lost and every call was
answered; it stops after two failing steps in a row (one failure on a shared
machine can be a neighbour's burst). Each step holds its calls for
``hold`` seconds after the last one is up, so every step has a steady period.

The listening scenario spawns a server of its own for every run, configured for
the run's ``listening`` mode (``listen.vad``; with ``asr`` the bench's fake
speech-recognition endpoint is started first and named in the server's
environment). With ``compare_off`` each run is followed by the same run with
listening off, ``rounds`` times, so CPU per listening call can be read beside
CPU per call that nobody listens to, measured minutes apart on the same machine.

Encrypted calls (``plan.tls``, ``plan.srtp``): a spawned server gets a certificate
from a throwaway CA and the config for it (``encryption.py``), in the same single
``--config`` file as a scenario's own settings; a server at ``--address`` is reached
on that address as its SIP-over-TLS port, its certificate checked against
``--tls-ca`` (or the system's store).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile

import attrs
import trio

from pathlib import Path

from eko_bench import encryption, hostile_sip, noise, report, scripts, targets
from eko_bench.fake_asr import FakeAsr
from eko_bench.fake_tts import FakeTts
from eko_bench.run import BENCH_RTP_PORTS, LIVE_SCENARIOS, Plan, RunResult, run_load
from eko_rtp.errors import UserError
from eko_rtp.server.awake import keep_cpus_awake

log = logging.getLogger(__name__)

RAMP_STEPS = (50, 100, 200, 400, 700, 1000, 1400, 1800, 2500)
SCRIPT_OF = {"live-tts": "live_tts", "hybrid": "hybrid", "mixed": "mixed",  # server scripts in eko_bench.scripts
             "listening": "listening"}
MAX_ROUNDS = 10
RAMP_P99_MS = 2.0
SPAWN_ATTEMPTS = 3  # a spawned server that lost its SIP port to another process is started again
SERVER_FIRST_BYTE_TIMEOUT = 1.5  # s, the server's default [tts] first_byte_timeout
TTS_TIMEOUT_MARGIN = 0.5  # s the spawned server waits past the fake's time to first byte


@attrs.frozen(kw_only=True)
class Options:
    """Everything the command line decides."""

    target: str
    address: str | None
    spawn: bool
    server_cpus: set[int] | None = attrs.field(eq=False)
    server_pid: int | None
    cache_dir: str | None
    rtp_ports: str
    server_args: tuple[str, ...]
    plan: Plan
    ramp: bool
    bench_ports: range = BENCH_RTP_PORTS
    sizes: tuple[int, ...] = ()
    noise_probe: float = 0.0  # seconds of host wake-up probe on the server's CPUs before and after; 0: none
    keep_cpu_awake: bool = False  # SCHED_IDLE spinners on the target's CPUs (the server's own; the bench's for the peer)
    server_rtp_ports: range | None = None  # a running server's RTP ports (--address): its receive queues are sampled
    compare_off: bool = False  # listening: each run again with listening off
    rounds: int = 1  # listening with compare_off: how many (on, off) pairs
    hostile_sip: hostile_sip.HostileSip | None = None  # a flood of stuffed OPTIONS beside the server's calls
    tls_ca: str | None = None  # --address with --tls: the CA bundle the server's certificate chains to
    worker_pids: tuple[int, ...] = ()  # --address is a front: the workers behind it, whose CPU is sampled

    def __attrs_post_init__(self) -> None:
        if self.target not in ("server", "peer", "both"):
            raise UserError(f"target {self.target!r} is not server, peer or both", key="--target")
        if self.target in ("server", "both") and not self.spawn and self.address is None:
            raise UserError("measuring the server needs --spawn or --address HOST:PORT", key="--target")
        if self.spawn and self.address is not None:
            raise UserError("--spawn starts the server on a free port; leave out --address", key="--address")
        if self.target in ("peer", "both") and self.cache_dir is None:
            raise UserError("the peer plays the cache's phrases: give --cache DIR", key="--cache")
        if self.ramp and self.sizes:
            raise UserError("--ramp chooses its own sizes; leave out --sizes", key="--sizes")
        if self.ramp and self.target == "peer":
            raise UserError("the ramp goes to 1400 calls; the peer takes 4", key="--ramp")
        if self.plan.scenario in LIVE_SCENARIOS:
            if self.target != "server":
                raise UserError(f"{self.plan.scenario} measures the server's live TTS; the peer has none", key="--target")
            if self.ramp:
                raise UserError(f"the ramp measures the greeting scenarios, not {self.plan.scenario}", key="--ramp")
            if self.plan.scenario == "hybrid" and self.spawn and self.cache_dir is None:
                raise UserError(f"hybrid plays the cached {scripts.FILLER!r}: give --cache DIR", key="--cache")
        if self.plan.scenario == "listening":
            if self.target != "server":
                raise UserError("listening measures the server's barge-in; the peer does not listen", key="--target")
            if self.ramp:
                raise UserError("the ramp measures the greeting scenarios, not listening", key="--ramp")
            if self.spawn and self.cache_dir is None:
                raise UserError(f"listening plays the cached {scripts.LISTEN_PHRASE!r}: give --cache DIR", key="--cache")
            if not self.spawn and (self.plan.listening == "asr" or self.compare_off):
                raise UserError("the fake speech-recognition endpoint and listening off are set up in a server the"
                                " bench starts: give --spawn", key="--listening")
        elif self.plan.listening != "vad" or self.compare_off:
            raise UserError("--asr and --listening are for --scenario listening", key="--listening")
        if self.compare_off and self.plan.listening == "off":
            raise UserError("comparing listening off with listening off: leave out one of them", key="--listening")
        if not 1 <= self.rounds <= MAX_ROUNDS or (self.rounds > 1 and not self.compare_off):
            raise UserError(f"--rounds is 1 to {MAX_ROUNDS} pairs of runs, with --listening compare", key="--rounds")
        if self.keep_cpu_awake and (self.server_cpus is None or not self.spawn and self.target != "peer"):
            raise UserError("--keep-cpu-awake keeps the CPUs of a target the bench starts awake: give --server-cpus,"
                            " and --spawn for the server (a running one takes `eko-rtp serve --keep-cpu-awake`)",
                            key="--keep-cpu-awake")
        if self.server_rtp_ports is not None:
            if self.address is None:
                raise UserError("--server-rtp-ports names the RTP ports of a server at --address; a spawned server"
                                " uses --rtp-ports", key="--server-rtp-ports")
            ports, bench = self.server_rtp_ports, self.bench_ports
            if self.server_pid is None and ports.start < bench.stop and bench.start < ports.stop:
                raise UserError(f"the server's RTP ports {ports.start}-{ports.stop - 1} overlap the bench's own"
                                f" {bench.start}-{bench.stop - 1}: give --server-pid (its sockets are told apart by"
                                " process) or move --bench-rtp-ports", key="--server-rtp-ports")
        if self.worker_pids:
            if self.address is None:
                raise UserError("--worker-pid names the workers behind a front at --address", key="--worker-pid")
            if len(set(self.worker_pids)) != len(self.worker_pids):
                raise UserError("each worker's pid once", key="--worker-pid")
        if self.hostile_sip is not None and self.target != "server":
            raise UserError("--hostile-sip floods the server beside its calls: use --target server", key="--hostile-sip")
        encrypted = self.plan.tls or self.plan.srtp is not None
        if encrypted and self.target != "server":
            raise UserError("--tls and --srtp measure the server's encrypted calls; the peer has none", key="--target")
        if self.tls_ca is not None and (not self.plan.tls or self.spawn):
            raise UserError("--tls-ca is the CA of a running server's TLS certificate: with --tls and --address"
                            " (a spawned server's CA is the bench's own)", key="--tls-ca")
        if self.plan.tls and self.hostile_sip is not None and not self.spawn:
            raise UserError("with --tls, --address is the server's TLS port; --hostile-sip floods its UDP port:"
                            " use --spawn", key="--hostile-sip")
        if not 0 <= self.noise_probe <= noise.MAX_SECONDS:
            raise UserError(f"the noise probe runs 0 to {noise.MAX_SECONDS:g} s, not {self.noise_probe:g}", key="--noise-probe")


@attrs.frozen(kw_only=True)
class Outcome:
    results: list[RunResult]
    summaries: list[dict]
    ramp: dict | None
    notes: list[str]
    host_noise: list[dict] = attrs.Factory(list)  # noise.summarise() results, each with "when"


def _plan_for(plan: Plan, concurrency: int) -> Plan:
    calls = min(plan.calls, concurrency) if plan.calls <= plan.concurrency else plan.calls
    return attrs.evolve(plan, calls=calls, concurrency=concurrency)


async def _with_target(options: Options, kind: str, body):
    with contextlib.ExitStack() as stack:
        return await _with_target_in(stack, options, kind, body)


async def _with_target_in(stack: contextlib.ExitStack, options: Options, kind: str, body):
    host = options.plan.local_host
    fake = asr = None
    respawn = None  # how to start the spawned server again on another SIP port
    if kind == "peer":
        target = targets.spawn_peer(host=host, cache_dir=options.cache_dir, cpus=options.server_cpus, rtp_port=40000)
    elif options.spawn:
        extra = list(options.server_args)
        if options.keep_cpu_awake:
            extra.append("--keep-cpu-awake")
        if options.plan.scenario == "greeting-returning":
            crm = targets.spawn_crm(host=host, directory=stack.enter_context(tempfile.TemporaryDirectory(prefix="eko-bench-crm-")),
                                    clients=targets.CRM_CLIENTS)
            stack.callback(crm.stop)
            await targets.wait_listening(crm)
            extra += ["--crm", f"{crm.host}:{crm.port}"]
        env = None
        helpers = {}
        encrypted, tls_port, tls_files = _encryption(stack, options)
        if options.plan.scenario in LIVE_SCENARIOS:
            extra, env, fake = _live_tts_server(stack, options, extra, encrypted)
        elif options.plan.scenario == "listening":
            extra, env, asr = _listening_server(stack, options, extra, encrypted)
            if asr is not None:
                helpers["fake_asr"] = asr.pid
        elif encrypted:
            directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="eko-bench-config-"))
            extra = [*extra, "--config", _write_config(directory, encrypted)]

        def respawn() -> targets.Target:
            spawned = targets.spawn_server(host=host, cache_dir=options.cache_dir, cpus=options.server_cpus,
                                           rtp_ports=options.rtp_ports, extra=extra, env=env, helpers=helpers)
            spawned.tls_port = tls_port
            spawned.tls_trust = str(tls_files.ca) if tls_files is not None else None
            return spawned

        target = respawn()
    else:
        target_host, port = targets.parse_host_port(options.address, key="--address")
        target = targets.Target(name="server", host=target_host, port=port, pid=options.server_pid,
                                workers=options.worker_pids, rtp_ports=options.server_rtp_ports,
                                tls_port=port if options.plan.tls else None, tls_trust=options.tls_ca)
    try:
        # The server spins for itself (--keep-cpu-awake); the peer has no such option.
        async with _kept_awake(options.server_cpus if kind == "peer" and options.keep_cpu_awake else None):
            for attempt in range(1, SPAWN_ATTEMPTS + 1):
                try:
                    await targets.wait_ready(target, local_host=host, tls=options.plan.tls and kind == "server")
                    break
                except UserError:
                    # The free port the bench picked can be taken before the server binds it.
                    if respawn is None or attempt == SPAWN_ATTEMPTS or not targets.lost_its_sip_port(target):
                        raise
                    log.warning("the spawned server could not bind SIP port %d (taken since the bench picked"
                                " it); starting it again on another", target.port)
                    target.stop()
                    target = respawn()
            results = await _beside_hostile_sip(options, target, body)
    finally:
        target.stop()
    if fake is not None:  # live scenarios: the endpoint's own timings, for the report's split
        results = [attrs.evolve(result, tts_timings=dict(fake.timings)) for result in results]
    if asr is not None:  # the server has gone: every stream it opened has ended
        stats = asr.stop()
        results = [attrs.evolve(result, asr_stats=stats) for result in results]
    return results


async def _beside_hostile_sip(options: Options, target, body) -> list[RunResult]:
    """``body(target)``, with --hostile-sip's flood running for its whole length (each run's ramp-up,
    steady period and hang-ups); each result carries what the flood sent."""
    if options.hostile_sip is None:
        return await body(target)
    async with hostile_sip.flooding(options.hostile_sip, target=(target.host, target.port)) as flood:
        results = await body(target)
    return [attrs.evolve(result, hostile_sip=flood.summary()) for result in results]


@contextlib.asynccontextmanager
async def _kept_awake(cpus: set[int] | None):
    """The bench's own spinners on ``cpus`` (None: none) for the length of the block."""
    with _unwrapped():
        async with trio.open_nursery() as nursery:
            if cpus is not None:
                await nursery.start(keep_cpus_awake, sorted(cpus))
            yield
            nursery.cancel_scope.cancel()


@contextlib.contextmanager
def _unwrapped():
    """Let a lone error out of a nursery as itself, not in an ExceptionGroup.

    The bench's nurseries only hold spinners beside the real work, so an error is the
    work's own (a target out of ports, a target that never answered): the CLI reports
    a UserError as such, with exit status 2, and would not find it inside a group.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = []
        pending = [group]
        while pending:
            for error in pending.pop().exceptions:
                (pending if isinstance(error, BaseExceptionGroup) else leaves).append(error)
        if len(leaves) == 1:
            raise leaves[0] from None
        raise


def _encryption(stack: contextlib.ExitStack,
                options: Options) -> tuple[str, int | None, encryption.ServerTlsFiles | None]:
    """The spawned server's encryption config text ('' when the calls are in clear), its TLS port and the
    throwaway certificate's files (in a temporary directory removed with ``stack``)."""
    plan = options.plan
    tls_files = tls_port = None
    if plan.tls:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="eko-bench-tls-")))
        tls_files = encryption.issue_throwaway(directory, host=plan.local_host)
        tls_port = targets.free_tcp_port(plan.local_host)
    return encryption.server_config(tls=tls_files, tls_port=tls_port, srtp=plan.srtp), tls_port, tls_files


def _write_config(directory: str, text: str) -> str:
    config = f"{directory}/eko-rtp.toml"
    with open(config, "w", encoding="utf-8") as handle:
        handle.write(text)
    return config


def _live_tts_server(stack: contextlib.ExitStack, options: Options, extra: list[str],
                     encrypted: str = "") -> tuple[list[str], dict, FakeTts]:
    """Start the fake endpoint (stopped with ``stack``) and say how the server reaches it: the
    scenario's script, a config whose dynamic cache is a fresh temporary directory, the env."""
    plan = options.plan
    fake = stack.enter_context(FakeTts(host=plan.local_host, first_byte_delay=plan.tts_first_byte_ms / 1000))
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="eko-bench-tts-"))
    lines = ["[tts]", f'dynamic_cache_dir = "{directory}/dynamic"']
    first_byte = plan.tts_first_byte_ms / 1000
    if first_byte + TTS_TIMEOUT_MARGIN > SERVER_FIRST_BYTE_TIMEOUT:
        # Past the server's own budget every call would give up and play its error phrase.
        lines.append(f"first_byte_timeout = {first_byte + TTS_TIMEOUT_MARGIN}")
    config = _write_config(directory, "\n".join(lines) + "\n" + encrypted)
    function = SCRIPT_OF[plan.scenario]
    return ([*extra, "--config", config, "--script", f"{scripts.__name__}:{function}"],
            {"ELEVENLABS_API_KEY": fake.api_key, "ELEVENLABS_BASE_URL": fake.base_url}, fake)


def _listening_server(stack: contextlib.ExitStack, options: Options, extra: list[str],
                      encrypted: str = "") -> tuple[list[str], dict, FakeAsr | None]:
    """The listening script, a config for the run's mode (``listen.vad``), and with ``asr`` the
    fake endpoint (stopped with ``stack``) in the server's environment."""
    plan = options.plan
    directory = stack.enter_context(tempfile.TemporaryDirectory(prefix="eko-bench-listening-"))
    # The dynamic TTS cache in the temporary directory too: the script speaks only cached
    # phrases, but the server opens its dynamic cache at start (default: under the cwd).
    config = _write_config(directory, f"[listen]\nvad = {'false' if plan.listening == 'off' else 'true'}\n"
                                      f'[tts]\ndynamic_cache_dir = "{directory}/dynamic"\n' + encrypted)
    env = {}
    asr = None
    if plan.listening == "asr":
        asr = stack.enter_context(FakeAsr(host=plan.local_host))
        env = {"DEEPGRAM_API_KEY": asr.api_key, "DEEPGRAM_BASE_URL": asr.base_url}
    return [*extra, "--config", config, "--script", f"{scripts.__name__}:{SCRIPT_OF['listening']}"], env, asr


async def _ramp(options: Options, caller_audio: bytes) -> tuple[list[RunResult], dict]:
    async def body(target):
        results, steps = [], []
        largest = None
        for step in RAMP_STEPS:
            plan = attrs.evolve(options.plan, calls=step, concurrency=step,
                                hold=options.plan.hold + step / options.plan.rate)
            result = await run_load(target, plan, caller_audio=caller_audio, ports=options.bench_ports)
            summary = report.summarise(result)
            # "at N concurrent calls": judged on the steady period (every call up), not the ramp-up
            p99 = summary["interarrival_deviation_steady_ms"]["p99"]
            passed = (summary["calls"]["answered"] == step and summary["packets"]["lost"] == 0
                      and p99 is not None and p99 <= RAMP_P99_MS)
            results.append(result)
            steps.append({"concurrent": step, "answered": summary["calls"]["answered"], "deviation_p99_ms": p99,
                          "lost": summary["packets"]["lost"], "server_cpu_percent": (summary["server"] or {}).get("cpu_percent"),
                          "bench_saturated": summary["bench"]["saturated"], "passed": passed})
            if passed:
                largest = step
            elif len(steps) >= 2 and not steps[-2]["passed"]:
                break  # two failures in a row: the rest would fail too
        return results, {"criterion": f"steady-period deviation p99 <= {RAMP_P99_MS} ms, no loss, all answered",
                         "steps": steps, "largest_passing": largest}

    return await _with_target(options, "server", body)


async def run(options: Options, *, caller_audio: bytes) -> Outcome:
    """Run what ``options`` asks for and summarise it, between two host wake-up probes."""
    targets.pin_bench_away_from(options.server_cpus)
    probing = options.noise_probe > 0 and options.server_cpus is not None
    before = await _probe_host(options, "before the run") if probing else None
    outcome = await _run_plans(options, caller_audio=caller_audio)
    if probing:
        after = await _probe_host(options, "after the run")
        outcome = attrs.evolve(outcome, host_noise=[before, after])
    return outcome


async def _probe_host(options: Options, when: str) -> dict:
    """The probe on the target's CPUs, beside the same spinners the target runs with, if any."""
    if options.keep_cpu_awake:
        when += ", the CPU kept awake as the target's is"
    async with _kept_awake(options.server_cpus if options.keep_cpu_awake else None):
        summary = await trio.to_thread.run_sync(noise.measure, options.server_cpus, options.noise_probe)
    return {**summary, "when": when}


async def _run_plans(options: Options, *, caller_audio: bytes) -> Outcome:
    notes: list[str] = []
    if options.ramp:
        results, ramp = await _ramp(options, caller_audio)
        return Outcome(results=results, summaries=[report.summarise(result) for result in results], ramp=ramp, notes=notes)
    if options.plan.scenario == "greeting-returning":
        if not options.spawn and options.target != "peer":
            notes.append("greeting-returning against --address: the server must already use a CRM seeded with"
                         f" `eko-rtp crm seed --synthetic {options.plan.calls}` (callers +337 and eight digits)")
        if options.target in ("peer", "both"):
            notes.append("peer: it looks nobody up; it plays the same greeting whatever the scenario")
    if options.plan.scenario in LIVE_SCENARIOS and not options.spawn:
        notes.append(f"{options.plan.scenario} against --address: the server must already run --script"
                     f" {scripts.__name__}:{SCRIPT_OF[options.plan.scenario]} with"
                     f" ELEVENLABS_BASE_URL at an endpoint answering after {options.plan.tts_first_byte_ms:.0f} ms and"
                     f" rendering eko_bench.fake_tts.live_audio (only --spawn starts one)")
    if options.plan.scenario == "listening" and not options.spawn:
        notes.append(f"listening against --address: the server must already run --script"
                     f" {scripts.__name__}:{SCRIPT_OF['listening']} with the cached {scripts.LISTEN_PHRASE!r}"
                     " (only --spawn sets up its listening mode)")
    if options.keep_cpu_awake:
        notes.append(f"--keep-cpu-awake: SCHED_IDLE spinners kept CPU(s) {sorted(options.server_cpus)} from halting"
                     " (the server's own; the bench's for the peer); the target's CPU row counts its own process"
                     " only, and its other children (the recognizer relay) have rows of their own")
    if options.plan.scenario == "listening" and options.spawn:
        results = await _listening_runs(options, caller_audio)
        return _outcome(results, notes)
    results: list[RunResult] = []
    kinds = ["server", "peer"] if options.target == "both" else [options.target]
    cap = targets.PEER_MAX_CALLS
    for kind in kinds:
        plans = [options.plan] if not options.sizes else [
            attrs.evolve(options.plan, calls=size, concurrency=size) for size in options.sizes]
        if kind == "peer" and options.target == "both":
            if options.sizes:
                skipped = [plan.concurrency for plan in plans if plan.concurrency > cap]
                plans = [plan for plan in plans if plan.concurrency <= cap]
                if skipped:
                    notes.append(f"peer: pjsua2-python is built with PJSUA_MAX_CALLS={cap}; not measured at"
                                 f" {', '.join(map(str, skipped))} concurrent calls")
            elif options.plan.concurrency > cap:
                plans = [_plan_for(options.plan, cap)]
                notes.append(f"peer: pjsua2-python is built with PJSUA_MAX_CALLS={cap}; measured at"
                             f" {cap} concurrent calls, the server at {options.plan.concurrency}")
        elif kind == "peer" and max(plan.concurrency for plan in plans) > cap:
            notes.append(f"peer: pjsua2-python is built with PJSUA_MAX_CALLS={cap}; calls beyond"
                         f" {cap} at once are refused by pjsua (486)")
        if not plans:
            continue

        async def body(target, plans=plans):
            return [await run_load(target, plan, caller_audio=caller_audio, ports=options.bench_ports) for plan in plans]

        results.extend(await _with_target(options, kind, body))
    return _outcome(results, notes)


async def _listening_runs(options: Options, caller_audio: bytes) -> list[RunResult]:
    """Each listening run against a server of its own, set up for the run's mode; with
    ``compare_off`` each is followed by the same run with listening off."""
    sizes = [options.plan] if not options.sizes else [
        attrs.evolve(options.plan, calls=size, concurrency=size) for size in options.sizes]
    plans = []
    for plan in sizes:
        if options.compare_off:
            plans += [plan, attrs.evolve(plan, listening="off")] * options.rounds
        else:
            plans.append(plan)
    results: list[RunResult] = []
    for plan in plans:
        async def body(target, plan=plan):
            return [await run_load(target, plan, caller_audio=caller_audio, ports=options.bench_ports)]

        one_run = attrs.evolve(options, plan=plan, compare_off=False, rounds=1)
        results.extend(await _with_target(one_run, "server", body))
    return results


def _outcome(results: list[RunResult], notes: list[str]) -> Outcome:
    summaries = [report.summarise(result) for result in results]
    for summary in summaries:
        if summary["steady_seconds"] is None:
            notes.append(f"{summary['target']}: no steady period (hold shorter than the ramp-up of calls / rate);"
                         f" CPU and RSS were not sampled")
        notes.extend(bench_notes(summary))
        flood = summary.get("hostile_sip")
        if flood is not None:
            notes.append(f"{summary['target']}: --hostile-sip sent {flood['sent']} OPTIONS of {flood['size']} bytes from"
                         f" {flood['source']} ({flood['achieved_rate']}/s over {flood['seconds']:.0f} s, worst"
                         f" {flood['max_lateness_ms']} ms behind schedule); {flood['responses']} answered,"
                         f" {flood['send_errors']} send errors")
    return Outcome(results=results, summaries=summaries, ramp=None, notes=notes)


def bench_notes(summary: dict) -> list[str]:
    """What a reader must know about the bench itself in this run."""
    bench = summary["bench"]
    if bench["saturated"]:
        return [f"{summary['target']}: the bench was saturated (CPU {bench['cpu_percent'] or 0:.0f}% of a core, media process"
                f" {bench['media_process_cpu_percent'] or 0:.0f}%): the load offered was less than planned"]
    if bench["late_sending"]:
        return [f"{summary['target']}: the bench sent caller RTP late (slot lateness p99"
                f" {bench['send_lateness_ms']['p99']:.1f} ms) with its media process {bench['media_process_cpu_percent'] or 0:.0f}%"
                f" busy: it was preempted; received figures are kernel timestamps and stay valid"]
    return []


def run_sync(options: Options, *, caller_audio: bytes) -> Outcome:
    return trio.run(lambda: run(options, caller_audio=caller_audio))
