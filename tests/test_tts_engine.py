"""TtsEngine with the offline backend swapped for a scripted one: cache hits, storage, accounting, selection.

The scripted backend is a test double of a *remote* synthesiser (the seam
:class:`eko_rtp.tts.backend.TtsBackend`), not of our code: the engine, framer,
dynamic cache and accounting all run for real. The ElevenLabs and espeak-ng paths
have their own files with the fake HTTP server and the real subprocesses.
"""

from __future__ import annotations

import attrs
import pytest
import trio

from eko_rtp.tts.accounting import TtsAccounting
from eko_rtp.tts.backend import RenderIdentity
from eko_rtp.tts.dynamic_cache import DynamicCache
from eko_rtp.tts.elevenlabs import ElevenLabsBackend
from eko_rtp.tts.engine import Spoken, TtsEngine, select_backend
from eko_rtp.tts.errors import TtsStreamBroken
from eko_rtp.tts.espeak import EspeakBackend
from eko_rtp.tts.settings import TtsSettings


class RecordingSink:
    """A FrameSink that keeps every frame and when it came (trio's clock)."""

    def __init__(self, on_push=None):
        self.frames: list[bytes] = []
        self.times: list[float] = []
        self.ended = 0
        self.on_push = on_push

    def push(self, frame):
        assert not self.ended, "push after end()"
        self.frames.append(bytes(frame))
        self.times.append(trio.current_time())
        if self.on_push is not None:
            self.on_push(self)

    def end(self):
        self.ended += 1

    @property
    def audio(self) -> bytes:
        return b"".join(self.frames)


@attrs.define
class ScriptedBackend:
    """Yields the given chunks (then raises ``error`` if set) and counts calls."""

    chunks: list[bytes]
    error: Exception | None = None
    paid: bool = True
    name: str = "scripted"
    calls: int = 0

    def render_identity(self) -> RenderIdentity:
        return RenderIdentity(voice="v", model="m", output_format="ulaw_8000")

    async def stream(self, text):
        self.calls += 1
        for chunk in self.chunks:
            await trio.sleep(0)
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self):
        pass


def make_engine(tmp_path, backend, max_bytes=1 << 20):
    settings = TtsSettings(dynamic_cache_dir=tmp_path)
    return TtsEngine(settings, backend, DynamicCache(tmp_path, max_bytes), TtsAccounting())


async def test_miss_streams_frames_then_hit_replays_them_without_a_request(tmp_path, autojump_clock):
    backend = ScriptedBackend([b"\x01" * 100, b"\x02" * 250, b"\x03" * 30])  # 380 bytes: 2 frames + 60
    engine = make_engine(tmp_path, backend)
    usage = engine.accounting.open_call("call-1")
    first = RecordingSink()
    spoken = await engine.speak("Bonjour", first, call=usage)
    expected = b"\x01" * 100 + b"\x02" * 250 + b"\x03" * 30 + b"\xff" * 100
    assert first.audio == expected and len(first.frames) == 3 and first.ended == 1
    assert spoken == Spoken(
        key=engine.key_for("Bonjour"),
        frames=3,
        from_cache=False,
        characters_billed=7,
        stored=True,
        first_frame_latency=0.0,
    )
    second = RecordingSink()
    again = await engine.speak("Bonjour", second, call=usage)
    assert backend.calls == 1
    assert (again.from_cache, again.characters_billed, again.frames) == (True, 0, 3)
    assert second.audio == expected and second.ended == 1
    assert usage.summary() == (
        "tts_chars=7 tts_requests=1 tts_cost_usd=0.00077 tts_cache_hits=1 tts_cache_misses=1 "
        "tts_hit_ratio=0.50 tts_failures=0"
    )


async def test_a_failed_stream_is_ended_counted_and_not_stored(tmp_path):
    backend = ScriptedBackend([b"\x05" * 400], error=TtsStreamBroken("cut"))
    engine = make_engine(tmp_path, backend)
    sink = RecordingSink()
    with pytest.raises(TtsStreamBroken, match="cut"):
        await engine.speak("Hello", sink)
    assert len(sink.frames) == 2 and sink.ended == 1  # the 80-byte remainder is never padded out
    assert len(engine.dynamic_cache) == 0 and list(tmp_path.iterdir()) == []
    assert engine.accounting.total().failures == 1
    assert engine.accounting.failures_by_kind == {"TtsStreamBroken": 1}


async def test_cancel_stores_nothing(tmp_path):
    backend = ScriptedBackend([b"\x05" * 160] * 10)
    engine = make_engine(tmp_path, backend)
    with trio.CancelScope() as scope:
        sink = RecordingSink(on_push=lambda s: scope.cancel() if len(s.frames) == 3 else None)
        await engine.speak("Hello", sink)
    assert len(sink.frames) == 3 and sink.ended == 0
    assert len(engine.dynamic_cache) == 0


async def test_free_backend_costs_nothing(tmp_path):
    engine = make_engine(tmp_path, ScriptedBackend([b"\x01" * 160], paid=False))
    await engine.speak("Salut", RecordingSink())
    total = engine.accounting.total()
    # Counted (OPERATIONS.md: both backends' characters are counted), but free.
    assert (total.characters, total.cost_usd, total.cache_misses) == (len("Salut"), 0.0, 1)


async def test_empty_text_is_refused(tmp_path):
    with pytest.raises(ValueError, match="TtsEngine.speak: text is empty"):
        await make_engine(tmp_path, ScriptedBackend([])).speak("  ", RecordingSink())


async def test_a_disk_error_only_loses_the_caching(tmp_path, caplog):
    engine = make_engine(tmp_path / "cache", ScriptedBackend([b"\x01" * 160]))
    (tmp_path / "cache").rmdir()
    (tmp_path / "cache").write_text("a file where the cache directory was")  # tests run as root: no chmod
    spoken = await engine.speak("Salut", RecordingSink())
    assert spoken.stored is False and spoken.frames == 1
    assert "could not store render" in caplog.text


async def test_restart_keeps_the_dynamic_cache(tmp_path):
    await make_engine(tmp_path, ScriptedBackend([b"\x07" * 320])).speak("Encore", RecordingSink())
    backend = ScriptedBackend([b"\x00"])
    restarted = make_engine(tmp_path, backend)
    sink = RecordingSink()
    spoken = await restarted.speak("Encore", sink)
    assert spoken.from_cache and backend.calls == 0 and sink.audio == b"\x07" * 320


async def test_backend_selection_follows_the_api_key(tmp_path):
    assert isinstance(select_backend(TtsSettings()), EspeakBackend)
    paid = select_backend(TtsSettings(api_key="k"))
    assert isinstance(paid, ElevenLabsBackend)
    await paid.aclose()
    engine = TtsEngine.from_settings(
        TtsSettings(dynamic_cache_dir=tmp_path / "dyn"), environ={"ELEVENLABS_API_KEY": "from-env"}
    )
    assert isinstance(engine.backend, ElevenLabsBackend) and engine.settings.api_key == "from-env"
    assert (tmp_path / "dyn").is_dir()
    await engine.aclose()
    assert isinstance(TtsEngine.from_settings(TtsSettings(dynamic_cache_dir=tmp_path), environ={}).backend, EspeakBackend)


def test_settings_validation_and_key_never_in_repr():
    settings = TtsSettings(api_key="secret-key")
    assert "secret-key" not in repr(settings)
    assert settings.model_id == "eleven_flash_v2_5" and settings.first_byte_timeout == 1.5
    assert settings.dynamic_cache_max_bytes == 256 * 1024 * 1024
    for kwargs, message in [
        ({"first_byte_timeout": 0}, "TtsSettings.first_byte_timeout must be > 0, got 0"),
        ({"optimize_streaming_latency": 7}, "TtsSettings.optimize_streaming_latency must be 0..4 or None, got 7"),
        ({"base_url": "ftp://x"}, "TtsSettings.base_url must start with http:// or https://, got 'ftp://x'"),
        ({"api_key": " "}, "TtsSettings.api_key must be None or a non-empty key"),
        ({"retries": -1}, "TtsSettings.retries must be >= 0, got -1"),
    ]:
        with pytest.raises(ValueError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}$"):
            TtsSettings(**kwargs)
    env = TtsSettings().from_environment({"ELEVENLABS_API_KEY": "k", "ELEVENLABS_BASE_URL": "http://127.0.0.1:1"})
    assert (env.api_key, env.base_url) == ("k", "http://127.0.0.1:1")
    assert TtsSettings(api_key="own").from_environment({"ELEVENLABS_API_KEY": "k"}).api_key == "own"
