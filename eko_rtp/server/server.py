"""The server: SIP transport, the SIP core, the media shell, and the calls' nurseries.

Theory of operation: every SIP message the transport receives goes into the one
sans-I/O :class:`UserAgent`; after each input (a message, a timer) :meth:`_flush`
drains the core's events synchronously: ``Transmit`` goes straight out of the
transport, ``IncomingCall`` opens the call's RTP port pair, lets its
:class:`MediaSession` answer the offer, builds the :class:`Call` and starts
:meth:`Call.run` (the call's own nursery) in the server's call nursery, and the
in-dialog events go to the call they belong to. The SIP timer task sleeps until the
core's next deadline. The frame clock and the receive hub are shared by every call.
A call reaches the server only through the :class:`CallLine` it was given (answer,
hang up, count a phrase); when its ``run`` returns, the server gives back its
sockets and ports and reports it (log, metrics, ``crm.log_call``).

Answering is synchronous: :meth:`answer_call` asks the core for the 200 OK, flushes
it to the wire and sends the stream's first frame in the same step, so the
greeting's first packet follows the 200 OK by microseconds, not by a clock tick.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import time
from pathlib import Path
from typing import Any

import trio

import attrs

from eko_rtp.asr.relay_client import AsrRelay, relay_cpus
from eko_rtp.call.barge_in import BargeIn
from eko_rtp.call.call import Call, CallLine, CallTimers, Script
from eko_rtp.call.digits import DigitQueue
from eko_rtp.call.ears import CallerAudio
from eko_rtp.call.recording import CallRecorder, recording_path, sweep_recordings
from eko_rtp.call.speech import CallSpeech, SpeechSetup
from eko_rtp.call.greeting import caller_numbers
from eko_rtp.call.lookup import CallerLookup
from eko_rtp.call.handover import HandoverDesk
from eko_rtp.config import (Config, admission_settings, business_hours, latch_policy, srtp_policy, transfer_targets,
                            vad_settings)
from eko_rtp.crm.records import CallLog, is_word
from eko_rtp.errors import UserError
from eko_rtp.media import mmsg, sdp
from eko_rtp.media.clock import FrameClock
from eko_rtp.media.negotiation import MediaSession
from eko_rtp.media.playout import PlayoutQueue
from eko_rtp.media.ports import PortsExhausted, RtpPortPool
from eko_rtp.media.receiver import ReceiveHub
from eko_rtp.media.shared_port import SharedLeg, SharedMediaPort
from eko_rtp.media.srtp import SrtpCounters
from eko_rtp.media.stream import ARRIVAL_SAMPLING, MediaCounters, MediaStream, silence_frame
from eko_rtp.media.vad import VoiceActivityDetector, require_webrtcvad
from eko_rtp.media.wav import WavEncoding
from eko_rtp.server.health import Condition, Health, missing_essential_phrases
from eko_rtp.server.tls import ServerTls, TlsSettings
from eko_rtp.server.transport import SipTransport, TcpLimits
from eko_rtp.server.warm_up import warm_up
from eko_rtp.service.logs import LogBudget, SipTrace, call_context
from eko_rtp.sip import events as ua_module
from eko_rtp.sip.admission import Admission
from eko_rtp.sip.registration import RegistrationSettings
from eko_rtp.sip.session_timer import SessionTimerSettings
from eko_rtp.sip.uri import format_host_port, parse_uri
from eko_rtp.transfer.load import LoadWindow
from eko_rtp.sip.useragent import UserAgent, UserAgentSettings

log = logging.getLogger("eko_rtp.server")

RECORDING_SWEEP_INTERVAL = 3600.0  # s between two sweeps of old recordings
ANSWER_WRITE_WAIT = 0.5  # s the first frame waits at most for a 200 OK queued on a TCP or TLS connection
# Lines written once per received datagram (LogBudget): a burst, then a few a second,
# the rest summed up once a second; a flood of bad SIP must not fill the journal.
BAD_SIP_LOG_BURST, BAD_SIP_LOG_PER_SECOND = 100, 10.0
INTERNAL_ERROR_LOG_BURST, INTERNAL_ERROR_LOG_PER_SECOND = 10, 1.0  # each with its traceback
PROBE_INTERVAL = 1.0  # s between two tries at an RTP port pair while ports or descriptors ran out
DESCRIPTORS_EXHAUSTED = (errno.EMFILE, errno.ENFILE)  # the process's limit, the system's
PROBED = (Condition.RTP_PORTS, Condition.FILE_DESCRIPTORS)  # health conditions only a new try can clear



class ServerCounters:
    def __init__(self) -> None:
        self.calls_started = 0
        self.calls_by_outcome: dict[str, int] = {}
        self.calls_rejected = 0
        self.sip_rejected = 0
        self.internal_errors = 0
        self.asr_seconds = 0.0  # caller audio streamed to speech recognition
        self.asr_failures: dict[str, int] = {}  # by kind (AsrUnauthorized, AsrDropped, ...)
        self.barge_ins = 0  # phrases the caller spoke over


class EkoServer:
    """One running server; ``await nursery.start(server.run)`` returns the bound addresses."""

    def __init__(
        self, *, config: Config, cache: Any, script: Script, crm: Any = None, tts: Any = None, metrics: Any = None,
        clock: FrameClock | None = None, asr: SpeechSetup | None = None, sip_credentials=None,
    ):
        """``clock`` is the frame clock: by default a precise one (timerfd, real time);
        tests under trio's mock clock give ``FrameClock()``, which sleeps on trio's."""
        self.config = config
        self.metrics = metrics
        self.cache = cache
        self.script = script
        self.crm = crm
        self.tts = tts
        listen = config.sip_listen
        self.media_address = config.media_address  # what our SDP says
        low, high = config.rtp_ports
        self.ports = RtpPortPool(listen.host, low, high)  # where RTP binds: the SIP interface (or all)
        self.clock = clock if clock is not None else FrameClock(precise=True)
        self.asr = asr  # None: no speech recognition (DTMF only)
        # asr.relay: the recognizer streams in a child process off the media core (or None: here).
        self.asr_relay = (AsrRelay(cpus=relay_cpus(config["asr.relay_cpus"]))
                          if asr is not None and config["asr.relay"] else None)
        self.sip_credentials = sip_credentials  # digest answers when the trunk asks (RFC 8760), or None
        self.handover = HandoverDesk(hours=business_hours(config), targets=transfer_targets(config),
                                     load=LoadWindow(config["transfer.max_per_window"],
                                                     config["transfer.window_seconds"]), crm=crm)
        self.registration_summary = "" if not config["registration.registrar"] else "not registered yet"
        self.registered: bool | None = None  # None: the trunk is not registration-based
        self.registration_changed = trio.Event()
        # Recordings' disk writes share a few worker threads: a slow disk cannot take them all.
        self._recording_limiter = trio.CapacityLimiter(4)
        self.vad_settings = vad_settings(config)
        _load_vad(self.vad_settings)
        self.latch_policy = latch_policy(config)  # who may send a call media, where it may go (media/latch.py)
        self.srtp_policy = srtp_policy(config)  # when calls are encrypted (media/negotiation.py)
        self.srtp_counters = SrtpCounters()  # SRTP/SRTCP packets dropped, by reason (metrics)
        self.hub = ReceiveHub(clock=self.clock)
        # media.rtp_socket = "shared": the trunk's calls on one port pair, opened at start.
        self.shared_port: SharedMediaPort | None = None
        self.media_counters = MediaCounters()
        self.counters = ServerCounters()
        self._bad_sip_log = LogBudget(burst=BAD_SIP_LOG_BURST, per_second=BAD_SIP_LOG_PER_SECOND)
        self._internal_error_log = LogBudget(burst=INTERNAL_ERROR_LOG_BURST, per_second=INTERNAL_ERROR_LOG_PER_SECOND)
        self.transport = SipTransport(
            host=listen.host,
            port=listen.port,
            transports=config["sip.transports"],
            max_message_size=config["sip.max_message_size"],
            deliver=self.receive,
            trace=_sip_trace(config, None),
            tcp_limits=TcpLimits.from_config(config),
            on_descriptors_exhausted=self._descriptors_exhausted,
            # SIP over TLS: the certificate is read now, so a broken one stops the start, naming the file.
            tls=ServerTls(TlsSettings.from_config(config)) if "tls" in config["sip.transports"] else None,
            tls_port=config["sip.tls_port"],
        )
        self.ua: UserAgent | None = None
        self.calls: dict[str, Call] = {}
        self._call_nursery: trio.Nursery | None = None
        # While answer_call flushes: what went to TCP/TLS writers (None: not collecting).
        self._stream_writes: list[trio.Event] | None = None
        self._timer_wakeup = trio.Event()
        self._timer_deadline = float("inf")
        self._origin_ids = itertools.count(int(time.time()))
        self.codec_preference = None if config["media.codec"] == "offer" else config["media.codec"]
        self.silence = silence_frame()
        self.draining = False
        self.calls_changed = trio.Event()  # set whenever a call starts or ends (drain, STATUS=)
        self.cname = f"eko-rtp-{os.getpid()}@{self.media_address}"
        # Whether a new call could succeed (server/health.py): told to the SIP core, STATUS=.
        self.health = Health()
        self._probing = False  # the health probe task runs (server/health.py conditions in PROBED)
        self._check_phrases()
        # Who may call and how much (sip/admission.py); the calls cap never above the RTP port pairs.
        self.admission = Admission(self._admission_settings(config))
        # What a call may ask of the server: made once, handed to every call.
        self._line = CallLine(answer=self.answer_call, hang_up=self.hangup_call, count_phrase=self._count_phrase,
                              transfer=self.transfer_call)

    # -- lifecycle ---------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status=task_status)
        finally:
            self.clock.close()
            self.hub.close()
            if self.shared_port is not None:
                self.shared_port.close()

    async def _run(self, *, task_status) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.clock.run)
            await nursery.start(self.hub.run)
            if self.config["media.rtp_socket"] == "shared":
                self._open_shared_port()
            if self.asr_relay is not None:
                await nursery.start(self.asr_relay.run)
            bound = await nursery.start(self.transport.run)
            sip_port = next(iter(bound.values()))[1]
            settings = self._ua_settings(sip_port, bound.get("tls"))
            # Before the first datagram is read (they wait in the socket meanwhile).
            warm_up(settings, lambda event: self._media_session(event, self.config.rtp_ports[0]))
            self.ua = UserAgent(settings, credentials=self.sip_credentials, admission=self.admission)
            self._health_changed()  # the SIP core and the metrics learn the health of the start
            self._call_nursery = nursery
            nursery.start_soon(self._timer_loop)
            self._start_registration()
            nursery.start_soon(self._sweep_recordings)
            log.info(
                "Eko RTP listening for SIP on %s (%s), media on %s ports %d-%d",
                self.config.sip_listen.host,
                ", ".join(f"{t.upper()} {a[1]}" for t, a in bound.items()),
                self.media_address,
                *self.config.rtp_ports,
            )
            if self.tts is None:
                log.info("live TTS: off")
            else:
                identity = self.tts.backend.render_identity()
                log.info("live TTS: %s, voice %s, model %s", self.tts.backend.name, identity.voice, identity.model)
            task_status.started(bound)

    def _ua_settings(self, sip_port: int, tls_bound: tuple | None = None) -> UserAgentSettings:
        advertise = self.config.sip_advertise  # Contact and Via: never the wildcard we may bind
        return UserAgentSettings(
            host=advertise.host,
            port=advertise.port or sip_port,
            tls_port=tls_bound[1] if tls_bound is not None else None,  # what sip.tls_port bound
            user_agent=self.config["sip.user_agent"],
            max_message_size=self.config["sip.max_message_size"],
            t1=self.config["sip.t1"],
            session_timer=SessionTimerSettings(
                session_expires=self.config["sip.session_expires"], min_se=self.config["sip.min_se"]
            ),
            refer_notify_timeout=self.config["transfer.notify_timeout"],
            refer_result_timeout=self.config["transfer.result_timeout"],
        )

    # -- admission and health (sip/admission.py, server/health.py) -------------------

    def _admission_settings(self, config: Config):
        """``[sip]`` admission, with ``sip.max_calls`` capped by the RTP port pairs (one per call).

        Not on a shared port: the trunk's calls all share its one pair, and a call that
        cannot share and finds no pair left is refused alone (503, Retry-After).
        """
        if config["media.rtp_socket"] == "shared":
            return admission_settings(config)
        pairs = self.ports.capacity
        if config["sip.max_calls"] > pairs:
            log.warning("sip.max_calls %d is above the %d RTP port pairs of media.rtp_ports %s: at most %d calls"
                        " at once", config["sip.max_calls"], pairs, config["media.rtp_ports"], pairs)
        return admission_settings(config, max_calls=min(config["sip.max_calls"], pairs))

    def _check_phrases(self) -> None:
        """The PHRASES condition: the cache lacks a phrase the script cannot do without."""
        missing = missing_essential_phrases(self.script, self.cache.keys())
        if missing:
            self._set_health(Condition.PHRASES, f"the phrase cache lacks {', '.join(missing)}, which every call"
                                                " of the script needs (build it: eko-rtp cache build)")
        else:
            self._clear_health(Condition.PHRASES)

    def _set_health(self, condition: Condition, reason: str) -> None:
        if self.health.set(condition, reason):
            log.warning("no new call can succeed: %s; OPTIONS and new INVITEs get 503", reason)
            self._health_changed()
        if condition in PROBED:
            self._start_probe()

    def _clear_health(self, condition: Condition) -> None:
        if self.health.clear(condition):
            problem = self.health.problem
            log.info("%s: recovered; %s", condition.value,
                     "new calls are taken again" if problem is None else f"still no new call can succeed: {problem}")
            self._health_changed()

    def _health_changed(self) -> None:
        """Tell the SIP core (OPTIONS and INVITE 503), the metrics and STATUS=."""
        problem = self.health.problem
        if self.ua is not None:
            self.ua.set_health(problem)
        if self.metrics is not None:
            self.metrics.healthy.set(1 if problem is None else 0)
        self._calls_changed()

    def _ports_in_use(self) -> None:
        """After a pair was opened: every pair taken means the next call cannot be."""
        if self.ports.in_use >= self.ports.capacity:
            self._set_health(Condition.RTP_PORTS, f"all {self.ports.capacity} RTP port pairs of media.rtp_ports"
                                                  f" {self.config['media.rtp_ports']} are in use")

    def _descriptors_exhausted(self, error: OSError) -> None:
        """Opening sockets (a call's RTP pair, a SIP TCP accept) failed with EMFILE or ENFILE:
        unhealthy until the probe succeeds."""
        self._set_health(Condition.FILE_DESCRIPTORS,
                         f"out of file descriptors ({errno.errorcode.get(error.errno, error.errno)}: {error.strerror})"
                         " opening sockets: raise LimitNOFILE= (systemd) or ulimit -n")

    def _start_probe(self) -> None:
        """While a condition only a new try can clear is set, try once a second (one probe task)."""
        if not self._probing and self._call_nursery is not None:
            self._probing = True
            self._call_nursery.start_soon(self._probe)

    async def _probe(self) -> None:
        """Open an RTP port pair and give it back, once a second, until that works: healthy again.

        For what no call's end would clear: another process holding the ports, or
        descriptors that ran out for a reason of their own. No INVITE tries meanwhile
        (the SIP core answers them 503), so this is the only way back.
        """
        with call_context(None):  # the server's lines, not those of the call that ran into it
            try:
                while any(condition in self.health for condition in PROBED):
                    await trio.sleep(PROBE_INTERVAL)
                    try:
                        pair = self.ports.open_pair()
                    except PortsExhausted:
                        continue
                    except OSError as error:
                        if error.errno not in DESCRIPTORS_EXHAUSTED:
                            log.warning("health probe: cannot open an RTP port pair: %s", error)
                        continue
                    self.ports.release(pair)
                    for condition in PROBED:
                        self._clear_health(condition)
            finally:
                self._probing = False

    def _request_refused(self, event) -> None:
        """Admission turned a request away: count it; log it when the core says it is news."""
        answer = str(event.status) if event.status is not None else "dropped"
        if self.metrics is not None:
            self.metrics.sip_refused.labels(reason=event.reason, answer=answer).inc()
        if event.report:
            why = _REFUSALS.get(event.reason, event.reason)
            if event.reason == "unhealthy":
                why = f"{why}: {self.health.problem}"
            more = f" ({event.unreported} more for this reason since the previous line)" if event.unreported else ""
            log.warning("%s from %s refused, %s -> %s%s", event.method, _where(event.source), why, answer, more)

    def _start_registration(self) -> None:
        """Register with the trunk when ``registration.registrar`` is set (RFC 3261 §10)."""
        registrar = self.config["registration.registrar"]
        if not registrar:
            return
        uri = parse_uri(registrar, "registration.registrar")
        transport = self.config["registration.transport"]
        settings = self.ua.settings
        port = uri.port or (5061 if uri.scheme == "sips" or transport == "tls" else 5060)  # RFC 3261 §19.1.2
        contact = f"sip:{settings.contact_user}@{format_host_port(settings.host, settings.port_for(transport))}"
        if transport != "udp":
            contact += f";transport={transport}"
        self.registered = False
        self.ua.start_registration(
            RegistrationSettings(registrar=registrar, aor=self.config["registration.aor"], contact=contact,
                                 expires=self.config["registration.expires"], user_agent=settings.user_agent),
            destination=(uri.host.strip("[]"), port), transport=transport, now=trio.current_time())
        self._flush()

    # -- SIP input ---------------------------------------------------------------

    def receive(self, data: bytes, source: tuple, transport: str, connection: object) -> None:
        """From the transport: one datagram or one framed TCP message."""
        if self.ua is None:
            # Bound, and the SIP core not made yet (it needs the bound port): the
            # peer retransmits (RFC 3261 §17), the core will be there by then.
            log.debug("SIP message from %s before the server was ready: dropped", _where(source))
            return
        try:
            self.ua.receive(data, source=source, transport=transport, connection=connection, now=trio.current_time())
        except Exception:
            # A bug in the SIP core must cost one message, not every call on the server.
            self.counters.internal_errors += 1
            self._log_per_datagram(self._internal_error_log, "internal error(s) handling SIP messages", log.exception,
                                   "internal error handling a SIP message from %s (%d bytes); message dropped",
                                   _where(source), len(data))
        self._flush()

    async def _timer_loop(self) -> None:
        while True:
            deadline = self.ua.next_deadline()
            self._timer_deadline = deadline if deadline is not None else float("inf")
            self._timer_wakeup = trio.Event()
            with trio.move_on_at(self._timer_deadline):
                await self._timer_wakeup.wait()
            now = trio.current_time()
            if now >= self._timer_deadline:
                try:
                    self.ua.handle_timers(now)
                except Exception:
                    self.counters.internal_errors += 1
                    log.exception("internal error in the SIP timers")
                self._flush()

    def _flush(self) -> None:
        """Carry out everything the SIP core asked for, until it asks nothing more."""
        ua = self.ua
        while True:
            events = ua.events()
            if not events:
                break
            for event in events:
                try:
                    self._dispatch(event)
                except Exception:
                    # A bug handling one call's event must not take the other calls down.
                    self.counters.internal_errors += 1
                    log.exception("internal error handling %s", type(event).__name__)
                    call = self.calls.get(getattr(event, "call_id", None))
                    if call is not None:
                        call.end_reason = call.end_reason or "internal_error"
                        try:
                            self.hangup_call(call)
                        except Exception:
                            with call_context(call.call_id):
                                log.exception("could not hang up after an internal error")
                            call.end("internal_error", trio.current_time())
        deadline = ua.next_deadline()
        if deadline is not None and deadline < self._timer_deadline:
            self._timer_wakeup.set()

    def _dispatch(self, event) -> None:
        if isinstance(event, ua_module.Transmit):
            written = self.transport.send(event.data, event.destination, event.transport, event.connection)
            if written is not None and self._stream_writes is not None:
                self._stream_writes.append(written)
            if self.metrics is not None and event.data.startswith(b"SIP/2.0 "):
                self.metrics.sip_response(int(event.data[8:11]))
        elif isinstance(event, ua_module.IncomingCall):
            self._incoming_call(event)
        elif isinstance(event, ua_module.RegistrationChanged):
            self._registration_changed(event)
        elif isinstance(event, ua_module.RequestRefused):
            self._request_refused(event)
        elif isinstance(event, ua_module.MessageRejected):
            self.counters.sip_rejected += 1
            answer = f" -> {event.status}" if event.status else " -> dropped"
            self._log_per_datagram(self._bad_sip_log, "bad SIP message(s)", log.warning, "bad SIP message from %s: %s%s",
                                   _where(event.source), event.description, answer)
        else:
            call = self.calls.get(event.call_id)
            if call is not None:
                self._call_event(call, event)

    def _log_per_datagram(self, budget: LogBudget, what: str, write, message: str, *args) -> None:
        """``write(message, *args)`` if ``budget`` allows; else counted, and summed up a second later."""
        now = trio.current_time()
        self._sum_up_held_back(budget, what, now)  # a due summary first, so the lines stay in order
        due = budget.summary_due
        if budget.allow(now):
            write(message, *args)
        elif due is None and budget.summary_due is not None and self._call_nursery is not None:
            # The first line held back: its summary must come even if the flood stops now.
            self._call_nursery.start_soon(self._sum_up_held_back_later, budget, what)

    async def _sum_up_held_back_later(self, budget: LogBudget, what: str) -> None:
        if budget.summary_due is not None:
            await trio.sleep_until(budget.summary_due)
        self._sum_up_held_back(budget, what, trio.current_time())

    @staticmethod
    def _sum_up_held_back(budget: LogBudget, what: str, now: float) -> None:
        held = budget.held_back(now)
        if held:
            log.warning("%d more %s not logged (at most %d at once, then %g a second)",
                        held, what, budget.burst, budget.per_second)

    def _open_shared_port(self) -> None:
        """The first free pair of media.rtp_ports becomes the shared one (media/shared_port.py)."""
        pair = self.ports.open_pair()
        shared = self.shared_port = SharedMediaPort(pair, counters=self.media_counters)
        self.hub.register_batch(pair.rtp, shared.receive_rtp, on_backlog=shared.on_backlog)
        self.hub.register_batch(pair.rtcp, shared.receive_rtcp)
        self.clock.after_tick(shared.flush)
        log.info("media: trusted callers share RTP port %d (media.rtp_socket = \"shared\"); %s batch I/O",
                 pair.port, mmsg.IMPLEMENTATION)

    # -- calls -------------------------------------------------------------------

    def _incoming_call(self, event) -> None:
        with call_context(event.call_id):  # its log lines carry [call=...] like the call's own
            self._take_call(event)

    def _take_call(self, event) -> None:
        now = trio.current_time()
        call_id = event.call_id
        log.info("INVITE received from %s at %.3f ms", _where(event.source), now * 1000)
        shared = self._shared_leg(event)
        if shared is not None:
            pair, media, negotiated = shared
        else:
            try:
                pair = self.ports.open_pair()
            except PortsExhausted as error:
                self._set_health(Condition.RTP_PORTS, f"{error} (media.rtp_ports)")
                self._refuse(call_id, 503, now, str(error), headers=(("Retry-After", "5"),))
                return
            except OSError as error:
                if error.errno not in DESCRIPTORS_EXHAUSTED:
                    raise
                self._descriptors_exhausted(error)
                self._refuse(call_id, 503, now, f"cannot open RTP sockets: {error.strerror}",
                             headers=(("Retry-After", "5"),))
                return
            media = self._media_session(event, pair.port)
            try:
                negotiated = media.invite(event.offer)
            except sdp.SdpError as error:
                self.ports.release(pair)
                self._refuse(call_id, error.status, now, f"unusable SDP offer: {error}", reason=_reason(error),
                             warning=self._sdp_warning(error))
                return
        log.info("media: %s", describe_plan(negotiated.plan))
        self._ports_in_use()  # the call keeps its pair: was it the last one?
        barge_in = BargeIn()
        digits = DigitQueue(call_id=call_id, on_digit=barge_in.on_key)
        vad = VoiceActivityDetector(self.vad_settings) if self.vad_settings is not None else None
        recorder = self._recorder(call_id, negotiated.plan)
        ears = CallerAudio(vad=vad, on_speech=barge_in.on_speech, recorder=recorder,
                           vad_wanted=barge_in)
        speech = None
        if self.asr is not None:
            encoding = "alaw" if negotiated.plan.codec.name.upper() == "PCMA" else "mulaw"
            speech = CallSpeech(settings=attrs.evolve(self.asr.settings, encoding=encoding),
                                api_key=self.asr.api_key, ears=ears, on_failure=self._asr_failed,
                                on_audio_seconds=self._asr_streamed,
                                stream_factory=None if self.asr_relay is None else self.asr_relay.stream)
        stream = MediaStream(
            pair=pair,
            plan=negotiated.plan,
            queue=PlayoutQueue(self.silence),
            counters=self.media_counters,
            on_dtmf=digits.deliver,
            cname=self.cname,
            on_audio=ears.feed,
            recorder=recorder,
            latch_policy=self.latch_policy,
            srtp_counters=self.srtp_counters,
        )
        numbers = caller_numbers(asserted_user=event.caller.asserted_user, from_user=event.caller.from_user,
                                 withheld=event.caller.withheld)
        call = Call(
            call_id=call_id,
            caller=event.caller,
            caller_number=numbers.kept,
            stream=stream,
            media=media,
            digits=digits,
            lookup=CallerLookup(crm=self.crm, phone=numbers.lookup, started_at=now,
                                budget=self.config["crm.budget_ms"] / 1000, call_id=call_id,
                                on_result=None if self.metrics is None else self.metrics.crm_lookup),
            line=self._line,
            timers=self._call_timers(),
            cache=self.cache,
            script=self.script,
            tts=self.tts,
            invite_time=now,
            source=event.source,
            ears=ears,
            barge_in=barge_in,
            speech=speech,
            recorder=recorder,
            handover=self.handover,
        )
        self.calls[call_id] = call
        if isinstance(pair, SharedLeg):
            pair.route(stream.on_rtp, stream.on_rtcp)
        else:
            self.hub.register(pair.rtp, stream.on_rtp, on_backlog=stream.on_backlog,
                             timestamp_every=ARRIVAL_SAMPLING)
            self.hub.register(pair.rtcp, stream.on_rtcp)
        self.counters.calls_started += 1
        self._calls_changed()
        if self.metrics is not None:
            self.metrics.active_calls.inc()
        self._call_nursery.start_soon(self._run_call, call, name=f"call {call_id}")

    def _media_session(self, event, port: int) -> MediaSession:
        return MediaSession(local_address=self.media_address, local_port=port,
                            session_id=next(self._origin_ids), preferred_codec=self.codec_preference,
                            srtp=self.srtp_policy, signalling=event.transport)

    def _shared_leg(self, event):
        """``(leg, media, negotiated)`` when the call goes on the shared port, else None.

        media/shared_port.py: only an offer that names an address we trust (the trunk's
        gateways) and that no other call signalled shares the port. Anything else, an
        unusable offer included, takes the per-call path, which answers it as before.
        """
        shared = self.shared_port
        if shared is None or not event.offer:
            return None
        media = self._media_session(event, shared.port)
        try:
            negotiated = media.invite(event.offer)
        except sdp.SdpError:
            return None
        remote = negotiated.plan.remote_rtp
        if remote is None or not self.latch_policy.trusts(remote[0]):
            return None
        leg = shared.attach(remote, negotiated.plan.remote_rtcp)
        if leg is None:
            return None
        return leg, media, negotiated

    def _call_timers(self) -> CallTimers:
        config = self.config
        return CallTimers(answer_timeout=config["sip.answer_timeout"], rtp_timeout=config["media.rtp_timeout"],
                          max_duration=config["media.max_call_duration"],
                          silence_reprompt=config["script.silence_reprompt_seconds"],
                          silence_hangup=config["script.silence_hangup_seconds"],
                          transfer_bye_wait=config["transfer.bye_wait"],
                          rtp_timeout_before_ack=config["media.rtp_timeout_before_ack"])

    def _recorder(self, call_id: str, plan) -> CallRecorder | None:
        """The call's recorder when ``recording.directory`` is set (caller data: off by default)."""
        directory = self.config["recording.directory"]
        if not directory:
            return None
        encoding = WavEncoding.ALAW if plan.codec.name.upper() == "PCMA" else WavEncoding.MULAW
        try:
            path = recording_path(Path(directory), call_id=call_id, started_at_unix=time.time())
        except ValueError as error:
            log.warning("not recording this call: %s", error)
            return None
        return CallRecorder(path=path, encoding=encoding, limiter=self._recording_limiter)

    async def _sweep_recordings(self) -> None:
        """Delete recordings past ``recording.retention_days``: at start, then hourly."""
        while True:
            directory = self.config["recording.directory"]
            if directory:
                removed = await trio.to_thread.run_sync(
                    lambda: sweep_recordings(Path(directory), retention_days=self.config["recording.retention_days"],
                                             now_unix=time.time()))
                if removed:
                    log.info("deleted %d recording(s) older than %g days", removed,
                             self.config["recording.retention_days"])
            await trio.sleep(RECORDING_SWEEP_INTERVAL)

    def _asr_failed(self, error) -> None:
        kind = type(error).__name__
        self.counters.asr_failures[kind] = self.counters.asr_failures.get(kind, 0) + 1

    def _asr_streamed(self, seconds: float) -> None:
        self.counters.asr_seconds += seconds

    def _count_phrase(self, hit: bool) -> None:
        if self.metrics is not None:
            (self.metrics.cache_hits if hit else self.metrics.cache_misses).labels(cache="phrase").inc()

    def _refuse(self, call_id: str, status: int, now: float, why: str, *, reason=None, headers=(),
                warning=None) -> None:
        """Answer an INVITE we cannot take with ``status``; one log line says why."""
        log.warning("refused with %d: %s", status, why)
        self.ua.reject(call_id, status, now, reason=reason, headers=headers, warning=warning)
        self.counters.calls_rejected += 1

    def _sdp_warning(self, error: sdp.SdpError):
        """The Warning of a 488 (RFC 3261 §20.43), saying what its reason phrase says: it reaches the
        caller where a B2BUA rewrites reason phrases. Its code is the error's: 305 for no codec in
        common, 399 for the SRTP refusals (the RTP/SAVP profile, the a=crypto keys, the
        signalling's security), which no 3xx code names."""
        return self.ua.warning(error.warning, _reason(error)) if error.status == 488 else None

    def _call_event(self, call: Call, event) -> None:
        with call_context(call.call_id):
            self._handle_call_event(call, event)

    def _handle_call_event(self, call: Call, event) -> None:
        now = trio.current_time()
        if isinstance(event, ua_module.CallEnded):
            reason = event.reason.name.lower() if hasattr(event.reason, "name") else str(event.reason)
            # What the caller sent before its BYE may still wait in the socket (the hub
            # drains every few ms): take it now, in order, so a last digit is not lost.
            self.hub.drain_socket(call.stream.pair.rtp)  # (on a shared port: the shared socket)
            call.end(reason, now)
        elif isinstance(event, ua_module.CallConfirmed):
            call.confirmed.set()
            call.stream.on_ack()  # media may go to the signalled address now (media/latch.py)
            try:
                negotiated = call.media.ack(event.answer)
            except sdp.SdpError as error:
                log.warning("unusable SDP answer in ACK: %s; hanging up", error)
                self.hangup_call(call)
                return
            if negotiated is not None:
                call.stream.apply_plan(negotiated.plan)
        elif isinstance(event, ua_module.SessionModified):
            self._modify_session(call, event.offer, now)
        elif isinstance(event, ua_module.InfoDtmf):
            call.deliver_digit(event.digit)
        elif isinstance(event, ua_module.TransferUpdate):
            call.transfer_news(event.state, event.status, event.reason)
            if event.state in ("succeeded", "failed") and self.metrics is not None:
                self.metrics.transfers.labels(result=event.state).inc()

    def _registration_changed(self, event) -> None:
        log_line = log.info if event.registered or event.state in ("registering", "unregistered") else log.warning
        log_line("registration: %s", event.summary)
        self.registered = event.registered
        self.registration_summary = event.summary
        if self.metrics is not None:
            self.metrics.registered.set(1 if event.registered else 0)
        self.registration_changed.set()
        self.registration_changed = trio.Event()
        self._calls_changed()  # STATUS= shows the registration too

    def _modify_session(self, call: Call, offer_body: bytes | None, now: float) -> None:
        try:
            negotiated = call.media.reinvite(offer_body)
        except sdp.SdpError as error:
            log.warning("re-INVITE refused: %s", error)
            self.ua.reject_modification(call.call_id, error.status, now, reason=_reason(error),
                                        warning=self._sdp_warning(error))
            self._flush()
            return
        plan = negotiated.plan
        call.stream.apply_plan(plan)
        log.info("session modified: %s", describe_plan(plan))
        self.ua.answer_modification(call.call_id, negotiated.body, now)
        self._flush()

    def answer_call(self, call: Call) -> None:
        """Send the 200 OK and the stream's first frame in the same step.

        Over TCP or TLS the 200 OK waits for the connection's writer: the first
        frame then follows it as soon as it is written (within ANSWER_WRITE_WAIT),
        never before it. A caller that got RTP before the 200 could drop it, and
        with SRTP it cannot even decrypt it yet: the key is in the 200's answer.
        """
        if call.answered_at is not None or call.ended_at is not None:
            return
        now = trio.current_time()
        self._stream_writes = []
        try:
            self.ua.answer(call.call_id, call.media.local_body, now)
            self._flush()
            written = self._stream_writes[-1] if self._stream_writes else None
        finally:
            self._stream_writes = None
        call.answered_at = trio.current_time()
        if written is not None and not written.is_set() and self._call_nursery is not None:
            self._call_nursery.start_soon(self._start_media_once_written, call, written)
        else:
            self._start_media(call)

    async def _start_media_once_written(self, call: Call, written: trio.Event) -> None:
        with trio.move_on_after(ANSWER_WRITE_WAIT):
            await written.wait()
        if call.ended_at is None:
            self._start_media(call)

    def _start_media(self, call: Call) -> None:
        answered = call.answered_at
        call.stream.start(trio.current_time())
        call.stream.shift_schedule(self.clock.balancing_shift(call.stream.next_due))
        self.clock.schedule(call.stream)
        call.answered.set()
        first = call.stream.first_packet_time
        if self.metrics is not None and first is not None:
            self.metrics.greeting_latency.observe(max(0.0, trio.current_time() - answered))
        log.info("200 OK sent at %.3f ms", answered * 1000)
        if first is not None:
            log.info("first RTP sent at %.3f ms", trio.current_time() * 1000)

    def transfer_call(self, call: Call, target: str) -> bool:
        """REFER the call's caller to ``target`` (False when the call is not established)."""
        if call.ended_at is not None:
            return False
        sent = self.ua.transfer(call.call_id, target, trio.current_time())
        self._flush()
        return sent

    def hangup_call(self, call: Call) -> None:
        now = trio.current_time()
        if call.ended_at is None:
            if call.answered_at is None:
                self.ua.reject(call.call_id, 480, now)
            else:
                self.ua.hangup(call.call_id, now)
            self._flush()
            call.end("local_hangup", now)

    def phrase(self, key: str):
        return self.cache.get(key)

    def _calls_changed(self) -> None:
        self.calls_changed.set()
        self.calls_changed = trio.Event()

    # -- service: drain and reload ---------------------------------------------------

    async def drain(self, grace: float, *, retry_after: int = 30) -> None:
        """Stop taking calls (503 + Retry-After, OPTIONS 503), let calls in progress end
        for up to ``grace`` seconds, then BYE the rest and give the BYEs a moment."""
        self.draining = True
        self.ua.set_accepting(False, retry_after=retry_after)
        log.info("draining: %d call(s) in progress, grace %.0f s; new calls get 503", len(self.calls), grace)
        with trio.move_on_after(grace):
            while self.calls:
                await self.calls_changed.wait()
        if self.calls:
            log.info("drain grace over: hanging up %d call(s)", len(self.calls))
            for call in list(self.calls.values()):
                self.hangup_call(call)
            with trio.move_on_after(2.0):
                while self.calls:
                    await self.calls_changed.wait()
        # Let the last BYEs and their 200s cross the wire (RFC 3261 timer F is longer; one T2 will do).
        with trio.move_on_after(min(2.0, self.config["sip.t1"] * 4)):
            while self.ua.next_deadline() is not None and self.ua.call_ids:
                await trio.sleep(0.05)
        await self.unregister()

    async def unregister(self, timeout: float = 2.0) -> None:
        """Remove our binding at the registrar (Expires: 0), waiting up to ``timeout`` for its answer."""
        if self.ua is None or self.ua.registration is None:
            return
        in_flight = self.ua.stop_registration(trio.current_time())
        self._flush()
        with trio.move_on_after(timeout):
            while in_flight and self.ua.registration.state.value in ("unregister pending", "unregistering"):
                await self.registration_changed.wait()

    def replace_setup(self, *, config: Config, cache: Any, script: Script) -> None:
        """Reload: new calls use ``config``, ``cache`` and ``script``; calls in progress keep theirs."""
        for dotted in ("sip.listen", "sip.advertise", "sip.transports", "sip.tls_port", "media.address",
                       "media.rtp_ports", "registration.registrar", "registration.aor", "registration.transport"):
            if config[dotted] != self.config[dotted]:
                raise ValueError(f"{dotted} changed ({self.config[dotted]!r} -> {config[dotted]!r}): that needs a restart")
        _load_vad(vad_settings(config))  # a reload that turns listening on: refused whole, if it cannot
        if self.transport.tls is not None:
            # Before anything changes, so a broken certificate (a UserError naming the
            # file and the key) refuses the whole reload and changes nothing. A renewed one serves the
            # next connections; those up keep theirs, and so do their calls.
            self.transport.tls.reload(TlsSettings.from_config(config))
        self.config = config
        self.cache = cache
        self.script = script
        self.codec_preference = None if config["media.codec"] == "offer" else config["media.codec"]
        self.vad_settings = vad_settings(config)
        self.latch_policy = latch_policy(config)
        self.srtp_policy = srtp_policy(config)
        self.admission.reconfigure(self._admission_settings(config))
        self._check_phrases()
        self.transport.trace = _sip_trace(config, self.transport.trace)
        self.handover = self.handover.reconfigured(
            hours=business_hours(config), targets=transfer_targets(config),
            limit=config["transfer.max_per_window"], window=config["transfer.window_seconds"])

    async def _run_call(self, call: Call) -> None:
        with call_context(call.call_id):  # every log line of the call's tasks carries its Call-ID
            try:
                await call.run()
            finally:
                self._release(call)

    def _release(self, call: Call) -> None:
        """The call's nursery is over: give back its sockets and ports, count and report it."""
        stream = call.stream
        if isinstance(stream.pair, SharedLeg):
            stream.pair.close()  # its route: the shared port stays
        else:
            self.hub.unregister(stream.pair.rtp)
            self.hub.unregister(stream.pair.rtcp)
            self.ports.release(stream.pair)
            self._clear_health(Condition.RTP_PORTS)  # a pair is free again
        self.calls.pop(call.call_id, None)
        outcome = call.end_reason or "unknown"
        script_outcome = call.script_outcome or _script_outcome(call)
        if not is_word(script_outcome):
            # A script's own word that the CRM would refuse: the call is still logged.
            log.warning("script outcome %r is not a lowercase word of a-z and _; logged as 'unknown'",
                        str(script_outcome)[:40])
            script_outcome = "unknown"
        self.counters.calls_by_outcome[outcome] = self.counters.calls_by_outcome.get(outcome, 0) + 1
        self._calls_changed()
        duration = (call.ended_at - (call.answered_at or call.invite_time)) * 1000
        usage = f"; {call.tts_usage.summary()}" if call.tts_usage is not None else ""
        usage += _listening_summary(call)
        self.counters.barge_ins += call.barge_in.interruptions
        quality = stream.quality.quality()
        if self.metrics is not None:
            self.metrics.active_calls.dec()
            self.metrics.call_ended(outcome)
            self.metrics.call_quality(quality)
        if self.metrics is not None:
            self.metrics.script_outcomes.labels(outcome=script_outcome).inc()
        log.info("ended (%s) after %.0f ms; %s; script=%s%s", outcome, duration, quality.summary(), script_outcome,
                 usage)
        if self.crm is not None:
            # A notification: queued without waiting, so teardown is never delayed by the CRM.
            self.crm.log_call(
                CallLog(
                    call_id=call.call_id,
                    phone=call.caller_number,
                    greeting=tuple(call.greeting),
                    duration_ms=max(0, int(duration)),
                    outcome=outcome,
                    script_outcome=script_outcome,
                    **quality.call_log_fields(),
                )
            )


def _script_outcome(call: Call) -> str:
    """What the script achieved when it did not say: from how the call ended (docs/crm-rpc.md)."""
    if call.end_reason == "remote_bye":
        if call.transfer_state in ("accepted", "trying"):
            return "transfer_unconfirmed"  # the caller left while the phone was still calling the technician
        return "caller_hangup"
    if call.end_reason in ("cancelled", "rejected", "no_ack"):
        return "not_answered"
    return "ended"


def _sip_trace(config: Config, current: SipTrace | None) -> SipTrace | None:
    """The SIP message trace ``service.sip_trace`` asks for (the running one kept on a reload)."""
    if not config["service.sip_trace"]:
        return None
    return current or SipTrace()


def describe_plan(plan) -> str:
    """The negotiated codec and where its audio goes, for a call's log line."""
    remote = _where(plan.remote_rtp) if plan.remote_rtp else "nowhere (no address: on hold)"
    events = f", telephone-event {plan.telephone_event_payload_type}" if plan.telephone_event_payload_type else ""
    srtp = f", SRTP {plan.srtp_keys.suite.value}" if plan.srtp_keys is not None else ""
    return (f"{plan.codec.name} (payload type {plan.codec.payload_type}{events}{srtp}) to {remote}, "
            f"send_audio={plan.send_audio}")


# Why admission refused a request (RequestRefused.reason), for its log line.
_REFUSALS = {
    "untrusted": "source not in sip.trusted_networks",
    "rate": "source over sip.invite_rate_per_source",
    "max_calls": "sip.max_calls calls in progress",
    "unhealthy": "no new call can succeed",
}


def _load_vad(settings) -> None:
    """Import the VAD's module now, when listening is on, not in a call's answer.

    The import (importlib.metadata and the extension) was most of the first INVITE's
    path after a start (docs/BENCHMARKS.md, seventeenth session). Missing, the start (or
    the reload) fails here, saying what to install, where the first call would have.
    """
    if settings is None:
        return
    try:
        require_webrtcvad()
    except RuntimeError as error:
        raise UserError(f"{error} (or set listen.vad = false)", key="listen.vad") from None


def _where(source) -> str:
    return f"{source[0]}:{source[1]}" if source else "?"


def _reason(error: Exception) -> str:
    return str(error).splitlines()[0][:120]


def _listening_summary(call: Call) -> str:
    """The end-of-call line's words on what the call heard: barge-ins, ASR seconds, lost audio."""
    words = []
    if call.barge_in.interruptions:
        words.append(f"barge-ins={call.barge_in.interruptions}")
    speech = call.speech_recognition
    if speech is not None:
        words.append(f"asr={speech.seconds_streamed:.1f}s" + ("" if speech.failure is None else " (failed)"))
    ears = call.ears
    if ears is not None:
        reorder = ears.reorder
        lost = reorder.packets_concealed + reorder.packets_late
        if lost:
            words.append(f"caller_audio_concealed={lost}")
        if ears.frames_dropped or ears.asr_frames_dropped:
            words.append(f"caller_frames_dropped={ears.frames_dropped + ears.asr_frames_dropped}")
    stray = call.stream.packets_stray
    if stray:
        words.append(f"stray_packets={stray}")  # dropped as not the caller's (media/latch.py)
    srtp_dropped = call.stream.srtp_dropped
    if srtp_dropped:
        words.append(f"srtp_dropped={srtp_dropped}")  # failed authentication, replayed (media/srtp.py)
    recorder = call.recorder
    if recorder is not None:
        words.append(f"recording={recorder.path.name}" + ("" if recorder.failed is None else " (failed)"))
    return "; " + " ".join(words) if words else ""
