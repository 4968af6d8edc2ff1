"""Logging for the service: one line per event, the Call-ID, no phone numbers, no secrets.

Theory of operation. One handler on the root logger writes to stderr, through
:class:`~eko_rtp.service.log_deferral.DeferringHandler` (which, in the running
service, writes INFO and DEBUG lines when the trio loop idles). Two filters run on
every record before it is formatted:

- :class:`CallIdFilter` stamps the record with the Call-ID of the call the code
  runs for. The Call-ID lives in a context variable set by :func:`call_context`;
  trio copies the context into each task it spawns, so every task of a call's
  nursery logs that call's Call-ID without passing it around.
- :class:`Sanitizer` rewrites the message: E.164-looking and French national
  numbers are masked except their last 4 digits (:func:`mask_phone`), the
  configured secrets (the ElevenLabs key) and ``xi-api-key`` header values are
  redacted, and control characters are escaped so a hostile SIP header cannot
  forge a second log line. It covers formatted tracebacks too. It is a safety
  net: code should mask numbers itself and never format secrets at all.

:class:`SipTrace` (``service.sip_trace``, off by default) logs every SIP message
received and sent, one record per message under ``eko_rtp.sip.trace``, through the
same filters: numbers in URIs and headers are masked, CR LF are escaped so a message
stays one line. SDES keys in SDP bodies (``a=crypto:... inline:<key>``, RFC 4568)
are replaced by ``[redacted]`` before anything else (``media/sdes.py``
``redact_keys``): whoever reads the log must not be able to decrypt the calls. It is bounded: a message is cut after ``max_bytes`` (saying so), and
at most ``per_second`` messages are logged each second; the rest are counted and
summarised in one line when the second is over.

:class:`LogBudget` bounds any other line written once per datagram (a bad SIP
message, an internal error): a burst, then a few a second, the rest counted and
summed up in one line a second, so a flood of hostile datagrams costs the disk a few
lines a second instead of one (or a traceback) per datagram.

Under systemd, stderr is connected to the journal (``$JOURNAL_STREAM`` names it):
journald timestamps each line itself, so the formatter omits the time and
prefixes the syslog priority (``<3>``, sd-daemon(3)) so ``journalctl -p err`` works.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import TextIO

from eko_rtp.media.sdes import redact_keys
from eko_rtp.service.log_deferral import DeferringHandler

REDACTED = "[redacted]"

TRACE_MAX_BYTES = 4096  # of one SIP message in the trace; the rest is cut
TRACE_PER_SECOND = 100  # SIP messages traced a second; beyond, counted only

_call_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("eko_call_id", default=None)

# Numbers that look like a person's phone number:
# - international: '+' then up to 15 digits (ITU-T E.164 §6), separators allowed;
# - French national: 0 then 9 digits, in pairs or not;
# - the digits-only user part of a sip:/sips:/tel: URI (the trunk often drops '+').
# Not matched: bare digit runs without those shapes (SSRCs, ports, timestamps).
_PHONE = re.compile(
    r"(?<![\w+])\+[1-9](?:[ .-]?\d){5,14}(?![\w])"
    r"|(?<![\w.+-])0[1-9](?:[ .-]?\d\d){4}(?!\w|[.-]\d)"
    r"|(?<=sip:)\d{6,15}(?=[@;>])|(?<=sips:)\d{6,15}(?=[@;>])|(?<=tel:)\d{6,15}(?![\w])"
)
_API_KEY_HEADER = re.compile(r"""(?i)(xi-api-key['"]?\s*[:=]\s*['"]?)[^\s'",}]+""")
# C0 controls and DEL, escaped (\n, \r, \t keep their short names).
_CONTROLS = {code: f"\\x{code:02x}" for code in [*range(0x20), 0x7F]} | {0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"}
# sd-daemon(3) prefixes: syslog priorities.
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


@contextlib.contextmanager
def call_context(call_id: str) -> Iterator[None]:
    """Within this block (and in tasks spawned from it), log records carry ``call_id``."""
    token = _call_id.set(call_id)
    try:
        yield
    finally:
        _call_id.reset(token)


def current_call_id() -> str | None:
    """The Call-ID set by the innermost :func:`call_context`, if any."""
    return _call_id.get()


def mask_phone(number: str, *, keep: int = 4) -> str:
    """``number`` with every digit but the last ``keep`` replaced by ``*`` (layout kept)."""
    if keep < 0:
        raise ValueError(f"keep must not be negative, got {keep}")
    to_mask = sum(character.isdigit() for character in number) - keep
    masked = []
    for character in number:
        if character.isdigit() and to_mask > 0:
            masked.append("*")
            to_mask -= 1
        else:
            masked.append(character)
    return "".join(masked)


class CallIdFilter(logging.Filter):
    """Sets ``record.call_id`` from :func:`call_context` (None outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.call_id = _call_id.get()
        return True


class Sanitizer(logging.Filter):
    """Masks phone numbers, redacts secrets and escapes control characters in records."""

    def __init__(self, *, secrets: Iterable[str | None] = (), mask_numbers: bool = True):
        super().__init__()
        # Longest first, so a secret containing another is redacted whole.
        self.secrets = sorted({secret for secret in secrets if secret}, key=len, reverse=True)
        self.mask_numbers = mask_numbers
        self._traceback_formatter = logging.Formatter()

    def clean(self, text: str) -> str:
        """``text`` with secrets redacted and (if configured) phone numbers masked."""
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        text = _API_KEY_HEADER.sub(lambda match: match.group(1) + REDACTED, text)
        text = redact_keys(text)  # SDES keys, wherever an SDP body got into a line
        if self.mask_numbers:
            text = _PHONE.sub(lambda match: mask_phone(match.group()), text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as error:  # a bug at the call site: say so, never raise into it nor print its arguments
            count = len(record.args) if isinstance(record.args, tuple) else 1
            message = (f"unformattable log message {str(record.msg)!r} with {count} argument(s): "
                       f"{type(error).__name__}: {error}")
        record.msg = self.clean(message).translate(_CONTROLS)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._traceback_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        return True


class ServiceFormatter(logging.Formatter):
    """``[<priority>]`` or time, level, logger, ``[call=...]``, message."""

    def __init__(self, *, journal: bool):
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        call_id = getattr(record, "call_id", None)
        call = f" [call={call_id.translate(_CONTROLS)}]" if call_id else ""
        line = f"{record.levelname} {record.name}{call}: {record.getMessage()}"
        if self.journal:
            priority = _PRIORITY.get(record.levelno, 3 if record.levelno > logging.ERROR else 7)
            line = f"<{priority}>{line}"
        else:
            line = f"{self.formatTime(record)} {line}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class SipTrace:
    """Logs SIP messages at INFO, each cut to ``max_bytes``, at most ``per_second`` a second.

    No I/O and no clock of its own: the transport passes ``now`` (trio's clock) with
    each message and calls :meth:`flush` about once a second, so a burst's summary
    is not left waiting for the next message.
    """

    def __init__(self, *, max_bytes: int = TRACE_MAX_BYTES, per_second: int = TRACE_PER_SECOND,
                 logger: logging.Logger | None = None):
        if max_bytes < 1 or per_second < 1:
            raise ValueError(f"max_bytes and per_second must be >= 1, got {max_bytes} and {per_second}")
        self.max_bytes = max_bytes
        self.per_second = per_second
        self.log = logger or logging.getLogger("eko_rtp.sip.trace")
        self._window_start: float | None = None
        self._traced = 0  # in the current one-second window
        self._skipped = 0  # ...and not traced, over the limit
        self.skipped_total = 0

    def message(self, direction: str, transport: str, peer: tuple, data: bytes, now: float) -> None:
        """One SIP message ``direction`` ("received from" or "sent to") ``peer`` over ``transport``."""
        self.flush(now)
        if self._window_start is None:
            self._window_start = now
        if self._traced >= self.per_second:
            self._skipped += 1
            self.skipped_total += 1
            return
        self._traced += 1
        # SDES keys (a=crypto ... inline:KEY) out before the cut, so no cut can leave half a key.
        shown = redact_keys(bytes(data))
        text = shown[: self.max_bytes].decode("utf-8", "replace")
        cut = len(shown) - self.max_bytes
        more = f" [truncated: {cut} more byte(s) not traced]" if cut > 0 else ""
        self.log.info("%s %s %s:%s, %d bytes: %s%s", direction, transport.upper(), peer[0], peer[1], len(data),
                      text, more)

    def flush(self, now: float) -> None:
        """Close the one-second window if it is over, summarising what it did not trace."""
        if self._window_start is None or now - self._window_start < 1.0:
            return
        if self._skipped:
            self.log.info("%d SIP message(s) not traced in the last second (limit %d a second)",
                          self._skipped, self.per_second)
        self._window_start = None
        self._traced = self._skipped = 0


class LogBudget:
    """Whether a per-datagram line may be written: ``burst`` at once, then ``per_second``.

    A token bucket (``burst`` tokens, refilled at ``per_second``): :meth:`allow` takes a
    token, or counts the line as held back. The first line held back sets
    :attr:`summary_due` a second later; at that time (or any time after) :meth:`held_back`
    hands over the count, and the caller writes one line saying how many were left
    out. No I/O and no clock, like :class:`SipTrace`: the caller passes ``now`` (trio's
    clock) and sees that :meth:`held_back` is called once :attr:`summary_due` comes.
    """

    SUMMARY_INTERVAL = 1.0  # s from the first line held back to the line that counts them

    def __init__(self, *, burst: int, per_second: float):
        if burst < 1 or per_second <= 0:
            raise ValueError(f"burst must be >= 1 and per_second > 0, got {burst} and {per_second}")
        self.burst = burst
        self.per_second = per_second
        self._tokens = float(burst)
        self._updated: float | None = None
        self._held = 0  # since the last summary
        self.held_total = 0
        self.summary_due: float | None = None  # set while lines are held back and not yet summed up

    def allow(self, now: float) -> bool:
        """True: write the line. False: it is counted for the next summary instead."""
        if self._updated is not None:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.per_second)
        self._updated = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self._held += 1
        self.held_total += 1
        if self.summary_due is None:
            self.summary_due = now + self.SUMMARY_INTERVAL
        return False

    def held_back(self, now: float) -> int:
        """The lines held back since the last summary once :attr:`summary_due` has come, else 0."""
        if self.summary_due is None or now < self.summary_due:
            return 0
        held, self._held, self.summary_due = self._held, 0, None
        return held


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd named in ``$JOURNAL_STREAM``."""
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (int(device), int(inode)) == (status.st_dev, status.st_ino)
    except (ValueError, OSError, AttributeError):
        # Unset or malformed variable, or a stream without a descriptor.
        return False


def configure_logging(
    *,
    level: int | str = logging.INFO,
    mask_numbers: bool = True,
    secrets: Iterable[str | None] = (),
    stream: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Install the service handler on the root logger; return it.

    Calling again (on reload) replaces the handler this function installed before,
    and the plain stderr handler ``logging.basicConfig`` may have added, so each
    event is written once.
    """
    stream = sys.stderr if stream is None else stream
    # ServiceFormatter writes none of the caller's file, line, thread or process: the
    # logging module's documented switches stop it from finding them for every record
    # (a call's set-up logs three lines before its 200 OK: docs/BENCHMARKS.md).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    writer = logging.StreamHandler(stream)
    writer.addFilter(Sanitizer(secrets=secrets, mask_numbers=mask_numbers))
    writer.setFormatter(ServiceFormatter(journal=stream_is_journal(stream, environ)))
    handler = DeferringHandler(writer)  # service/log_deferral.py: lines written when the loop idles
    handler.set_name("eko-rtp-service")
    handler.addFilter(CallIdFilter())  # in front: the Call-ID is the context's when the line is logged
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == "eko-rtp-service" or type(old) is logging.StreamHandler:
            root.removeHandler(old)
            old.flush()  # what it held, before the new handler's first line
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler
