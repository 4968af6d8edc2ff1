"""The server's configuration: one TOML file, validated at start, overridable by flags.

Theory of operation: the schema below is data (section -> key -> (type, default)).
:func:`load_config` reads the file with ``tomllib``, refuses an unknown section or
key and a value of the wrong type with a :class:`UserError` naming the file and the
dotted key, and returns a frozen :class:`Config`. Command-line flags are applied
afterwards with :meth:`Config.with_overrides`, through the same validation, so a bad
``--rtp-ports`` is reported like a bad ``media.rtp_ports``. The values themselves
(address syntax, port ranges) are checked here too, so nothing later has to guess.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from pathlib import Path
from typing import Any

import attrs

from eko_rtp.errors import UserError
from eko_rtp.media.latch import parse_networks
from eko_rtp.media.mmsg import available as batched_io_missing
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.uri import parse_uri
from eko_rtp.transfer.hours import DAY_NAMES, DEFAULT_HOLIDAYS, DEFAULT_TIMEZONE, DEFAULT_WEEKLY

DEFAULT_SCRIPT = "eko_rtp.call.eko_script:run"

# section -> key -> (accepted python types, default)
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], Any]]] = {
    "sip": {
        # Where SIP binds (an IP: 0.0.0.0 or [::] for every interface) ...
        "listen": ((str,), "127.0.0.1:5060"),
        # ... and what callers are told, in Contact and Via: IP[:PORT] (default: the listen
        # address and the bound port). A wildcard listen needs it (RFC 3261 §8.1.1.8: the
        # Contact is where the peer sends its next request; 0.0.0.0 reaches no one).
        "advertise": ((str,), ""),
        "transports": ((list,), ["udp", "tcp"]),
        "user_agent": ((str,), "Eko-RTP/0.1"),
        "session_expires": ((int,), 1800),
        "min_se": ((int,), 90),
        "max_message_size": ((int,), 65536),
        "answer_timeout": ((int, float), 2.0),
        "t1": ((int, float), 0.5),
        # SIP over TCP (eko_rtp/server/transport.py). A connection with no message and no CRLF
        # keepalive for tcp_idle_timeout s is closed: RFC 5626 §4.4.1 clients ping every
        # 95-120 s, and a missed ping still leaves a minute. A message's headers must be
        # complete tcp_header_timeout s after its first byte (a slowloris trickles them).
        "tcp_idle_timeout": ((int, float), 180.0),
        "tcp_header_timeout": ((int, float), 10.0),
        # Accepted connections at once, and from one IP address: beyond, a connection is
        # closed as soon as accepted (counted, logged once per 10 s). 512 is half the 1024
        # descriptors LimitNOFILE= leaves beyond RTP; a trunk needs a handful.
        "tcp_max_connections": ((int,), 512),
        "tcp_max_connections_per_source": ((int,), 50),
        # SIP over TLS (docs/OPERATIONS.md "SIP over TLS"), with "tls" in transports: its
        # port (0: any free one), the handshake's time limit, and file paths only (the
        # private key may come as the systemd credential sip_tls_key instead, never here).
        # The tcp_* limits above count TLS connections with TCP ones. tls_client_ca set:
        # clients must show a certificate from it (mutual TLS); tls_trust: the CAs of the
        # peers we connect to (empty: the system's store).
        "tls_port": ((int,), 5061),
        "tls_handshake_timeout": ((int, float), 10.0),
        "tls_certificate": ((str,), ""),
        "tls_private_key": ((str,), ""),
        "tls_client_ca": ((str,), ""),
        "tls_trust": ((str,), ""),
        # Admission (eko_rtp/sip/admission.py, docs/OPERATIONS.md): only sources in these
        # CIDR blocks may call, probe with OPTIONS, or send anything outside a call, and only
        # their P-Asserted-Identity is believed (RFC 3325). Loopback by default: set the
        # trunk's (or the Kamailio front's) addresses in production.
        "trusted_networks": ((list,), ["127.0.0.0/8", "::1/128"]),
        # What a request from elsewhere gets: "refuse" (403 while within its rate, then
        # silence), "drop" (silence), or "accept" (served, its P-Asserted-Identity ignored).
        "untrusted_action": ((str,), "refuse"),
        # Calls at once; the next INVITE gets 503 + Retry-After (and OPTIONS 503). Capped
        # by the pairs of media.rtp_ports (a warning at start when above them).
        "max_calls": ((int,), 2000),
        # Initial INVITEs a second from one source address (a token bucket of invite_burst);
        # beyond it 503 + Retry-After (silence for an untrusted source).
        "invite_rate_per_source": ((int, float), 100.0),
        "invite_burst": ((int,), 200),
    },
    "media": {
        # The address our SDP c= line gives for RTP (default: the sip.advertise host, else
        # the listen address). RTP binds on the sip.listen address, whatever this says.
        "address": ((str,), ""),
        "rtp_ports": ((str,), "20000-29999"),
        # "per-call": a socket pair per call; "shared": the calls whose SDP names an
        # address in trusted_networks share one pair, with batched sends and receives
        # (eko_rtp/media/shared_port.py); the others still get their own.
        "rtp_socket": ((str,), "per-call"),
        "codec": ((str,), "offer"),
        "rtp_timeout": ((int, float), 30.0),
        # From the 200 OK to the ACK: seconds without the caller's RTP or RTCP before we
        # hang up (a forged INVITE neither ACKs nor sends media).
        "rtp_timeout_before_ack": ((int, float), 5.0),
        # Where media may go before the caller proved it is there (its first RTP packet, or
        # the ACK for a public address): CIDR blocks of the trunks' media gateways. Anything
        # else named in an SDP c= line waits, so a forged INVITE cannot aim our audio at a
        # third party (eko_rtp/media/latch.py). A NAT latch also accepts sources from these.
        "trusted_networks": ((list,), ["127.0.0.0/8", "::1/128"]),
        # Seconds the latched caller must be silent (no RTP, no RTCP) before packets from
        # another acceptable source may take the call's media over (a NAT re-mapping).
        "relatch_after": ((int, float), 2.0),
        "max_call_duration": ((int, float), 3600.0),
        # One SCHED_IDLE spinner per CPU the server is pinned to, so those CPUs never
        # halt between frames (eko_rtp/server/awake.py): for CPUs dedicated to it.
        "keep_cpu_awake": ((bool,), False),
        # The CPUs the server runs on, like taskset -c ("2", "2,3", "2-3"; "": any):
        # install-service turns it into the unit's CPUAffinity=.
        "cpus": ((str,), ""),
        # SRTP with SDES keys (docs/OPERATIONS.md "SRTP"): "off" (RTP/AVP only, an RTP/SAVP
        # offer gets 488), "optional" (what the offer asks), "required" (an offer without
        # usable a=crypto gets 488). srtp_suites: our preference among the offered suites.
        # srtp_over_insecure_signalling: take a=crypto keys in SIP over UDP or TCP, where
        # anyone on the path reads them; for test labs and private links only.
        "srtp": ((str,), "optional"),
        "srtp_suites": ((list,), ["AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]),
        "srtp_over_insecure_signalling": ((bool,), False),
    },
    "cache": {
        "dir": ((str,), "cache"),
        "phrases": ((str,), "cache/phrases.toml"),
        # Start (and reload) with phrases of the catalogue missing from the cache; off, a
        # partial cache is refused, naming the keys (serve --degraded sets it).
        "allow_missing": ((bool,), False),
    },
    "crm": {
        "address": ((str,), ""),
        "budget_ms": ((int,), 150),
    },
    "tts": {  # "" means the built-in default (eko_rtp.tts.settings) or the environment
        "voice_id": ((str,), ""),
        "model_id": ((str,), ""),
        "base_url": ((str,), ""),
        "optimize_streaming_latency": ((int,), 3),
        "first_byte_timeout": ((int, float), 1.5),
        "dynamic_cache_dir": ((str,), "cache/dynamic"),
        "dynamic_cache_max_bytes": ((int,), 256 * 1024 * 1024),
        "espeak_voice": ((str,), ""),
    },
    "script": {
        "function": ((str,), DEFAULT_SCRIPT),
        # Eko's script: silence after a question before "Allô, vous êtes toujours là ?",
        # and before the goodbye and BYE.
        "silence_reprompt_seconds": ((int, float), 15.0),
        "silence_hangup_seconds": ((int, float), 30.0),
    },
    "listen": {
        # Voice activity detection on the caller's audio (docs/VAD.md): barge-in and
        # turn taking. The WebRTC VAD's mode, the level speech must reach to start, how
        # long it must last to count and how long a pause ends it.
        "vad": ((bool,), True),
        "vad_aggressiveness": ((int,), 2),
        "vad_gate_dbfs": ((int, float), -45.0),
        "vad_min_speech_ms": ((int,), 60),
        "vad_hangover_ms": ((int,), 300),
    },
    "asr": {  # streaming speech recognition (Deepgram); the key: DEEPGRAM_API_KEY or a credential
        # "" = wss://api.deepgram.com, or $DEEPGRAM_BASE_URL (ws:// for a local endpoint).
        "base_url": ((str,), ""),
        "model": ((str,), "nova-2"),
        "language": ((str,), "fr"),
        "endpointing_ms": ((int,), 500),
        # A TOML file of words to boost (docs/ASR.md); "" = none.
        "keywords_file": ((str,), ""),
        # The calls' recognizer streams in a child process of their own, off the media
        # core (eko_rtp/asr/relay_client.py), on relay_cpus ("" = the CPUs the server
        # is not pinned to).
        "relay": ((bool,), False),
        "relay_cpus": ((str,), ""),
    },
    "recording": {
        # Both directions of every call to a WAV in this directory (caller data: off
        # unless set); files older than retention_days are deleted.
        "directory": ((str,), ""),
        "retention_days": ((int, float), 30),
    },
    "transfer": {
        # Technician queues (docs/OPERATIONS.md, "Handing callers over"): the SIP URI our
        # REFER names in Refer-To. A ticket's problem type picks its queue, "default"
        # takes the rest; no default: a caller who wants a technician gets a callback.
        "internet": ((str,), ""),
        "mobile": ((str,), ""),
        "default": ((str,), ""),
        # Technician load, across all calls of the server: at most this many transfers
        # in this many seconds, then callbacks instead.
        "max_per_window": ((int,), 5),
        "window_seconds": ((int, float), 600.0),
        # The phone's NOTIFYs: the first one (RFC 3515 §2.4.4: at once) and the final one
        # (the technician answered); then our own BYE if the trunk sent none.
        "notify_timeout": ((int, float), 5.0),
        "result_timeout": ((int, float), 60.0),
        "bye_wait": ((int, float), 2.0),
    },
    "hours": {
        # When technicians take calls, in local time of `timezone`: spans per day
        # ("08:00-12:00, 14:00-18:00"; "" closed) and closed dates ("YYYY-MM-DD").
        "timezone": ((str,), DEFAULT_TIMEZONE),
        **{day: ((str,), DEFAULT_WEEKLY[day]) for day in DAY_NAMES},
        "holidays": ((list,), list(DEFAULT_HOLIDAYS)),
    },
    "registration": {
        # For a trunk that wants us registered (RFC 3261 §10): the registrar's URI
        # ("" = no registration) and our address of record there. The user name and
        # password are credentials (docs/OPERATIONS.md), never in this file.
        "registrar": ((str,), ""),
        "aor": ((str,), ""),
        "expires": ((int,), 3600),
        "transport": ((str,), "udp"),
    },
    "service": {
        "drain_grace_seconds": ((int, float), 60.0),
        "metrics_listen": ((str,), ""),
        "log_full_numbers": ((bool,), False),
        # The log level (DEBUG, INFO, WARNING, ERROR, CRITICAL); eko-rtp --log-level wins.
        "log_level": ((str,), "INFO"),
        # Log every SIP message received and sent (eko_rtp.sip.trace, numbers masked, 4 KiB and
        # 100 messages a second at most): for debugging a trunk; eko-rtp serve --sip-trace.
        "sip_trace": ((bool,), False),
    },
}

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@attrs.frozen(kw_only=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_host_port(text: str, *, what: str, default_port: int | None = None) -> HostPort:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; the error names ``what``."""
    text = text.strip()
    host, separator, port_text = text.rpartition(":")
    if text.startswith("[") and "]" in text:
        closing = text.index("]")
        host = text[1:closing]
        rest = text[closing + 1 :]
        if rest and not rest.startswith(":"):
            raise UserError(f"expected [HOST]:PORT, got {text!r}", key=what)
        port_text = rest[1:]
        separator = ":" if rest else ""
    if not separator or not host:
        if default_port is None:
            raise UserError(f"expected HOST:PORT, got {text!r}", key=what)
        host, port_text = text.strip("[]"), str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise UserError(f"port {port_text!r} is not a number in {text!r}", key=what) from None
    if not 0 <= port <= 65535:
        raise UserError(f"port {port} is out of range 0-65535 in {text!r}", key=what)
    return HostPort(host=host, port=port)


def parse_cpu_list(text: str, *, what: str) -> frozenset[int]:
    """Parse a CPU list like ``2``, ``2,3`` or ``0-3`` (taskset's syntax), checked against this machine."""
    cpus: set[int] = set()
    try:
        for part in text.split(","):
            low, dash, high = part.strip().partition("-")
            first, last = int(low), int(high if dash else low)
            if not 0 <= first <= last:
                raise ValueError
            cpus.update(range(first, last + 1))
    except ValueError:
        raise UserError(f"expected a CPU list like 0 or 0,1 or 0-1, got {text!r}", key=what) from None
    present = os.cpu_count() or 1
    if max(cpus) >= present:
        raise UserError(f"CPU {max(cpus)} does not exist here (CPUs 0-{present - 1})", key=what)
    return frozenset(cpus)


def parse_port_range(text: str, *, what: str) -> tuple[int, int]:
    """Parse ``LO-HI`` into an even-aligned RTP port range (RFC 3550 §11: RTP even, RTCP odd)."""
    low_text, separator, high_text = text.partition("-")
    try:
        low, high = int(low_text), int(high_text)
    except ValueError:
        raise UserError(f"expected LO-HI port range, got {text!r}", key=what) from None
    if not separator or not 1024 <= low < high <= 65535:
        raise UserError(f"port range {text!r} must be LO-HI with 1024 <= LO < HI <= 65535", key=what)
    if low % 2:
        low += 1
    if high - low < 1:
        raise UserError(f"port range {text!r} holds no even RTP port with its RTCP port", key=what)
    return low, high


@attrs.frozen(kw_only=True)
class Config:
    """The validated configuration; ``source`` is the file it came from, if any."""

    values: dict[str, dict[str, Any]]
    source: str | None = None

    def __getitem__(self, dotted: str) -> Any:
        section, _, key = dotted.partition(".")
        return self.values[section][key]

    def with_overrides(self, overrides: dict[str, Any]) -> "Config":
        values = {section: dict(keys) for section, keys in self.values.items()}
        for dotted, value in overrides.items():
            if value is None:
                continue
            section, _, key = dotted.partition(".")
            values[section][key] = value
        return build_config(values, source="command line" if self.source is None else f"{self.source} + flags")

    @property
    def sip_listen(self) -> HostPort:
        return parse_host_port(self["sip.listen"], what="sip.listen")

    @property
    def sip_advertise(self) -> HostPort:
        """What Contact and Via carry; port 0 means the port SIP is bound to."""
        if self["sip.advertise"]:
            return parse_host_port(self["sip.advertise"], what="sip.advertise", default_port=0)
        return HostPort(host=self.sip_listen.host, port=0)

    @property
    def media_address(self) -> str:
        """The address our SDP offers for RTP (the sockets bind on the sip.listen host)."""
        return self["media.address"] or self.sip_advertise.host

    @property
    def cpus(self) -> frozenset[int] | None:
        """``media.cpus`` as a set, or None when the server may run anywhere."""
        return parse_cpu_list(self["media.cpus"], what="media.cpus") if self["media.cpus"] else None

    @property
    def rtp_ports(self) -> tuple[int, int]:
        return parse_port_range(self["media.rtp_ports"], what="media.rtp_ports")


def _check_values(values: dict[str, dict[str, Any]], source: str | None) -> None:
    def fail(key: str, message: str) -> None:
        raise UserError(message, path=source, key=key)

    transports = values["sip"]["transports"]
    if not transports or any(t not in ("udp", "tcp", "tls") for t in transports):
        fail("sip.transports", f"must be a non-empty list of 'udp', 'tcp' and 'tls', got {transports!r}")
    if "tls" in transports and not values["sip"]["tls_certificate"]:
        fail("sip.tls_certificate", "SIP over TLS (sip.transports has 'tls') needs the certificate chain's file")
    if not 0 <= values["sip"]["tls_port"] <= 65535:
        fail("sip.tls_port", f"must be a port number (0 to 65535; 0: any free port), got {values['sip']['tls_port']}")
    addresses = {}
    for dotted in ("sip.listen", "sip.advertise"):
        section, _, key = dotted.partition(".")
        if key == "advertise" and not values[section][key]:
            continue  # optional: the listen address
        try:
            address = parse_host_port(values[section][key], what=dotted, default_port=0 if key == "advertise" else None)
        except UserError as error:
            fail(dotted, error.detail)
        try:
            # A name here would be resolved by blocking calls (bind, the SDP address) and
            # could change under a running server: the operator resolves it once, here.
            addresses[dotted] = ipaddress.ip_address(address.host)
        except ValueError:
            fail(dotted, f"{address.host!r} is not an IP address (write 127.0.0.1 or ::1 for localhost)")
    if values["media"]["address"]:
        try:
            addresses["media.address"] = ipaddress.ip_address(values["media"]["address"])
        except ValueError:
            fail("media.address", f"{values['media']['address']!r} is not an IP address")
    # A wildcard is a fine place to bind, and no place to send anything to: in Contact it
    # strands the caller's next request, in SDP c= it reads as "on hold" (RFC 3264 §8.4).
    for dotted, address in addresses.items():
        if dotted != "sip.listen" and address.is_unspecified:
            fail(dotted, f"{address} is a wildcard address: write the address callers reach this server at")
    if addresses["sip.listen"].is_unspecified and "sip.advertise" not in addresses:
        fail("sip.listen", f"{values['sip']['listen']} binds every interface, which tells callers nothing: set "
                           "sip.advertise to the address for Contact and Via (IP[:PORT]), and media.address "
                           "if RTP should go elsewhere than that IP")
    try:
        parse_port_range(values["media"]["rtp_ports"], what="media.rtp_ports")
    except UserError as error:
        fail("media.rtp_ports", error.detail)
    if values["media"]["cpus"]:
        try:
            parse_cpu_list(values["media"]["cpus"], what="media.cpus")
        except UserError as error:
            fail("media.cpus", error.detail)
    if values["service"]["log_level"].upper() not in LOG_LEVELS:
        fail("service.log_level", f"{values['service']['log_level']!r} is not a log level ({', '.join(LOG_LEVELS)})")
    if values["media"]["codec"] not in ("offer", "PCMU", "PCMA"):
        fail("media.codec", f"must be 'offer', 'PCMU' or 'PCMA', got {values['media']['codec']!r}")
    if values["asr"]["relay_cpus"]:
        try:
            parse_cpu_list(values["asr"]["relay_cpus"], what="asr.relay_cpus")
        except UserError as error:
            fail("asr.relay_cpus", error.detail)
    if values["media"]["rtp_socket"] not in ("per-call", "shared"):
        fail("media.rtp_socket", f"must be 'per-call' or 'shared', got {values['media']['rtp_socket']!r}")
    if values["media"]["rtp_socket"] == "shared":
        missing = batched_io_missing()
        if missing is not None:
            fail("media.rtp_socket", f"'shared' needs batched socket calls: {missing}")
    if values["sip"]["min_se"] < 90:
        fail("sip.min_se", "must be at least 90 seconds (RFC 4028 §4)")
    if values["sip"]["session_expires"] < values["sip"]["min_se"]:
        fail("sip.session_expires", "must not be below sip.min_se")
    if ":" not in values["script"]["function"]:
        fail("script.function", f"expected MODULE:FUNCTION, got {values['script']['function']!r}")
    _check_listening(values, fail)
    _check_handover(values, fail)
    _check_admission(values, fail)
    try:
        parse_networks(values["media"]["trusted_networks"])
    except ValueError as error:
        fail("media.trusted_networks", str(error))
    _check_srtp(values, fail)
    for dotted in ("media.rtp_timeout", "media.rtp_timeout_before_ack", "media.relatch_after", "media.max_call_duration",
                   "service.drain_grace_seconds", "sip.answer_timeout",
                   "sip.t1", "script.silence_reprompt_seconds", "script.silence_hangup_seconds",
                   "recording.retention_days"):
        section, _, key = dotted.partition(".")
        if values[section][key] <= 0:
            fail(dotted, "must be positive")
    for key in ("tcp_idle_timeout", "tcp_header_timeout", "tcp_max_connections", "tcp_max_connections_per_source",
                "tls_handshake_timeout"):
        if values["sip"][key] <= 0:
            fail(f"sip.{key}", "must be positive")


def _check_srtp(values: dict[str, dict[str, Any]], fail) -> None:
    from eko_rtp.media.sdes import CryptoSuite, SrtpMode

    modes = [mode.value for mode in SrtpMode]
    if values["media"]["srtp"] not in modes:
        fail("media.srtp", f"must be {', '.join(map(repr, modes[:-1]))} or {modes[-1]!r}, got {values['media']['srtp']!r}")
    suites = values["media"]["srtp_suites"]
    names = [suite.value for suite in CryptoSuite]
    if not suites:
        fail("media.srtp_suites", f"must name at least one crypto suite of {', '.join(names)}")
    for suite in suites:
        if suite not in names:
            fail("media.srtp_suites", f"{suite!r} is not a crypto suite we support ({', '.join(names)})")
    if len(set(suites)) != len(suites):
        fail("media.srtp_suites", "names a crypto suite twice")


def _check_listening(values: dict[str, dict[str, Any]], fail) -> None:
    from eko_rtp.media.vad import VadSettings

    listen = values["listen"]
    for key, field in (("vad_aggressiveness", "aggressiveness"), ("vad_gate_dbfs", "gate_dbfs"),
                       ("vad_min_speech_ms", "min_speech_ms"), ("vad_hangover_ms", "hangover_ms")):
        try:
            VadSettings(**{field: listen[key]})
        except ValueError as error:
            fail(f"listen.{key}", str(error).removeprefix("VAD ").removeprefix(field + " "))
    if not 10 <= values["asr"]["endpointing_ms"] <= 10_000:
        fail("asr.endpointing_ms", "must be within 10 to 10000 ms")
    if values["script"]["silence_hangup_seconds"] < values["script"]["silence_reprompt_seconds"]:
        fail("script.silence_hangup_seconds", "must not be below script.silence_reprompt_seconds")


def _check_handover(values: dict[str, dict[str, Any]], fail) -> None:
    for dotted in ("transfer.window_seconds", "transfer.notify_timeout", "transfer.result_timeout",
                   "registration.expires"):
        section, _, key = dotted.partition(".")
        if values[section][key] <= 0:
            fail(dotted, "must be positive")
    if values["transfer"]["bye_wait"] < 0:
        fail("transfer.bye_wait", "must not be negative")
    if values["transfer"]["max_per_window"] < 0:
        fail("transfer.max_per_window", "must not be negative (0: never transfer)")
    for build in (business_hours, transfer_targets):
        try:
            build(values)
        except ValueError as error:
            key, _, message = str(error).partition(": ")
            fail(key, message)
    registration = values["registration"]
    if registration["transport"] not in values["sip"]["transports"]:
        fail("registration.transport", f"{registration['transport']!r} is not one of sip.transports")
    if bool(registration["registrar"]) != bool(registration["aor"]):
        fail("registration.aor" if registration["registrar"] else "registration.registrar",
             "registration needs both registration.registrar and registration.aor")
    for key in ("registrar", "aor"):
        if registration[key]:
            try:
                uri = parse_uri(registration[key], f"registration.{key}")
            except SipParseError as error:
                fail(f"registration.{key}", error.reason)
            if uri.scheme not in ("sip", "sips"):
                fail(f"registration.{key}", f"expected a sip: URI, got {registration[key]!r}")


def _check_admission(values: dict[str, dict[str, Any]], fail) -> None:
    try:
        admission_settings(values)
    except ValueError as error:
        key, _, message = str(error).partition(": ")
        fail(key, message)


def admission_settings(values, *, max_calls: int | None = None):
    """The ``[sip]`` admission keys as :class:`~eko_rtp.sip.admission.AdmissionSettings` (a Config or its values).

    ``max_calls`` overrides ``sip.max_calls`` (the server caps it by its RTP port pairs).
    A ValueError reads ``"<dotted key>: <what is wrong>"``.
    """
    from eko_rtp.sip.admission import AdmissionSettings, UntrustedAction, parse_networks

    sip = values.values["sip"] if isinstance(values, Config) else values["sip"]
    try:
        networks = parse_networks(sip["trusted_networks"])
    except ValueError as error:
        raise ValueError(f"sip.trusted_networks: {error}") from None
    if not networks:
        raise ValueError("sip.trusted_networks: must list at least the trunk's network (every source would be"
                         " untrusted); write [\"0.0.0.0/0\", \"::/0\"] to trust everyone")
    actions = [action.value for action in UntrustedAction]
    if sip["untrusted_action"] not in actions:
        raise ValueError(f"sip.untrusted_action: must be one of {', '.join(map(repr, actions))},"
                         f" got {sip['untrusted_action']!r}")
    for key in ("max_calls", "invite_burst"):
        if sip[key] < 1:
            raise ValueError(f"sip.{key}: must be at least 1")
    if sip["invite_rate_per_source"] <= 0:
        raise ValueError("sip.invite_rate_per_source: must be positive (INVITEs a second)")
    return AdmissionSettings(trusted_networks=networks, untrusted_action=sip["untrusted_action"],
                             max_calls=sip["max_calls"] if max_calls is None else max_calls,
                             invite_rate_per_source=sip["invite_rate_per_source"], invite_burst=sip["invite_burst"])


def business_hours(values):
    """The ``[hours]`` section as :class:`~eko_rtp.transfer.hours.BusinessHours` (a Config or its values)."""
    from eko_rtp.transfer.hours import BusinessHours

    hours = values.values["hours"] if isinstance(values, Config) else values["hours"]
    return BusinessHours.from_settings(weekly={day: hours[day] for day in DAY_NAMES}, holidays=hours["holidays"],
                                       timezone=hours["timezone"], where="hours")


def transfer_targets(values):
    """The ``[transfer]`` queues as :class:`~eko_rtp.transfer.policy.TransferTargets`."""
    from eko_rtp.transfer.policy import TransferTargets

    transfer = values.values["transfer"] if isinstance(values, Config) else values["transfer"]
    return TransferTargets.from_settings({queue: transfer[queue] for queue in ("internet", "mobile", "default")
                                          if transfer[queue]}, "transfer")


def latch_policy(values):
    """``media.trusted_networks`` and ``media.relatch_after`` as a :class:`~eko_rtp.media.latch.LatchPolicy`."""
    from eko_rtp.media.latch import LatchPolicy

    media = values.values["media"] if isinstance(values, Config) else values["media"]
    return LatchPolicy(trusted_networks=parse_networks(media["trusted_networks"]), relatch_after=media["relatch_after"])


def srtp_policy(values):
    """``media.srtp``, ``media.srtp_suites`` and ``media.srtp_over_insecure_signalling`` as an
    :class:`~eko_rtp.media.sdes.SrtpPolicy`."""
    from eko_rtp.media.sdes import CryptoSuite, SrtpMode, SrtpPolicy

    media = values.values["media"] if isinstance(values, Config) else values["media"]
    return SrtpPolicy(mode=SrtpMode(media["srtp"]), preference=tuple(CryptoSuite(name) for name in media["srtp_suites"]),
                      insecure_signalling=media["srtp_over_insecure_signalling"])


def vad_settings(config: "Config"):
    """The config's VAD settings (None: listen.vad is off)."""
    from eko_rtp.media.vad import VadSettings

    if not config["listen.vad"]:
        return None
    return VadSettings(aggressiveness=config["listen.vad_aggressiveness"], gate_dbfs=config["listen.vad_gate_dbfs"],
                       min_speech_ms=config["listen.vad_min_speech_ms"], hangover_ms=config["listen.vad_hangover_ms"])


def build_config(raw: dict[str, Any], *, source: str | None) -> Config:
    """Validate ``raw`` (section -> key -> value) against the schema, filling defaults."""
    values: dict[str, dict[str, Any]] = {}
    for section, keys in raw.items():
        if section not in SCHEMA:
            raise UserError(f"unknown section [{section}] (known: {', '.join(SCHEMA)})", path=source, key=section)
        if not isinstance(keys, dict):
            raise UserError(f"[{section}] must be a table", path=source, key=section)
        for key, value in keys.items():
            dotted = f"{section}.{key}"
            if key not in SCHEMA[section]:
                known = ", ".join(SCHEMA[section])
                raise UserError(f"unknown key (known in [{section}]: {known})", path=source, key=dotted)
            types, _ = SCHEMA[section][key]
            if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                wanted = " or ".join(t.__name__ for t in types)
                raise UserError(f"expected {wanted}, got {type(value).__name__} {value!r}", path=source, key=dotted)
    for section, keys in SCHEMA.items():
        given = raw.get(section, {})
        values[section] = {key: given.get(key, default) for key, (_, default) in keys.items()}
        for key, value in values[section].items():
            if isinstance(value, list):
                values[section][key] = list(value)
    _check_values(values, source)
    return Config(values=values, source=source)


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the TOML file at ``path`` (``None``: embedded defaults)."""
    if path is None:
        return build_config({}, source=None)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read config: {error.strerror}", path=str(file)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"TOML syntax error: {error}", path=str(file)) from None
    return build_config(raw, source=str(file))
