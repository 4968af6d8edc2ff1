"""Deepgram's live speech-to-text websocket as data: the URL, the control messages, the replies.

Theory of operation: no networking here (the trio shell is
:mod:`eko_rtp.asr.deepgram_client`). A stream is one websocket to ``{base_url}/v1/listen``
whose query string (:func:`listen_url`) says what the audio is (``encoding=mulaw``
or ``alaw``, ``sample_rate=8000``, ``channels=1``: the RTP payload as is, nothing to
transcode) and how to transcribe it (model, language, interim results, endpointing,
VAD events, keyword boosts). The key travels in an ``Authorization: Token <key>``
header (:func:`auth_headers`). Audio goes up as binary frames, never an empty one
(Deepgram reads an empty frame as the end of the stream); while no audio flows the
client sends :data:`KEEPALIVE` text frames, since Deepgram closes a stream that got
neither audio nor a text frame for 10 s (close 1011, ``NET-0001``). At hang-up the
client sends :data:`CLOSE_STREAM`: Deepgram transcribes what it holds, sends the last
``Results``, a ``Metadata`` summary, and closes with 1000.

Replies are JSON text frames. :func:`parse_message_untrusted` turns one into a typed
event (:class:`Transcript`, :class:`SpeechStarted`, :class:`UtteranceEnd`,
:class:`Metadata`, or :class:`Ignored` for a type we do not use) and can only raise
:class:`~eko_rtp.asr.errors.AsrProtocolError`: a reply is bounded in size
(:data:`MAX_MESSAGE_SIZE`), nesting (:data:`MAX_DEPTH`) and string lengths, must be
an object whose fields have the types and ranges Deepgram documents, and carries no
NaN or infinity. A transcript with ``is_final`` false is an interim guess that the
next ``Results`` replaces; ``is_final`` true fixes that stretch of audio;
``speech_final`` true also says the speaker paused for the endpointing time (the
turn may be over).

The handshake and the close are data too: :func:`handshake_error_untrusted` maps a
refused handshake (status, ``dg-error`` header or body) to the failure that says who
is at fault, and :func:`close_error` words a close that came before we asked for it.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Iterable

import attrs

from eko_rtp.asr.errors import (
    AsrDropped,
    AsrError,
    AsrNoKey,
    AsrProtocolError,
    AsrRequestRejected,
    AsrUnauthorized,
    AsrUnavailable,
)
from eko_rtp.asr.keywords import MAX_KEYWORDS, Keyword, keyword_problem
from eko_rtp.asr.websocket import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
)
from eko_rtp.codec.frame import SAMPLE_RATE

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_NORMAL",
    "CLOSE_STREAM",
    "CLOSE_TOO_BIG",
    "ENCODINGS",
    "FINALIZE",
    "KEEPALIVE",
    "MAX_DEPTH",
    "MAX_MESSAGE_SIZE",
    "MAX_TRANSCRIPT_CHARS",
    "AsrEvent",
    "AsrSettings",
    "Ignored",
    "ListenTarget",
    "Metadata",
    "SpeechStarted",
    "Transcript",
    "UtteranceEnd",
    "audio_seconds",
    "auth_headers",
    "close_error",
    "handshake_error_untrusted",
    "listen_target",
    "listen_url",
    "parse_message_untrusted",
]

# Deepgram's names for the two G.711 laws (RFC 3551 §4.5.14: PCMU is µ-law, PCMA A-law).
ENCODINGS = ("mulaw", "alaw")

# Control messages, sent as text frames (a binary one would be read as audio).
KEEPALIVE = '{"type": "KeepAlive"}'
CLOSE_STREAM = '{"type": "CloseStream"}'
FINALIZE = '{"type": "Finalize"}'  # flush: what is buffered comes back as final Results

# A Results reply is a few kilobytes (a transcript and its words with timings); a
# reply sixteen times the largest we expect is refused, here and in the websocket
# layer (measured as len(): characters of a text frame, bytes of a binary one).
MAX_MESSAGE_SIZE = 64 * 1024
# Results nest six levels deep (message, channel, alternatives, best, words, word).
MAX_DEPTH = 16
# An utterance between two endpointing pauses: a few hundred characters at most.
MAX_TRANSCRIPT_CHARS = 4096
MAX_NAME_CHARS = 128  # a message type, a request id
MAX_INT_DIGITS = 20  # no field of a reply needs more than 64 bits
# Stream offsets in seconds: a call is capped well under a day.
MAX_SECONDS = 86_400.0

# Deepgram closes a stream that got neither audio nor a text frame for 10 s
# (NET-0001) and advises a KeepAlive every 3 to 5 s: 4 s is the middle, and leaves
# 6 s for a KeepAlive held up behind a slow send or a busy event loop.
DEFAULT_KEEPALIVE_SECONDS = 4.0
DEEPGRAM_IDLE_TIMEOUT = 10.0


def _token(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value or not value.isprintable() or any(c.isspace() for c in value):
        raise ValueError(f"AsrSettings.{attribute.name} must be a non-empty word without spaces, got {value!r}")


def _ws_url(instance: object, attribute: attrs.Attribute, value: str) -> None:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(f"AsrSettings.base_url must be ws://, wss://, http:// or https:// and a host, got {value!r}")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError(f"AsrSettings.base_url has a bad port, got {value!r}") from None
    if parts.username is not None:  # not echoed: it may be a secret
        raise ValueError("AsrSettings.base_url must carry no credentials (the key is given apart)")
    if parts.query or parts.fragment:
        raise ValueError(f"AsrSettings.base_url must have no query or fragment, got {value!r}")


def _milliseconds(low: int, high: int):
    def check(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"AsrSettings.{attribute.name} must be whole milliseconds in {low}..{high} or None, "
                             f"got {value!r}")
    return check


def _keywords(value: Iterable[Keyword]) -> tuple[Keyword, ...]:
    keywords = tuple(value)
    if len(keywords) > MAX_KEYWORDS:
        raise ValueError(f"AsrSettings.keywords: {len(keywords)} keywords, over Deepgram's {MAX_KEYWORDS}")
    seen: set[str] = set()
    for pair in keywords:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise ValueError(f"AsrSettings.keywords: each keyword is a (word, boost) pair, got {pair!r}")
        word, boost = pair
        problem = keyword_problem(word, boost)
        if problem is not None:
            raise ValueError(f"AsrSettings.keywords: {problem}")
        if word.casefold() in seen:
            raise ValueError(f"AsrSettings.keywords: {word!r} is listed twice")
        seen.add(word.casefold())
    return tuple((word, float(boost)) for word, boost in keywords)


@attrs.frozen(kw_only=True)
class AsrSettings:
    """What to ask Deepgram for, for every call: the audio's shape and the transcription's."""

    base_url: str = attrs.field(default="wss://api.deepgram.com", validator=_ws_url)
    model: str = attrs.field(default="nova-2", validator=_token)
    language: str = attrs.field(default="fr", validator=_token)
    encoding: str = attrs.field(default="mulaw")
    sample_rate: int = attrs.field(default=SAMPLE_RATE)
    interim_results: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))
    # Silence after speech before Deepgram marks a result speech_final; None disables it.
    endpointing_ms: int | None = attrs.field(default=500, validator=_milliseconds(10, 10_000))
    # Word gap after which Deepgram sends UtteranceEnd; None: none sent. Deepgram works
    # it out from its interim results (so they must be on), sent about every second (so
    # less than 1000 ms gains nothing).
    utterance_end_ms: int | None = attrs.field(default=None, validator=_milliseconds(1000, 10_000))
    vad_events: bool = attrs.field(default=True, validator=attrs.validators.instance_of(bool))  # SpeechStarted
    keywords: tuple[Keyword, ...] = attrs.field(default=(), converter=_keywords)
    keepalive_seconds: float = attrs.field(default=DEFAULT_KEEPALIVE_SECONDS)

    @encoding.validator
    def _g711_law(self, attribute: attrs.Attribute, value: str) -> None:
        if value not in ENCODINGS:
            raise ValueError(f"AsrSettings.encoding must be mulaw (PCMU) or alaw (PCMA), got {value!r}")

    @sample_rate.validator
    def _g711_rate(self, attribute: attrs.Attribute, value: int) -> None:
        if value != SAMPLE_RATE or isinstance(value, bool):
            raise ValueError(f"AsrSettings.sample_rate must be {SAMPLE_RATE}: G.711 from RTP samples at "
                             f"{SAMPLE_RATE} Hz (RFC 3551 §4.5.14), got {value!r}")

    @keepalive_seconds.validator
    def _under_deepgram_timeout(self, attribute: attrs.Attribute, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < DEEPGRAM_IDLE_TIMEOUT:
            raise ValueError(f"AsrSettings.keepalive_seconds must be over 0 and under Deepgram's "
                             f"{DEEPGRAM_IDLE_TIMEOUT:g} s idle timeout, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.utterance_end_ms is not None and not self.interim_results:
            raise ValueError("AsrSettings.utterance_end_ms needs interim_results: Deepgram finds utterance ends "
                             "in its interim results")


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _boost_text(boost: float) -> str:
    """A boost as Deepgram reads it: plain decimal, three places at most (``2``, ``1.5``, ``-0.25``)."""
    text = f"{round(boost, 3) + 0.0:.3f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def listen_url(settings: AsrSettings) -> str:
    """The ``ws(s)://.../v1/listen?...`` URL of a stream with ``settings``.

    An ``http(s)`` base URL is taken as its websocket twin; a path in it is kept as a
    prefix (a proxy's mount point).
    """
    parts = urllib.parse.urlsplit(settings.base_url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    params: list[tuple[str, str]] = [
        ("model", settings.model),
        ("language", settings.language),
        ("encoding", settings.encoding),
        ("sample_rate", str(settings.sample_rate)),
        ("channels", "1"),
        ("interim_results", _flag(settings.interim_results)),
        ("endpointing", "false" if settings.endpointing_ms is None else str(settings.endpointing_ms)),
        ("vad_events", _flag(settings.vad_events)),
    ]
    if settings.utterance_end_ms is not None:
        params.append(("utterance_end_ms", str(settings.utterance_end_ms)))
    params.extend(("keywords", f"{word}:{_boost_text(boost)}") for word, boost in settings.keywords)
    # quote, not quote_plus: a space is %20 in a path-and-query, and ':' stays readable.
    query = urllib.parse.urlencode(params, safe=":", quote_via=urllib.parse.quote)
    return urllib.parse.urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/v1/listen", query, ""))


@attrs.frozen(kw_only=True)
class ListenTarget:
    """Where a stream connects (a TCP peer, TLS or not) and the handshake's ``Host`` and request target."""

    host: str
    port: int
    tls: bool
    host_header: str
    resource: str  # path and query


def listen_target(settings: AsrSettings) -> ListenTarget:
    """The :func:`listen_url` of ``settings``, taken apart for a websocket client."""
    url = urllib.parse.urlsplit(listen_url(settings))
    tls = url.scheme == "wss"
    assert url.hostname is not None  # AsrSettings checked it
    return ListenTarget(host=url.hostname, port=url.port or (443 if tls else 80), tls=tls, host_header=url.netloc,
                        resource=f"{url.path}?{url.query}")


def auth_headers(api_key: str) -> list[tuple[str, str]]:
    """The handshake's ``Authorization`` header; :class:`AsrNoKey` if the key cannot be one."""
    if not api_key or not api_key.strip():
        raise AsrNoKey("Deepgram: no API key (set DEEPGRAM_API_KEY)")
    if not api_key.isascii() or not api_key.isprintable() or any(c.isspace() for c in api_key):
        raise AsrNoKey("Deepgram: the API key must be printable ASCII without spaces")
    return [("Authorization", f"Token {api_key}")]


def audio_seconds(byte_count: int) -> float:
    """Seconds of G.711 audio in ``byte_count`` bytes (one byte a sample, 8000 samples a second)."""
    return byte_count / SAMPLE_RATE


# -- replies --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Transcript:
    """A ``Results`` reply: the best transcript of ``duration`` seconds of audio from ``start``.

    ``is_final`` false: an interim guess, replaced by the next result for the same
    stretch. ``is_final`` true: that stretch is settled. ``speech_final`` true: it
    ends with a pause of the endpointing time. ``from_finalize``: the answer to a
    :data:`FINALIZE` (or :data:`CLOSE_STREAM`) flush.
    """

    text: str
    is_final: bool
    speech_final: bool
    confidence: float
    start: float
    duration: float
    from_finalize: bool = False


@attrs.frozen(kw_only=True)
class SpeechStarted:
    """Deepgram's voice activity detector heard speech begin at ``timestamp`` seconds (``vad_events``)."""

    timestamp: float


@attrs.frozen(kw_only=True)
class UtteranceEnd:
    """No word for ``utterance_end_ms`` after the word that ended at ``last_word_end`` seconds."""

    last_word_end: float


@attrs.frozen(kw_only=True)
class Metadata:
    """The stream's summary, sent last: Deepgram's request id and the seconds of audio it heard."""

    request_id: str
    duration: float


@attrs.frozen(kw_only=True)
class Ignored:
    """A reply of a type we do not use (Deepgram may add new ones): skipped, not an error."""

    type: str


AsrEvent = Transcript | SpeechStarted | UtteranceEnd | Metadata | Ignored


def _refuse_constant(name: str) -> float:
    raise AsrProtocolError(f"Deepgram reply holds {name}, which is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise AsrProtocolError(f"Deepgram reply holds the number {text[:40]}, too large for a float")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise AsrProtocolError(f"Deepgram reply holds an integer of {digits} digits, over {MAX_INT_DIGITS}")
    return int(text)


def _depth_within(tree: object, limit: int) -> bool:
    """Whether ``tree`` nests no deeper than ``limit`` (a scalar is depth 0); iterative."""
    pending: list[tuple[object, int]] = [(tree, 0)]
    while pending:  # visits each container once: bounded by the reply's size
        node, depth = pending.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth + 1 > limit:
            return False
        pending.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return True


def _json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), type(value).__name__)


class _Reader:
    """Typed fields of one reply; each failure names the reply type and the field's path."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def fail(self, path: str, problem: str) -> AsrProtocolError:
        return AsrProtocolError(f"Deepgram {self.kind}: {path} {problem}")

    def field(self, container: dict, key: str, path: str) -> object:
        if key not in container:
            raise self.fail(path, "is missing")
        return container[key]

    def wrong(self, path: str, wanted: str, value: object) -> AsrProtocolError:
        return self.fail(path, f"must be {wanted}, got {_json_type(value)}")

    def object(self, container: dict, key: str, path: str) -> dict:
        value = self.field(container, key, path)
        if not isinstance(value, dict):
            raise self.wrong(path, "an object", value)
        return value

    def boolean(self, container: dict, key: str, path: str, default: bool | None = None) -> bool:
        if default is not None and key not in container:
            return default
        value = self.field(container, key, path)
        if not isinstance(value, bool):
            raise self.wrong(path, "a boolean", value)
        return value

    def number(self, container: dict, key: str, path: str, low: float, high: float) -> float:
        value = self.field(container, key, path)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.wrong(path, "a number", value)
        if not low <= value <= high:
            raise self.fail(path, f"must be in {low:g}..{high:g}, got {value:.6g}")
        return float(value)

    def string(self, container: dict, key: str, path: str, limit: int) -> str:
        value = self.field(container, key, path)
        if not isinstance(value, str):
            raise self.wrong(path, "a string", value)
        if len(value) > limit:
            raise self.fail(path, f"is {len(value)} characters, over {limit}")
        return value


def _results(body: dict) -> Transcript:
    read = _Reader("Results")
    channel = read.object(body, "channel", "channel")
    alternatives = read.field(channel, "alternatives", "channel.alternatives")
    if not isinstance(alternatives, list):
        raise read.wrong("channel.alternatives", "an array", alternatives)
    if not alternatives:
        raise read.fail("channel.alternatives", "is empty")
    best = alternatives[0]
    if not isinstance(best, dict):
        raise read.wrong("channel.alternatives[0]", "an object", best)
    return Transcript(
        text=read.string(best, "transcript", "channel.alternatives[0].transcript", MAX_TRANSCRIPT_CHARS),
        confidence=read.number(best, "confidence", "channel.alternatives[0].confidence", 0.0, 1.0),
        is_final=read.boolean(body, "is_final", "is_final"),
        speech_final=read.boolean(body, "speech_final", "speech_final"),
        from_finalize=read.boolean(body, "from_finalize", "from_finalize", default=False),
        start=read.number(body, "start", "start", 0.0, MAX_SECONDS),
        duration=read.number(body, "duration", "duration", 0.0, MAX_SECONDS),
    )


def _speech_started(body: dict) -> SpeechStarted:
    return SpeechStarted(timestamp=_Reader("SpeechStarted").number(body, "timestamp", "timestamp", 0.0, MAX_SECONDS))


def _utterance_end(body: dict) -> UtteranceEnd:
    read = _Reader("UtteranceEnd")
    return UtteranceEnd(last_word_end=read.number(body, "last_word_end", "last_word_end", 0.0, MAX_SECONDS))


def _metadata(body: dict) -> Metadata:
    read = _Reader("Metadata")
    request_id = read.string(body, "request_id", "request_id", MAX_NAME_CHARS)
    if not request_id.isprintable():
        raise read.fail("request_id", "must be printable")
    return Metadata(request_id=request_id, duration=read.number(body, "duration", "duration", 0.0, MAX_SECONDS))


_PARSERS = {"Results": _results, "SpeechStarted": _speech_started, "UtteranceEnd": _utterance_end,
            "Metadata": _metadata}


def parse_message_untrusted(message: str | bytes) -> AsrEvent:
    """The event a Deepgram reply (a text frame, or a binary one holding UTF-8) stands for."""
    if len(message) > MAX_MESSAGE_SIZE:
        unit = "characters" if isinstance(message, str) else "bytes"
        raise AsrProtocolError(f"Deepgram reply of {len(message)} {unit}, over {MAX_MESSAGE_SIZE}")
    if isinstance(message, bytes | bytearray):
        try:
            text = bytes(message).decode("utf-8")
        except UnicodeDecodeError as error:
            raise AsrProtocolError(f"Deepgram reply is not UTF-8 (byte {error.start})") from None
    else:
        text = message
    try:
        body = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except RecursionError:
        raise AsrProtocolError(f"Deepgram reply nests deeper than {MAX_DEPTH}") from None
    except ValueError as error:  # JSONDecodeError: its message says where
        raise AsrProtocolError(f"Deepgram reply is not JSON: {str(error)[:120]}") from None
    if not isinstance(body, dict):
        raise AsrProtocolError(f"Deepgram reply must be a JSON object, got {_json_type(body)}")
    if not _depth_within(body, MAX_DEPTH):
        raise AsrProtocolError(f"Deepgram reply nests deeper than {MAX_DEPTH}")
    kind = _Reader("reply").string(body, "type", "type", MAX_NAME_CHARS)
    parser = _PARSERS.get(kind)
    if parser is None:
        return Ignored(type=kind)
    return parser(body)


# -- the handshake and the close ----------------------------------------------------------

_ERROR_WORDS_LIMIT = 200


def _printable(text: str, limit: int = _ERROR_WORDS_LIMIT) -> str:
    """``text`` safe for a log line: control characters escaped, cut at ``limit``."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _words_untrusted(headers: dict[str, str], body: bytes) -> str:
    """What Deepgram said about a refused handshake: ``dg-error``, else the body's ``err_msg``, else the body."""
    if headers.get("dg-error"):
        return _printable(headers["dg-error"])
    text = body[:4096].decode("utf-8", "replace")
    try:
        said = json.loads(text)
    except (ValueError, RecursionError):
        return _printable(text.strip())
    if isinstance(said, dict):
        for key in ("err_msg", "message", "reason"):
            if isinstance(said.get(key), str):
                return _printable(said[key])
    return _printable(text.strip())


def handshake_error_untrusted(status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes | None) -> AsrError:
    """The failure a handshake answered with ``status`` (not 101) means."""
    named = {}
    for name, value in headers:
        named[name.decode("latin-1").lower()] = value.decode("latin-1")
    said = _words_untrusted(named, body or b"")
    request_id = _printable(named["dg-request-id"], MAX_NAME_CHARS) if "dg-request-id" in named else None
    detail = f"{status}: {said}" if said else str(status)
    if status in (401, 403):
        return AsrUnauthorized(f"Deepgram refused the API key ({detail})", status=status, request_id=request_id)
    if status == 429 or status >= 500:
        return AsrUnavailable(f"Deepgram is unavailable ({detail})", status=status, request_id=request_id)
    if 400 <= status < 500:
        return AsrRequestRejected(f"Deepgram refused the stream's settings ({detail})", status=status,
                                  request_id=request_id)
    return AsrProtocolError(f"Deepgram answered the handshake with {detail}", status=status, request_id=request_id)


# RFC 6455 §7.4.1 (the codes in eko_rtp.asr.websocket): 1000 is a normal close
# (Deepgram's answer to CloseStream); 1006 is never sent, it names a connection lost
# without a close frame; 1002 (a protocol error), 1007 (text that is not UTF-8) and
# 1009 ("message too big": a reply over MAX_MESSAGE_SIZE) are ours when Deepgram's
# frames break RFC 6455.
_PROTOCOL_CLOSES = frozenset((CLOSE_PROTOCOL_ERROR, CLOSE_INVALID_DATA, CLOSE_TOO_BIG))


def close_error(code: int, reason: str | None, *, audio_bytes: int) -> AsrError:
    """The failure a close before our :data:`CLOSE_STREAM` means (``audio_bytes`` sent until then)."""
    after = f"after {audio_bytes} bytes ({audio_seconds(audio_bytes):.2f} s) of audio"
    if code == CLOSE_ABNORMAL:
        return AsrDropped(f"Deepgram: connection lost {after}", close_code=code)
    said = f"{code} {_printable(reason)}" if reason else str(code)
    if code in _PROTOCOL_CLOSES:
        return AsrProtocolError(f"Deepgram stream closed {after}: {said}", close_code=code)
    return AsrDropped(f"Deepgram closed the stream {after}: {said}", close_code=code)
