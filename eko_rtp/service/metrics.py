"""Prometheus metrics: the names the server exports, and the HTTP endpoint serving them.

One :class:`Metrics` object holds every metric on its own ``CollectorRegistry``
(never the process-global one, so tests and two servers in one process do not
collide); the server passes it to whatever counts. ``prometheus-client`` metrics
are thread-safe and cheap to update (a lock and an add), so the hot path may call
them per frame; the HTTP endpoint runs in prometheus-client's own thread and never
touches the event loop.

Exported names (all prefixed ``eko_``):

==========================================  =========  ==============================================
``eko_active_calls``                         gauge      calls in progress
``eko_calls_total{outcome}``                 counter    finished calls by outcome (e.g. ``completed``)
``eko_sip_responses_total{code}``            counter    SIP responses sent, by status code
``eko_greeting_latency_seconds``             histogram  200 OK sent -> first RTP packet sent
``eko_rtp_frames_sent_total``                counter    RTP media frames sent
``eko_rtp_frames_late_total``                counter    frames sent after their due time
``eko_rtp_packets_stray_total``              counter    RTP/RTCP dropped as not the caller's (media/latch.py)
``eko_srtp_dropped_total{reason}``           counter    SRTP/SRTCP dropped: ``authentication``, ``replay``,
                                                       ``mki``, ``malformed``, ``other`` (media/srtp.py)
``eko_cache_hits_total{cache}``              counter    ``phrase`` or ``dynamic`` (TTS) cache hits
``eko_cache_misses_total{cache}``            counter    and misses
``eko_tts_characters_total{backend}``        counter    characters sent to live TTS
``eko_tts_estimated_cost_usd_total``         counter    estimated live TTS cost, US dollars
``eko_crm_lookup_latency_seconds``           histogram  INVITE -> CRM answer, late answers included
``eko_crm_lookup_timeouts_total``            counter    lookups not over within the greeting budget
``eko_crm_lookup_errors_total``              counter    lookups that failed within the budget
``eko_draining``                             gauge      1 while the server drains (SIGTERM), else 0
``eko_asr_audio_seconds_total``              counter    caller audio streamed to speech recognition
``eko_asr_failures_total{kind}``             counter    recognizer streams that failed, by error kind
``eko_barge_ins_total``                      counter    phrases the caller spoke over (barge-in)
``eko_script_outcomes_total{outcome}``       counter    what the script achieved (``transferred``...)
``eko_transfers_total{result}``              counter    our REFERs that ``succeeded`` or ``failed``
``eko_followups_lost_total``                 counter    callbacks and tickets the CRM never took
``eko_sip_registered``                       gauge      1 while registered with the trunk, else 0
``eko_sip_refused_total{reason,answer}``     counter    requests admission turned away: ``reason``
                                                       ``untrusted``, ``rate``, ``max_calls`` or
                                                       ``unhealthy``; ``answer`` ``403``, ``503``
                                                       or ``dropped`` (sip/admission.py)
``eko_healthy``                              gauge      1 while a new call could succeed, else 0
                                                       (then OPTIONS get 503; server/health.py)
``eko_sip_connections_total{transport,       counter    connections accepted on the ``tcp`` or ``tls``
outcome}``                                             listener: ``accepted``, or closed at once:
                                                       ``refused_max_connections``, ``refused_per_source``
``eko_sip_connections_closed_total{          counter    connections we cut: ``idle_timeout``,
transport,reason}``                                    ``header_timeout``, ``too_large``, ``unframeable``
``eko_sip_tls_handshake_failures_total{      counter    TLS handshakes (either side) ``failed`` or not
reason}``                                              complete in time (``timeout``)
``eko_sip_accept_out_of_descriptors_total{   counter    accept(2) failures for want of a descriptor
transport}``
``eko_sip_connections_open{transport}``      gauge      TCP and TLS connections up (TLS: handshake done)
``process_*``                                various    CPU, memory, open file descriptors
==========================================  =========  ==============================================
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterator

import attrs
import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.exposition import start_http_server

from eko_rtp.config import HostPort, parse_host_port
from eko_rtp.errors import UserError
from eko_rtp.media.srtp import DropReason

LISTEN_KEY = "service.metrics_listen"

# Greeting latency is ours alone (cache hit, frame clock on a 1 ms grid): the
# interesting range is sub-millisecond to a few frame periods.
GREETING_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)
# CRM lookups cross a socket to SQLite; the call budget is 150 ms by default.
CRM_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0)
# Call quality: G.711 voice degrades audibly from about 1 % loss; a jitter buffer
# hides tens of ms of jitter; ITU-T G.114 puts the one-way comfort limit at 150 ms.
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
JITTER_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
ROUND_TRIP_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
CACHES = ("phrase", "dynamic")
TTS_BACKENDS = ("elevenlabs", "espeak")
# What admission may answer, by reason (eko_rtp/sip/admission.py): each starts at 0.
REFUSALS = (("untrusted", "403"), ("untrusted", "dropped"), ("rate", "503"), ("rate", "dropped"),
            ("max_calls", "503"), ("unhealthy", "503"))
STREAM_TRANSPORTS = ("tcp", "tls")
# Each field of server/transport.py's TcpCounters: the metric and labels it is exported as.
STREAM_COUNTERS = {
    "accepted": ("sip_connections", {"outcome": "accepted"}),
    "refused_max_connections": ("sip_connections", {"outcome": "refused_max_connections"}),
    "refused_per_source": ("sip_connections", {"outcome": "refused_per_source"}),
    "idle_closed": ("sip_connections_closed", {"reason": "idle_timeout"}),
    "header_timeouts": ("sip_connections_closed", {"reason": "header_timeout"}),
    "too_large": ("sip_connections_closed", {"reason": "too_large"}),
    "unframeable": ("sip_connections_closed", {"reason": "unframeable"}),
    "accept_out_of_descriptors": ("sip_accept_out_of_descriptors", {}),
    "tls_handshake_failures": ("tls_handshake_failures", {"reason": "failed"}),
    "tls_handshake_timeouts": ("tls_handshake_failures", {"reason": "timeout"}),
}
_OUTCOME = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


@attrs.frozen(kw_only=True)
class MetricsSettings:
    """Where to serve metrics: ``listen`` is ``HOST:PORT`` or empty (off).

    A non-loopback address is refused unless ``allow_public`` is set: the metrics
    reveal call volume and are served without authentication.
    """

    listen: str = ""
    allow_public: bool = False
    address: HostPort | None = attrs.field(init=False)

    @address.default
    def _parse(self) -> HostPort | None:
        if not self.listen:
            return None
        address = parse_host_port(self.listen, what=LISTEN_KEY)
        if address.host == "localhost":
            return address
        try:
            ip = ipaddress.ip_address(address.host)
        except ValueError:
            raise UserError(f"host {address.host!r} is not an IP address or 'localhost'", key=LISTEN_KEY) from None
        if not ip.is_loopback and not self.allow_public:
            raise UserError(
                f"{self.listen} is not a loopback address; metrics are unauthenticated, "
                "so serving them beyond this host needs metrics_allow_public = true",
                key=LISTEN_KEY,
            )
        return address

    @classmethod
    def from_config(cls, config) -> MetricsSettings:
        """From ``[service] metrics_listen`` (and ``metrics_allow_public`` if the schema has it)."""
        service = config.values["service"]
        try:
            return cls(listen=service["metrics_listen"], allow_public=bool(service.get("metrics_allow_public", False)))
        except UserError as error:
            raise UserError(error.detail, path=config.source, key=LISTEN_KEY) from None


@attrs.frozen(kw_only=True)
class Metrics:
    """Every metric the server exports, on one dedicated registry."""

    registry: CollectorRegistry
    active_calls: Gauge
    calls: Counter
    sip_responses: Counter
    greeting_latency: Histogram
    frames_sent: Counter
    frames_late: Counter
    packets_received: Counter
    packets_stray: Counter
    srtp_dropped: Counter
    receive_backlogs: Counter
    cache_hits: Counter
    cache_misses: Counter
    tts_characters: Counter
    tts_cost: Counter
    crm_lookup_latency: Histogram
    crm_timeouts: Counter
    crm_errors: Counter
    cpus_kept_awake: Gauge
    call_loss: Histogram
    call_jitter: Histogram
    call_round_trip: Histogram
    draining: Gauge
    asr_seconds: Counter
    asr_failures: Counter
    barge_ins: Counter
    script_outcomes: Counter
    transfers: Counter
    followups_lost: Counter
    registered: Gauge
    sip_refused: Counter
    healthy: Gauge
    sip_connections: Counter
    sip_connections_closed: Counter
    sip_accept_out_of_descriptors: Counter
    tls_handshake_failures: Counter
    sip_connections_open: Gauge

    @classmethod
    def create(cls, *, process: bool = True) -> Metrics:
        """Fresh metrics on a new registry (``process``: add the process_* collector)."""
        registry = CollectorRegistry()
        if process:
            ProcessCollector(registry=registry)
        metrics = cls(
            registry=registry,
            active_calls=Gauge("eko_active_calls", "Calls in progress.", registry=registry),
            calls=Counter("eko_calls", "Finished calls by outcome.", ["outcome"], registry=registry),
            sip_responses=Counter("eko_sip_responses", "SIP responses sent, by status code.", ["code"], registry=registry),
            greeting_latency=Histogram(
                "eko_greeting_latency_seconds",
                "Time from sending 200 OK to sending the first RTP packet.",
                buckets=GREETING_BUCKETS,
                registry=registry,
            ),
            frames_sent=Counter("eko_rtp_frames_sent", "RTP media frames sent.", registry=registry),
            frames_late=Counter("eko_rtp_frames_late", "RTP frames sent after their due time.", registry=registry),
            packets_received=Counter("eko_rtp_packets_received", "Inbound RTP packets from callers.", registry=registry),
            packets_stray=Counter("eko_rtp_packets_stray",
                                  "RTP and RTCP packets on a call's ports not from its caller, dropped (media/latch.py).",
                                  registry=registry),
            srtp_dropped=Counter("eko_srtp_dropped",
                                 "SRTP and SRTCP packets dropped, by reason: failed authentication, replayed, ... "
                                 "(media/srtp.py).", ["reason"], registry=registry),
            receive_backlogs=Counter(
                "eko_rtp_receive_backlogs",
                "Drains of the receive hub that left a call's socket non-empty (a caller outpacing the server).",
                registry=registry,
            ),
            cache_hits=Counter("eko_cache_hits", "Audio cache hits.", ["cache"], registry=registry),
            cache_misses=Counter("eko_cache_misses", "Audio cache misses.", ["cache"], registry=registry),
            tts_characters=Counter(
                "eko_tts_characters", "Characters sent to live text-to-speech.", ["backend"], registry=registry
            ),
            tts_cost=Counter(
                "eko_tts_estimated_cost_usd", "Estimated live text-to-speech cost in US dollars.", registry=registry
            ),
            crm_lookup_latency=Histogram(
                "eko_crm_lookup_latency_seconds",
                "CRM caller look-ups answered, from the INVITE (late answers included).",
                buckets=CRM_BUCKETS,
                registry=registry,
            ),
            crm_timeouts=Counter("eko_crm_lookup_timeouts", "CRM look-ups not over within the greeting budget.", registry=registry),
            crm_errors=Counter("eko_crm_lookup_errors", "CRM look-ups that failed within the greeting budget.", registry=registry),
            cpus_kept_awake=Gauge(
                "eko_cpus_kept_awake", "CPUs kept from halting by a running spinner (media.keep_cpu_awake).",
                registry=registry,
            ),
            call_loss=Histogram(
                "eko_call_packet_loss_ratio", "Per call: share of the caller's RTP packets lost (RFC 3550 A.3).",
                buckets=LOSS_BUCKETS, registry=registry,
            ),
            call_jitter=Histogram(
                "eko_call_jitter_seconds", "Per call: interarrival jitter of the caller's RTP (RFC 3550 A.8).",
                buckets=JITTER_BUCKETS, registry=registry,
            ),
            call_round_trip=Histogram(
                "eko_call_rtt_seconds", "Per call: last round-trip time from the caller's RTCP (RFC 3550 §6.4.1).",
                buckets=ROUND_TRIP_BUCKETS, registry=registry,
            ),
            draining=Gauge("eko_draining", "1 while the server drains before stopping, else 0.", registry=registry),
            asr_seconds=Counter("eko_asr_audio_seconds", "Seconds of caller audio streamed to speech recognition.",
                                registry=registry),
            asr_failures=Counter("eko_asr_failures", "Speech recognition streams that failed, by error kind.",
                                 ["kind"], registry=registry),
            barge_ins=Counter("eko_barge_ins", "Phrases the caller spoke over (barge-in).", registry=registry),
            script_outcomes=Counter("eko_script_outcomes", "Finished calls by what the script achieved.",
                                    ["outcome"], registry=registry),
            transfers=Counter("eko_transfers", "Blind transfers (REFER) to a technician, by result.", ["result"],
                              registry=registry),
            followups_lost=Counter("eko_followups_lost", "Callback requests and tickets the CRM never took.",
                                   registry=registry),
            registered=Gauge("eko_sip_registered", "1 while registered with the trunk's registrar, else 0.",
                             registry=registry),
            sip_refused=Counter("eko_sip_refused", "SIP requests turned away by admission, by reason and answer.",
                                ["reason", "answer"], registry=registry),
            healthy=Gauge("eko_healthy", "1 while a new call could succeed (else OPTIONS get 503), else 0.",
                          registry=registry),
            sip_connections=Counter("eko_sip_connections", "SIP TCP and TLS connections accepted, and those closed "
                                    "at once by a cap (sip.tcp_max_connections*).", ["transport", "outcome"],
                                    registry=registry),
            sip_connections_closed=Counter("eko_sip_connections_closed", "SIP TCP and TLS connections we closed: "
                                           "idle, slow headers, a message too large or unframeable.",
                                           ["transport", "reason"], registry=registry),
            sip_accept_out_of_descriptors=Counter("eko_sip_accept_out_of_descriptors",
                                                  "SIP accept(2) failures for want of a file descriptor.",
                                                  ["transport"], registry=registry),
            tls_handshake_failures=Counter("eko_sip_tls_handshake_failures", "SIP TLS handshakes that failed "
                                           "or were not complete within sip.tls_handshake_timeout.", ["reason"],
                                           registry=registry),
            sip_connections_open=Gauge("eko_sip_connections_open", "SIP TCP and TLS connections up now.",
                                       ["transport"], registry=registry),
        )
        for reason, answer in REFUSALS:
            metrics.sip_refused.labels(reason=reason, answer=answer)
        for result in ("succeeded", "failed"):
            metrics.transfers.labels(result=result)
        # Known label values start at 0, so a rate() over them exists from the start.
        for cache in CACHES:
            metrics.cache_hits.labels(cache=cache)
            metrics.cache_misses.labels(cache=cache)
        for backend in TTS_BACKENDS:
            metrics.tts_characters.labels(backend=backend)
        for reason in DropReason:
            metrics.srtp_dropped.labels(reason=reason.value)
        for transport in STREAM_TRANSPORTS:
            metrics.sip_connections_open.labels(transport=transport)
            for field in STREAM_COUNTERS:
                metrics.stream_counter(transport, field)
        return metrics

    def stream_counter(self, transport: str, field: str):
        """The counter (with its labels) that field ``field`` of ``transport``'s TcpCounters is exported as."""
        name, labels = STREAM_COUNTERS[field]
        counter = getattr(self, name)
        if name != "tls_handshake_failures":  # only TLS has handshakes: no transport label
            labels = {"transport": transport, **labels}
        return counter.labels(**labels) if labels else counter

    def call_quality(self, quality) -> None:
        """Observe a finished call's audio figures (an eko_rtp.media.quality.CallQuality)."""
        if quality.packets_expected:
            self.call_loss.observe(quality.loss_ratio)
            self.call_jitter.observe(quality.jitter)
        if quality.round_trip is not None:
            self.call_round_trip.observe(quality.round_trip)

    def crm_lookup(self, result) -> None:
        """Count one CRM look-up's end (an eko_rtp.call.lookup.LookupResult).

        Every answer's latency is observed, late ones included; a look-up not over within
        the greeting budget is a timeout (answered late, failed late, or never answered),
        one that failed within it an error: each look-up is at most one of the two.
        """
        if result.answered:
            self.crm_lookup_latency.observe(result.took)
        if result.past_budget:
            self.crm_timeouts.inc()
        elif not result.answered:
            self.crm_errors.inc()

    def call_ended(self, outcome: str) -> None:
        """Count a finished call; ``outcome`` is a short snake_case word."""
        if not _OUTCOME.match(outcome):
            raise ValueError(f"call outcome {outcome!r} is not a short snake_case word")
        self.calls.labels(outcome=outcome).inc()

    def sip_response(self, code: int) -> None:
        """Count a SIP response sent (RFC 3261 §7.2: 100-699)."""
        if not 100 <= code <= 699:
            raise ValueError(f"SIP status code {code} is outside 100-699")
        self.sip_responses.labels(code=str(code)).inc()

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


@contextlib.contextmanager
def metrics_server(metrics: Metrics, address: HostPort) -> Iterator[HostPort]:
    """Serve ``/metrics`` on ``address`` in a thread; yield the bound address (port 0 resolved)."""
    try:
        server, thread = start_http_server(address.port, addr=address.host, registry=metrics.registry)
    except OSError as error:
        raise UserError(f"cannot serve metrics on {address}: {error.strerror}", key=LISTEN_KEY) from None
    try:
        yield HostPort(host=address.host, port=server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def serve_metrics(metrics: Metrics, settings: MetricsSettings, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Trio task: serve metrics until cancelled; ``started`` with the bound address or None (off)."""
    if settings.address is None:
        task_status.started(None)
        return
    stack = contextlib.ExitStack()
    bound = stack.enter_context(metrics_server(metrics, settings.address))
    try:
        task_status.started(bound)
        await trio.sleep_forever()
    finally:
        # Stopping the HTTP thread waits for its poll loop (up to 0.5 s): do it in a
        # worker thread so the event loop keeps running meanwhile.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(stack.close)
