"""Typed failures of live TTS and of ElevenLabs requests.

Every failure the engine can report is a :class:`TtsError`; the call catches that
one type and plays its cached ``error`` phrase. Subclasses say who is at fault:
our configuration (no key, key refused), the provider (rate limit, server error,
silence, a cut stream) or the local synthesiser. ``retryable`` marks the failures
worth another attempt while no audio has reached the caller yet. The phrase-cache
build gets the same kinds from the shared ElevenLabs client
(:mod:`eko_rtp.tts.elevenlabs_client`) and words its own messages from ``status``
and ``reason``.
"""

from __future__ import annotations


class TtsError(Exception):
    """Live TTS failed; the message says what and where, never the API key.

    ``status``: the provider's HTTP status, when it answered one. ``reason``: what went
    wrong in the provider's or the transport's own words, without the where.
    """

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = message if reason is None else reason


class TtsNoApiKey(TtsError):
    """The paid backend was asked to speak without an API key."""


class TtsAuthError(TtsError):
    """The provider refused the API key (HTTP 401)."""


class TtsRequestRejected(TtsError):
    """The provider refused the request itself (HTTP 4xx other than 401 and 429)."""


class TtsRateLimited(TtsError):
    """The provider asked us to slow down (HTTP 429)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, reason: str | None = None):
        super().__init__(message, status=429, reason=reason)
        self.retry_after = retry_after


class TtsServerError(TtsError):
    """The provider failed (HTTP 5xx) or could not be reached."""

    retryable = True


class TtsTimeout(TtsError):
    """No first audio byte arrived within the configured time."""


class TtsStreamBroken(TtsError):
    """The audio stream ended abnormally after it had started."""


class TtsSynthesisFailed(TtsError):
    """The local synthesiser (espeak-ng, sox) exited with an error or produced nothing."""
