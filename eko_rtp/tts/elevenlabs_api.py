"""The ElevenLabs text-to-speech HTTP API as data: requests out, typed failures in.

Theory of operation: no networking here (the trio shell is
:mod:`eko_rtp.tts.elevenlabs_client`). :meth:`SpeechApi.request` builds the one
request both the phrase-cache build and live calls send: ``POST
{base_url}/v1/text-to-speech/{voice_id}`` (the whole body) or ``.../stream``
(chunked as it is synthesised), query ``output_format=ulaw_8000`` (PCMU's payload
as is, nothing to transcode), the key in the ``xi-api-key`` header, a JSON body
with the text and the model. :func:`error_from_answer_untrusted` turns an answer
other than 200 into the :class:`~eko_rtp.tts.errors.TtsError` kind that says who
is at fault: 401 is the key (no retry can fix it), 429 and 5xx are the provider's
passing trouble (worth a retry), any other 4xx is our request.
:class:`RetryPolicy` says how long to wait before the next attempt, honouring the
server's ``Retry-After``, and when to give up.

The ``elevenlabs`` SDK serves here through its typed models, not its clients:
``VoiceSettings`` checks the voice settings we send (names and types, before any
paid request), ``HttpValidationError`` reads the API's 422 schema failures.
"""

from __future__ import annotations

import contextlib
import json
import math
import urllib.parse
from collections.abc import Mapping
from http import HTTPStatus

import attrs
import pydantic
from elevenlabs.types import HttpValidationError, VoiceSettings

from eko_rtp.tts.errors import TtsAuthError, TtsError, TtsRateLimited, TtsRequestRejected, TtsServerError
from eko_rtp.tts.settings import OUTPUT_FORMAT

__all__ = ["ERROR_BODY_LIMIT", "HttpRequest", "RetryPolicy", "SpeechApi", "error_from_answer_untrusted"]

# An error answer is a short JSON object; we read no more of it than this.
ERROR_BODY_LIMIT = 4096


def _checked_voice_settings(value: Mapping[str, object] | None) -> Mapping[str, object] | None:
    """The settings as the SDK's ``VoiceSettings`` model reads them; ValueError names a wrong one."""
    if value is None:
        return None
    try:
        model = VoiceSettings.model_validate(dict(value))
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        name = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"voice_settings.{name}: {first['msg']}") from None
    unknown = sorted(model.model_extra or {})
    if unknown:
        raise ValueError(
            f"voice_settings: unknown {', '.join(unknown)} (ElevenLabs knows {', '.join(VoiceSettings.model_fields)})"
        )
    return model.model_dump(exclude_none=True)


def _non_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value.strip():
        raise ValueError(f"SpeechApi.{attribute.name} must not be empty")


def _http_url(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"SpeechApi.base_url must start with http:// or https://, got {value!r}")


@attrs.frozen(kw_only=True)
class HttpRequest:
    """One request, ready for any HTTP client."""

    method: str
    url: str
    params: Mapping[str, str | int]
    headers: Mapping[str, str] = attrs.field(repr=False)  # carries the key
    json: Mapping[str, object]


@attrs.frozen(kw_only=True)
class SpeechApi:
    """Whom to ask, as whom, in which voice: everything about a request but its text."""

    api_key: str = attrs.field(repr=False, validator=_non_empty)
    base_url: str = attrs.field(validator=[_non_empty, _http_url])
    voice_id: str = attrs.field(validator=_non_empty)
    model_id: str = attrs.field(validator=_non_empty)
    # 0..4, ElevenLabs' latency/quality trade-off; None leaves the provider default.
    optimize_streaming_latency: int | None = None
    voice_settings: Mapping[str, object] | None = attrs.field(default=None, converter=_checked_voice_settings)

    def request(self, text: str, *, streaming: bool) -> HttpRequest:
        """The request for ``text``: the streaming route for live calls, the whole body for the cache."""
        path = f"/v1/text-to-speech/{urllib.parse.quote(self.voice_id, safe='')}" + ("/stream" if streaming else "")
        params: dict[str, str | int] = {"output_format": OUTPUT_FORMAT}
        if self.optimize_streaming_latency is not None:
            params["optimize_streaming_latency"] = self.optimize_streaming_latency
        body: dict[str, object] = {"text": text, "model_id": self.model_id}
        if self.voice_settings is not None:
            body["voice_settings"] = dict(self.voice_settings)
        return HttpRequest(
            method="POST",
            url=self.base_url.rstrip("/") + path,
            params=params,
            headers={"xi-api-key": self.api_key, "accept": "audio/basic"},
            json=body,
        )


def _words_untrusted(body: bytes) -> tuple[str, str]:
    """(detail, reason) from an error body: ``status: message`` and the message alone."""
    text = body[:ERROR_BODY_LIMIT].decode("utf-8", "replace")
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested too deep
        return text[:200], text[:200]
    if isinstance(detail, dict):
        message = str(detail.get("message", ""))[:200]
        status = detail.get("status")
        return (f"{status}: {message}" if status else message), message
    if isinstance(detail, list):  # FastAPI's schema failure: a list of {loc, msg, type}
        try:
            failures = HttpValidationError.model_validate({"detail": detail}).detail or []
            words = "; ".join(f"{'.'.join(str(part) for part in failure.loc)}: {failure.msg}" for failure in failures)
        except pydantic.ValidationError:
            words = str(detail)
        return words[:200], words[:200]
    return str(detail)[:200], str(detail)[:200]


def _seconds_untrusted(value: str | None) -> float | None:
    """A ``Retry-After`` in seconds; None for an HTTP date or nonsense (our own backoff applies)."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def error_from_answer_untrusted(status: int, headers: Mapping[str, str], body: bytes, path: str) -> TtsError:
    """The failure an answer other than 200 means; ``headers`` with lower-case names (or httpx's)."""
    detail, reason = _words_untrusted(body)
    if not detail:
        with contextlib.suppress(ValueError):
            detail = reason = HTTPStatus(status).phrase
    where = f"ElevenLabs {path}"
    said = f" {detail}" if detail else ""
    if status == 401:
        return TtsAuthError(f"{where}: API key refused (401{said})", status=status, reason=reason)
    if status == 429:
        retry_after = _seconds_untrusted(headers.get("retry-after"))
        return TtsRateLimited(f"{where}: rate limited (429{said})", reason=reason, retry_after=retry_after)
    if status >= 500:
        return TtsServerError(f"{where}: server error ({status}{said})", status=status, reason=reason)
    return TtsRequestRejected(f"{where}: request rejected ({status}{said})", status=status, reason=reason)


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"RetryPolicy.{attribute.name} must be >= 0, got {value!r}")


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """Retries of a failure the provider marks as passing: exponential backoff, capped."""

    retries: int = attrs.field(validator=[attrs.validators.instance_of(int), _non_negative])  # after the first
    first_backoff: float = attrs.field(validator=_non_negative)
    max_backoff: float = attrs.field(validator=_non_negative)

    def delay(self, error: TtsError, retry: int, *, now: float, deadline: float | None = None) -> float | None:
        """Seconds to wait before retry number ``retry`` (1-based) after ``error``, or None to give up.

        The wait is our backoff, or longer if the server's ``Retry-After`` asks for more,
        and never over ``max_backoff``. With a ``deadline`` (absolute, like ``now``), a
        retry that could not start before it is not worth waiting for.
        """
        if not error.retryable or retry > self.retries:
            return None
        delay = min(self.first_backoff * 2 ** (retry - 1), self.max_backoff)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            delay = min(max(delay, retry_after), self.max_backoff)
        if deadline is not None and now + delay >= deadline:
            return None
        return delay
