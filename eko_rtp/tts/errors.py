"""Typed failures of live TTS.

Every failure the engine can report is a :class:`TtsError`; the call catches that
one type and plays its cached ``error`` phrase. Subclasses say who is at fault:
our configuration (no key, key refused), the provider (rate limit, server error,
silence, a cut stream) or the local synthesiser. ``retryable`` marks the failures
worth another attempt while no audio has reached the caller yet.
"""

from __future__ import annotations


class TtsError(Exception):
    """Live TTS failed; the message says what and where, never the API key."""

    retryable = False


class TtsNoApiKey(TtsError):
    """The paid backend was asked to speak without an API key."""


class TtsAuthError(TtsError):
    """The provider refused the API key (HTTP 401)."""


class TtsRequestRejected(TtsError):
    """The provider refused the request itself (HTTP 4xx other than 401 and 429)."""


class TtsRateLimited(TtsError):
    """The provider asked us to slow down (HTTP 429)."""

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None):
        super().__init__(message)
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
