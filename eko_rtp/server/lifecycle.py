"""The process around the server: systemd readiness and watchdog, metrics, signals.

Theory of operation: :func:`run_service` starts the pieces in one nursery (CRM
client, metrics endpoint, watchdog, the server), tells systemd ``READY=1`` once the
cache is loaded and the SIP sockets are bound, then waits for signals:

- SIGHUP (``systemctl reload``): re-read the config file and the phrase cache and
  load the script. New calls use them; calls in progress keep the cache and script
  they started with (their memory maps live as long as they hold them). A broken
  config, catalogue, script or a cache that would lose phrases is refused with one
  log line and the running setup stays.
- SIGTERM / SIGINT: drain (new INVITEs and OPTIONS get 503 with Retry-After, calls
  in progress go on for up to ``service.drain_grace_seconds``, then BYE), then exit 0.

``STATUS=`` tells systemd how many calls are active, and when no new call could
succeed, why (``server/health.py``), updated when calls start or end or the health
changes (at most once a second). Nothing here knows SIP or RTP.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import time
from functools import partial
from typing import Callable

import attrs
import trio

from eko_rtp.cache.watch import watch_cache_files
from eko_rtp.errors import UserError
from eko_rtp.server.awake import cpu_list, keep_cpus_awake, spinner_cpus
from eko_rtp.server.server import EkoServer
from eko_rtp.service.log_deferral import hold_logs_until_idle
from eko_rtp.service.metrics import Metrics, MetricsSettings, serve_metrics
from eko_rtp.service.notify import Notifier, run_watchdog

log = logging.getLogger("eko_rtp.service")

STATUS_INTERVAL = 1.0
COUNTER_SYNC_INTERVAL = 1.0
FULL_COLLECTION_MIN_INTERVAL = 30.0  # seconds between full collections when the server goes idle
FULL_COLLECTION_MAX_INTERVAL = 600.0  # ...and at the latest this often, even under load
YOUNG_COLLECTION_THRESHOLD = 10_000
RESTART_KEYS = ("media.cpus", "media.keep_cpu_awake", "service.log_level")  # read once at start; a reload only warns


class Setup:
    """What a reload replaces: the config, the phrase cache and the call script."""

    def __init__(self, config, cache, script):
        self.config = config
        self.cache = cache
        self.script = script


def check_reload(current: Setup, new: Setup) -> str | None:
    """Why ``new`` must be refused, or None: a reload must not lose phrases we can play."""
    lost = sorted(set(current.cache.keys()) - set(new.cache.keys()))
    if lost:
        return f"the new cache lacks {len(lost)} phrase(s) the running one has: {', '.join(lost[:5])}"
    return None


async def run_service(
    *,
    setup: Setup,
    load_setup: Callable[[], Setup],
    crm_address,
    tts,
    asr=None,
    sip_credentials=None,
    notifier: Notifier | None = None,
    metrics: Metrics | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Run until SIGTERM/SIGINT has drained the server."""
    from eko_rtp.crm.client import CrmClient

    notifier = notifier or Notifier.from_environment()
    metrics = metrics or Metrics.create()
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_logs_until_idle)  # INFO lines written when the loop idles
            await nursery.start(run_watchdog, notifier)
            metrics_address = await nursery.start(serve_metrics, metrics, MetricsSettings.from_config(setup.config))
            if metrics_address is not None:
                log.info("metrics on http://%s/metrics", metrics_address)
            crm = None
            if crm_address is not None:
                crm = CrmClient(crm_address)
                await nursery.start(crm.run)  # a CRM that is down only means standard greetings
            if setup.config["media.keep_cpu_awake"]:
                cpus = spinner_cpus(os.sched_getaffinity(0), os.cpu_count() or 1)
                pids = await nursery.start(partial(keep_cpus_awake, cpus, on_count=metrics.cpus_kept_awake.set))
                log.info("keeping CPU(s) %s awake with SCHED_IDLE spinners (pids %s)",
                         cpu_list(cpus), ", ".join(map(str, pids)))
            server = EkoServer(
                config=setup.config, cache=setup.cache, script=setup.script, crm=crm, tts=tts, metrics=metrics,
                asr=asr, sip_credentials=sip_credentials,
            )
            bound = await nursery.start(server.run)
            nursery.start_soon(_report_status, server, notifier)
            nursery.start_soon(_collect_garbage, server)
            nursery.start_soon(_sync_counters, server, metrics, tts)
            nursery.start_soon(watch_cache_files, lambda: server.cache)  # files changed on disk: logged
            notifier.ready(status=_status_text(server))
            task_status.started(bound)
            async for signum in signals:
                if signum == signal.SIGHUP:
                    setup = _reload(server, setup, load_setup, notifier)
                    continue
                log.info("%s received: draining", signal.Signals(signum).name)
                notifier.stopping(status=f"draining {len(server.calls)} call(s)")
                metrics.draining.set(1)
                await server.drain(server.config["service.drain_grace_seconds"])
                log.info("drained; exiting")
                nursery.cancel_scope.cancel()
                break


def _reload(server: EkoServer, current: Setup, load_setup, notifier: Notifier) -> Setup:
    notifier.reloading()
    try:
        new = load_setup()
        problem = check_reload(current, new)
        if problem is None:
            server.replace_setup(config=new.config, cache=new.cache, script=new.script)
    except (UserError, ValueError, OSError) as error:
        problem = str(error)
    if problem is not None:
        log.error("reload refused, keeping the running configuration and cache: %s", problem)
        notifier.ready(status=_status_text(server))
        return current
    log.info("reloaded: %d cached phrases; calls in progress keep their audio", len(new.cache))
    for key in RESTART_KEYS:
        if new.config[key] != current.config[key]:
            log.warning("%s changed: it takes effect when the server restarts", key)
    notifier.ready(status=_status_text(server))
    return new


async def _collect_garbage(server: EkoServer) -> None:
    """Keep Python's full (generation 2) collections away from calls in progress.

    A full collection scans every live object and stops the event loop while it does:
    with hundreds of calls that is tens of milliseconds, heard as a gap on every call.
    Calls free their own objects by reference counting (the server breaks the cycles a
    call leaves), so little garbage ever needs a full collection. This task freezes the
    start-up objects out of the collector's sight, switches automatic full collections
    off, and runs one when the server has no call in progress (at most every 30 s),
    or every 10 minutes whatever the load, logging how long it took.
    """
    gc.collect()
    gc.freeze()
    # Young collections scan only what survived since the last one; in steady state that
    # is little (packets' tuples die at once by refcount), so run them less often.
    gc.set_threshold(YOUNG_COLLECTION_THRESHOLD, 20, 1_000_000_000)
    last_full = trio.current_time()
    while True:
        with trio.move_on_at(last_full + FULL_COLLECTION_MAX_INTERVAL):
            while True:
                await server.calls_changed.wait()
                if not server.calls and trio.current_time() - last_full >= FULL_COLLECTION_MIN_INTERVAL:
                    break
        started = time.perf_counter()
        found = gc.collect()
        last_full = trio.current_time()
        log.info(
            "full garbage collection with %d call(s) in progress: %d unreachable object(s), %.1f ms",
            len(server.calls),
            found,
            (time.perf_counter() - started) * 1000,
        )


def _status_text(server: EkoServer) -> str:
    state = "draining, " if server.draining else ""
    registration = f"; {server.registration_summary}" if server.registration_summary else ""
    problem = server.health.problem
    health = f"; UNHEALTHY, OPTIONS and new calls get 503: {problem}" if problem is not None else ""
    return f"{state}{len(server.calls)} active call(s){registration}{health}"


async def _report_status(server: EkoServer, notifier: Notifier) -> None:
    if not notifier.enabled:
        return
    sent = _status_text(server)  # what READY=1 said
    while True:
        text = _status_text(server)
        if text == sent:
            await server.calls_changed.wait()
            continue
        notifier.status(text)
        sent = text
        # At most one update a second, however busy; what changed meanwhile is sent after.
        await trio.sleep(STATUS_INTERVAL)


async def _sync_counters(server: EkoServer, metrics: Metrics, tts) -> None:
    """Copy the hot path's plain counters into Prometheus once a second (no locks per frame)."""
    last_sent = last_late = last_received = last_backlogs = last_stray = 0
    last_characters: dict[str, int] = {}
    last_cost = 0.0
    last_hits = last_misses = 0
    last_asr_seconds = 0.0
    last_barge_ins = 0
    last_followups_lost = 0
    last_asr_failures: dict[str, int] = {}
    last_srtp_dropped: dict = {}
    last_stream: dict[tuple[str, str], int] = {}
    while True:
        transport = server.transport  # no log line: the transport logs its refusals, throttled
        for name, stream in transport.stream_counters.items():
            for field, total in attrs.asdict(stream).items():
                metrics.stream_counter(name, field).inc(total - last_stream.get((name, field), 0))
                last_stream[name, field] = total
            metrics.sip_connections_open.labels(transport=name).set(transport.open_connections(name))
        calls = server.counters
        metrics.asr_seconds.inc(calls.asr_seconds - last_asr_seconds)
        metrics.barge_ins.inc(calls.barge_ins - last_barge_ins)
        last_asr_seconds, last_barge_ins = calls.asr_seconds, calls.barge_ins
        lost = server.handover.followup_failures
        metrics.followups_lost.inc(lost - last_followups_lost)
        last_followups_lost = lost
        for kind, count in calls.asr_failures.items():
            metrics.asr_failures.labels(kind=kind).inc(count - last_asr_failures.get(kind, 0))
            last_asr_failures[kind] = count
        counters = server.media_counters
        metrics.frames_sent.inc(counters.frames_sent - last_sent)
        metrics.frames_late.inc(counters.frames_late - last_late)
        if counters.frames_late > last_late:
            log.warning(
                "%d RTP frame(s) sent late in the last second (worst so far %.1f ms behind schedule)",
                counters.frames_late - last_late,
                counters.max_lateness * 1000,
            )
        last_sent, last_late = counters.frames_sent, counters.frames_late
        metrics.packets_received.inc(counters.packets_received - last_received)
        metrics.packets_stray.inc(counters.packets_stray - last_stray)  # no log line: an attack must not flood it
        last_stray = counters.packets_stray
        srtp = server.srtp_counters  # no log line either: forged packets must not flood it
        for reason in srtp.rtp:
            dropped = srtp.rtp[reason] + srtp.rtcp[reason]
            metrics.srtp_dropped.labels(reason=reason.value).inc(dropped - last_srtp_dropped.get(reason, 0))
            last_srtp_dropped[reason] = dropped
        if counters.receive_backlogs > last_backlogs:
            metrics.receive_backlogs.inc(counters.receive_backlogs - last_backlogs)
            log.warning(
                "the receive path fell behind %d time(s) in the last second: callers send faster than it drains",
                counters.receive_backlogs - last_backlogs,
            )
        last_received, last_backlogs = counters.packets_received, counters.receive_backlogs
        if tts is not None:
            total = tts.accounting.total()
            backend = "espeak" if tts.backend.name.startswith("espeak") else tts.backend.name
            characters = total.characters
            metrics.tts_characters.labels(backend=backend).inc(characters - last_characters.get(backend, 0))
            last_characters[backend] = characters
            metrics.tts_cost.inc(max(0.0, total.cost_usd - last_cost))
            last_cost = total.cost_usd
            metrics.cache_hits.labels(cache="dynamic").inc(total.cache_hits - last_hits)
            metrics.cache_misses.labels(cache="dynamic").inc(total.cache_misses - last_misses)
            last_hits, last_misses = total.cache_hits, total.cache_misses
        await trio.sleep(COUNTER_SYNC_INTERVAL)
