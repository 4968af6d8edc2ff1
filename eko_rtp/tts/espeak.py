"""Offline streaming TTS: espeak-ng piped into sox, encoded to µ-law as it is produced.

Theory of operation: the same pipeline as the phrase cache's espeak-ng backend
(:mod:`eko_rtp.cache.espeak`: ``espeak_command`` writes a 22.05 kHz WAV stream,
``resample_command`` has sox band-limit and resample it to 8 kHz 16-bit PCM), but
run as a stream: the two processes are joined by an OS pipe (no shell, so each can
be killed on its own) and trio reads sox's stdout chunk by chunk, passing each
through the cache's :class:`~eko_rtp.cache.audio.Linear16ToUlawStream` and
:class:`~eko_rtp.cache.audio.LeadingSilenceTrimmer`, so a live render is
byte-for-byte what the cache build would store (before padding). Measured: the
first audio comes out 8-11 ms after the start, and espeak-ng runs several hundred
times faster than real time, so sox's default block size costs nothing (a 1 KiB
``--buffer`` measured the same). The event loop never blocks; cancellation (or any
exit) kills both processes and reaps them.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import AsyncIterator

import trio

from eko_rtp.cache.audio import LeadingSilenceTrimmer, Linear16ToUlawStream
from eko_rtp.cache.espeak import espeak_command, resample_command
from eko_rtp.tts.backend import RenderIdentity
from eko_rtp.tts.errors import TtsSynthesisFailed
from eko_rtp.tts.settings import OUTPUT_FORMAT, TtsSettings

log = logging.getLogger(__name__)

_READ_SIZE = 4096


class EspeakBackend:
    """The free backend: an espeak-ng | sox pipeline per utterance."""

    name = "espeak-ng"
    paid = False

    def __init__(self, settings: TtsSettings):
        self.settings = settings
        self.last_processes: tuple[trio.Process, ...] = ()  # for tests and diagnostics

    def render_identity(self) -> RenderIdentity:
        return RenderIdentity(voice=self.settings.espeak_voice, model="espeak-ng", output_format=OUTPUT_FORMAT)

    async def aclose(self) -> None:
        pass

    async def stream(self, text: str) -> AsyncIterator[bytes]:
        """µ-law 8 kHz chunks of ``text`` spoken by espeak-ng, leading silence trimmed."""
        read_end, write_end = os.pipe()
        espeak = sox = None
        try:
            try:
                espeak = await trio.lowlevel.open_process(
                    espeak_command(text, self.settings.espeak_voice),
                    stdin=subprocess.DEVNULL,
                    stdout=write_end,
                    stderr=subprocess.PIPE,
                )
                sox = await trio.lowlevel.open_process(
                    resample_command(), stdin=read_end, stdout=subprocess.PIPE, stderr=subprocess.PIPE
                )
            except FileNotFoundError as error:
                raise TtsSynthesisFailed(f"{error.filename} is not installed (apt-get install {error.filename})") from None
            os.close(read_end)
            os.close(write_end)
            read_end = write_end = -1  # the children hold the pipe now: EOF flows when espeak-ng exits
            self.last_processes = (espeak, sox)
            assert sox.stdout is not None
            encoder = Linear16ToUlawStream()
            trimmer = LeadingSilenceTrimmer()
            while pcm := await sox.stdout.receive_some(_READ_SIZE):
                ulaw = trimmer.feed(encoder.feed(pcm))
                if ulaw:
                    yield ulaw
            await self._check_exit(espeak)
            await self._check_exit(sox)
            try:
                encoder.finish()
            except ValueError as error:
                raise TtsSynthesisFailed(f"sox output: {error}") from None
            if not trimmer.heard_audio:
                raise TtsSynthesisFailed(
                    f"espeak-ng voice {self.settings.espeak_voice!r} produced no audible speech for {len(text)} characters"
                )
        finally:
            for end in (read_end, write_end):
                if end >= 0:
                    os.close(end)
            with trio.CancelScope(shield=True):
                for process in (espeak, sox):
                    if process is not None:
                        if process.returncode is None:
                            process.kill()
                        await process.wait()  # reap it
                        for pipe in (process.stdout, process.stderr):
                            if pipe is not None:
                                await pipe.aclose()

    @staticmethod
    async def _check_exit(process: trio.Process) -> None:
        code = await process.wait()
        if code != 0:
            assert process.stderr is not None
            message = ""
            with trio.move_on_after(1):
                message = (await process.stderr.receive_some(4096)).decode("utf-8", "replace").strip()
            raise TtsSynthesisFailed(f"{process.args[0]} exited with status {code}: {message or 'no message'}")
