"""Live TTS settings: one frozen value, validated when built.

The lead's TOML config builds a :class:`TtsSettings`; :meth:`TtsSettings.from_environment`
fills the API key and base URL from ``ELEVENLABS_API_KEY`` / ``ELEVENLABS_BASE_URL``
when the config leaves them unset. The key is kept out of ``repr`` so it never
reaches a log line.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import attrs

DEFAULT_BASE_URL = "https://api.elevenlabs.io"
# A low-latency model: ElevenLabs' "Flash" family is the one meant for live agents.
DEFAULT_MODEL_ID = "eleven_flash_v2_5"
DEFAULT_VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
OUTPUT_FORMAT = "ulaw_8000"
# The phrase cache's espeak-ng voice (eko_rtp.cache.espeak.DEFAULT_VOICE, which imports
# trio): live fallback speech sounds like the cached phrases around it.
DEFAULT_ESPEAK_VOICE = "fr-fr"
COST_PER_1000_CHARACTERS = 0.11


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not value > 0:
        raise ValueError(f"TtsSettings.{attribute.name} must be > 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value < 0:
        raise ValueError(f"TtsSettings.{attribute.name} must be >= 0, got {value!r}")


def _non_empty(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value.strip():
        raise ValueError(f"TtsSettings.{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class TtsSettings:
    """Everything live TTS needs: provider, timing, retries, dynamic cache, offline voice."""

    api_key: str | None = attrs.field(default=None, repr=False)
    base_url: str = attrs.field(default=DEFAULT_BASE_URL, validator=_non_empty)
    voice_id: str = attrs.field(default=DEFAULT_VOICE_ID, validator=_non_empty)
    model_id: str = attrs.field(default=DEFAULT_MODEL_ID, validator=_non_empty)
    # 0..4, ElevenLabs' latency/quality trade-off; None leaves the provider default.
    optimize_streaming_latency: int | None = attrs.field(default=3)
    first_byte_timeout: float = attrs.field(default=1.5, validator=_positive)
    # Longest silence tolerated once audio has started, before the stream counts as broken.
    stall_timeout: float = attrs.field(default=5.0, validator=_positive)
    retries: int = attrs.field(default=2, validator=_non_negative)
    retry_backoff: float = attrs.field(default=0.1, validator=_non_negative)
    retry_backoff_max: float = attrs.field(default=1.0, validator=_non_negative)
    voice_settings: Mapping[str, object] | None = attrs.field(default=None)
    dynamic_cache_dir: Path = attrs.field(default=Path("cache/dynamic"), converter=Path)
    dynamic_cache_max_bytes: int = attrs.field(default=256 * 1024 * 1024, validator=_positive)
    espeak_voice: str = attrs.field(default=DEFAULT_ESPEAK_VOICE, validator=_non_empty)
    cost_per_1000_characters: float = attrs.field(default=COST_PER_1000_CHARACTERS, validator=_non_negative)

    def __attrs_post_init__(self) -> None:
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("TtsSettings.api_key must be None or a non-empty key")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"TtsSettings.base_url must start with http:// or https://, got {self.base_url!r}")
        if self.optimize_streaming_latency is not None and self.optimize_streaming_latency not in range(5):
            raise ValueError(
                f"TtsSettings.optimize_streaming_latency must be 0..4 or None, got {self.optimize_streaming_latency!r}"
            )
        if not isinstance(self.retries, int):
            raise ValueError(f"TtsSettings.retries must be an integer, got {self.retries!r}")

    def from_environment(self, environ: Mapping[str, str] | None = None) -> "TtsSettings":
        """A copy with the key and base URL taken from the environment where unset here."""
        environ = os.environ if environ is None else environ
        changes: dict[str, object] = {}
        if self.api_key is None and environ.get("ELEVENLABS_API_KEY"):
            changes["api_key"] = environ["ELEVENLABS_API_KEY"]
        if self.base_url == DEFAULT_BASE_URL and environ.get("ELEVENLABS_BASE_URL"):
            changes["base_url"] = environ["ELEVENLABS_BASE_URL"]
        return attrs.evolve(self, **changes) if changes else self
