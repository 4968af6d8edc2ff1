"""What the media process and its recognizer relay say to each other, sans I/O.

Theory of operation: with ``asr.relay = true`` the recognizer streams (websocket
framing, masking, TLS, JSON) run in a child process on another CPU
(eko_rtp/asr/relay_process.py), so the media core only hands over each call's audio
batches and reads back the few events a script needs. Both directions are a stream
of msgpack arrays over one Unix socket pair:

========================================  ======================================
media process -> relay                     relay -> media process
========================================  ======================================
``[OPEN, id, settings, api_key]``          ``[EVENT, id, kind, fields]``
``[AUDIO, id, g711 bytes]``                ``[END, id, error kind or None,
``[CLOSE, id]`` (no more audio: the        message, seconds of audio sent,
relay says CloseStream and finishes)       HTTP status or None]``
========================================  ======================================

``settings`` is :class:`~eko_rtp.asr.deepgram_api.AsrSettings` as a map, rebuilt
(and validated) by its constructor on the other side; ``kind`` names one of the
stream's events (:data:`EVENT_TYPES`) and ``fields`` its attributes; an error kind
names one of :mod:`eko_rtp.asr.errors` (:data:`ERROR_TYPES`). Each side trusts the
other no more than a network peer: a message is bounded in size (``max_message``),
must have its documented shape, and anything else raises :class:`RelayProtocolError`
(the shell then ends the relay and the calls go on without recognition).
"""

from __future__ import annotations

import attrs
import msgpack

from eko_rtp.asr import errors
from eko_rtp.asr.deepgram_api import AsrSettings, SpeechStarted, Transcript, UtteranceEnd

OPEN, AUDIO, CLOSE, EVENT, END = range(5)
TO_RELAY = (OPEN, AUDIO, CLOSE)
FROM_RELAY = (EVENT, END)
MAX_MESSAGE = 1 << 20  # an audio batch is under 1 KiB; settings with keywords a few KiB

EVENT_TYPES = {cls.__name__: cls for cls in (Transcript, SpeechStarted, UtteranceEnd)}
ERROR_TYPES = {cls.__name__: cls for cls in (
    errors.AsrError, errors.AsrNoKey, errors.AsrUnauthorized, errors.AsrRequestRejected, errors.AsrUnavailable,
    errors.AsrDropped, errors.AsrProtocolError)}


class RelayProtocolError(Exception):
    """A message between the media process and the relay that breaks the protocol."""


@attrs.frozen(kw_only=True)
class Open:
    stream: int
    settings: AsrSettings
    api_key: str = attrs.field(repr=False)


@attrs.frozen(kw_only=True)
class Audio:
    stream: int
    audio: bytes = attrs.field(repr=lambda value: f"<{len(value)} octets>")


@attrs.frozen(kw_only=True)
class Close:
    stream: int


@attrs.frozen(kw_only=True)
class Event:
    stream: int
    event: object  # Transcript, SpeechStarted or UtteranceEnd


@attrs.frozen(kw_only=True)
class End:
    """The relay's stream ended: cleanly (``error`` None) or with a typed failure."""

    stream: int
    error: errors.AsrError | None
    seconds_sent: float


def _settings_map(settings: AsrSettings) -> dict:
    fields = attrs.asdict(settings, recurse=False)
    fields["keywords"] = [list(pair) for pair in settings.keywords]
    return fields


def _settings_from(fields) -> AsrSettings:
    if not isinstance(fields, dict):
        raise RelayProtocolError(f"settings must be a map, not {type(fields).__name__}")
    known = {field.name for field in attrs.fields(AsrSettings)}
    unknown = set(fields) - known
    if unknown:
        raise RelayProtocolError(f"unknown settings {sorted(map(str, unknown))}")
    fields = dict(fields)
    try:
        keywords = fields.get("keywords", [])
        if not isinstance(keywords, list):
            raise RelayProtocolError("settings' keywords must be a list of [word, boost]")
        fields["keywords"] = tuple(tuple(pair) if isinstance(pair, list) else pair for pair in keywords)
        return AsrSettings(**fields)
    except (TypeError, ValueError) as error:
        raise RelayProtocolError(f"settings refused: {error}") from None


def encode(message) -> bytes:
    """The bytes of one message, either direction."""
    if isinstance(message, Audio):
        body = [AUDIO, message.stream, message.audio]
    elif isinstance(message, Open):
        body = [OPEN, message.stream, _settings_map(message.settings), message.api_key]
    elif isinstance(message, Close):
        body = [CLOSE, message.stream]
    elif isinstance(message, Event):
        body = [EVENT, message.stream, type(message.event).__name__, attrs.asdict(message.event)]
    elif isinstance(message, End):
        error = message.error
        body = [END, message.stream, None if error is None else type(error).__name__,
                "" if error is None else str(error), message.seconds_sent,
                None if error is None else error.status]
    else:
        raise TypeError(f"not a relay message: {message!r}")
    return msgpack.packb(body, use_bin_type=True)


def encode_audio(stream: int, audio: bytes) -> bytes:
    """:func:`encode` of an :class:`Audio`, without the object (ten times a second a call)."""
    return msgpack.packb([AUDIO, stream, audio], use_bin_type=True)


class RelayReader:
    """Turns the bytes one side receives into messages, refusing what breaks the protocol.

    ``accepts`` is the message types this side may receive (:data:`TO_RELAY` in the
    relay, :data:`FROM_RELAY` in the media process).
    """

    def __init__(self, accepts: tuple[int, ...], *, max_message: int = MAX_MESSAGE):
        self._accepts = accepts
        self._unpacker = msgpack.Unpacker(raw=False, use_list=True, max_buffer_size=4 * max_message,
                                          max_bin_len=max_message, max_str_len=max_message,
                                          max_array_len=1 << 12, max_map_len=64)

    def feed(self, data: bytes) -> list:
        """The messages ``data`` completes, in order."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise RelayProtocolError("a relay message longer than the limit") from None
        messages = []
        try:
            for body in self._unpacker:
                messages.append(self._message(body))
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as error:
            raise RelayProtocolError(f"unreadable relay message: {error}") from None
        return messages

    def _message(self, body):
        if not isinstance(body, list) or len(body) < 2 or not isinstance(body[0], int) \
                or not isinstance(body[1], int) or isinstance(body[1], bool):
            raise RelayProtocolError(f"a relay message must be [type, stream id, ...], not {_brief(body)}")
        kind, stream = body[0], body[1]
        if kind not in self._accepts:
            raise RelayProtocolError(f"message type {kind} is not for this side")
        if kind == AUDIO and len(body) == 3 and isinstance(body[2], bytes):
            return Audio(stream=stream, audio=body[2])
        if kind == OPEN and len(body) == 4 and isinstance(body[3], str):
            return Open(stream=stream, settings=_settings_from(body[2]), api_key=body[3])
        if kind == CLOSE and len(body) == 2:
            return Close(stream=stream)
        if kind == EVENT and len(body) == 4 and body[2] in EVENT_TYPES and isinstance(body[3], dict):
            try:
                return Event(stream=stream, event=EVENT_TYPES[body[2]](**body[3]))
            except (TypeError, ValueError) as error:
                raise RelayProtocolError(f"bad {body[2]} event: {error}") from None
        if kind == END and len(body) == 6 and (body[2] is None or body[2] in ERROR_TYPES) \
                and isinstance(body[3], str) and isinstance(body[4], (int, float)) \
                and (body[5] is None or isinstance(body[5], int)):
            error = None if body[2] is None else ERROR_TYPES[body[2]](body[3], status=body[5])
            return End(stream=stream, error=error, seconds_sent=float(body[4]))
        raise RelayProtocolError(f"malformed relay message of type {kind}: {_brief(body)}")


def _brief(body) -> str:
    text = repr(body)
    return text if len(text) <= 80 else text[:77] + "..."
