"""WAV recordings of G.711: exact header bytes, size patches, interleaving, and sox reading our files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from eko_rtp.media.wav import (
    HEADER_SIZE,
    MAX_DATA_LENGTH,
    WavEncoding,
    WavFormat,
    interleave,
    interleave_into,
    pad_byte,
    size_patches,
    wav_header,
)

MONO_ULAW = WavFormat(encoding=WavEncoding.MULAW, channels=1)
STEREO_ALAW = WavFormat(encoding=WavEncoding.ALAW, channels=2)

needs_sox = pytest.mark.skipif(shutil.which("sox") is None or shutil.which("soxi") is None,
                               reason="sox is not installed (apt install sox)")


def test_header_mono_ulaw_exact_bytes():
    assert HEADER_SIZE == 58
    assert wav_header(MONO_ULAW, 16000) == bytes.fromhex(
        "52494646 b23e0000 57415645"  # "RIFF", 50 + 16000, "WAVE"
        "666d7420 12000000"  # "fmt ", 18
        # µ-law, 1 channel, 8000 Hz, 8000 B/s, align 1, 8 bits, cbSize 0
        "0700 0100 401f0000 401f0000 0100 0800 0000"
        "66616374 04000000 803e0000"  # "fact", 4, 16000 samples
        "64617461 803e0000"  # "data", 16000
    )


def test_header_stereo_alaw_exact_bytes():
    assert wav_header(STEREO_ALAW, 32000) == bytes.fromhex(
        "52494646 327d0000 57415645"  # "RIFF", 50 + 32000, "WAVE"
        "666d7420 12000000"
        "0600 0200 401f0000 803e0000 0200 0800 0000"  # A-law, 2 channels, 8000 Hz, 16000 B/s, align 2
        "66616374 04000000 803e0000"  # 16000 samples per channel
        "64617461 007d0000"  # 32000 bytes
    )


def test_empty_header_declares_nothing():
    header = wav_header(MONO_ULAW)
    assert header[4:8] == (50).to_bytes(4, "little")
    assert header[46:50] == header[54:58] == bytes(4)


@pytest.mark.parametrize(
    ("wav_format", "data_length", "patches"),
    [
        (MONO_ULAW, 0, ((4, bytes.fromhex("32000000")), (46, bytes(4)), (54, bytes(4)))),
        (MONO_ULAW, 8000, ((4, bytes.fromhex("721f0000")), (46, bytes.fromhex("401f0000")),
                           (54, bytes.fromhex("401f0000")))),
        (STEREO_ALAW, 16000, ((4, bytes.fromhex("b23e0000")), (46, bytes.fromhex("401f0000")),
                              (54, bytes.fromhex("803e0000")))),
        # An odd mono length: the RIFF size counts the pad byte that ends the file.
        (MONO_ULAW, 161, ((4, bytes.fromhex("d4000000")), (46, bytes.fromhex("a1000000")),
                          (54, bytes.fromhex("a1000000")))),
        (STEREO_ALAW, MAX_DATA_LENGTH, ((4, bytes.fromhex("feffffff")), (46, bytes.fromhex("e6ffff7f")),
                                        (54, bytes.fromhex("ccffffff")))),
    ],
)
def test_size_patches(wav_format, data_length, patches):
    assert size_patches(wav_format, data_length) == patches
    # Patching the header written for a length of 0 gives the header for this length.
    header = bytearray(wav_header(wav_format))
    for offset, value in patches:
        header[offset : offset + len(value)] = value
    assert bytes(header) == wav_header(wav_format, data_length)


def test_pad_byte():
    assert (pad_byte(0), pad_byte(160), pad_byte(161)) == (b"", b"", b"\x00")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: wav_header(MONO_ULAW, -1), f"WAV data length -1 outside 0..{MAX_DATA_LENGTH}"),
        (lambda: size_patches(MONO_ULAW, MAX_DATA_LENGTH + 1),
         f"WAV data length {MAX_DATA_LENGTH + 1} outside 0..{MAX_DATA_LENGTH}"),
        (lambda: size_patches(STEREO_ALAW, 321), "WAV data length 321 is not a whole number of 2-channel samples"),
        (lambda: WavFormat(encoding=WavEncoding.MULAW, channels=3),
         "a recording has 1 channel (caller) or 2 (caller, bot), not 3"),
        (lambda: interleave(bytes(160), bytes(80)), "channels of different lengths: left 160 bytes, right 80"),
        (lambda: interleave_into(bytearray(160), bytes(160), bytes(160)),
         "stereo buffer of 160 bytes for two channels of 160"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError) as caught:
        call()
    assert str(caught.value) == message


def test_format_is_keyword_only_and_typed():
    with pytest.raises(TypeError):
        WavFormat(WavEncoding.MULAW, 1)  # type: ignore[misc]
    with pytest.raises(TypeError):
        WavFormat(encoding=7, channels=1)  # type: ignore[arg-type]


def test_interleave():
    assert interleave(b"abc", b"xyz") == b"axbycz"
    left, right = bytes(range(160)), bytes(range(96, 256))
    stereo = interleave(left, right)
    assert len(stereo) == 320
    assert stereo[0::2] == left and stereo[1::2] == right
    assert interleave(memoryview(left), memoryview(right)) == stereo
    reused = bytearray(320)
    interleave_into(reused, left, right)
    assert reused == stereo
    view = memoryview(bytearray(320))
    interleave_into(view, left, right)
    assert view.tobytes() == stereo


# -- sox reads what we write -------------------------------------------------------


def soxi(path: Path, option: str) -> str:
    done = subprocess.run(["soxi", option, str(path)], capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def sox_samples(path: Path, *options: str) -> int:
    """Samples per channel that sox actually reads from the file (not what the header says)."""
    done = subprocess.run(["sox", *options, str(path), "-t", "raw", "-e", "signed", "-b", "16", "-c", "1", "-"],
                          capture_output=True, timeout=30, check=True)
    assert b"WARN" not in done.stderr, done.stderr
    return len(done.stdout) // 2


def write_recording(path: Path, wav_format: WavFormat, frames: list[bytes]) -> None:
    """What the shell does: header for 0, audio, sizes patched at the end."""
    with open(path, "wb") as file:
        file.write(wav_header(wav_format))
        for frame in frames:
            file.write(frame)
        length = sum(map(len, frames))
        file.write(pad_byte(length))
        for offset, value in size_patches(wav_format, length):
            file.seek(offset)
            file.write(value)


@needs_sox
@pytest.mark.parametrize("encoding", [WavEncoding.MULAW, WavEncoding.ALAW])
@pytest.mark.parametrize("channels", [1, 2])
def test_sox_reads_a_recording(tmp_path, encoding, channels):
    wav_format = WavFormat(encoding=encoding, channels=channels)
    caller = bytes(range(160))
    bot = bytes(range(96, 256))
    frame = caller if channels == 1 else interleave(caller, bot)
    path = tmp_path / "call.wav"
    write_recording(path, wav_format, [frame] * 75)  # 1.5 s
    assert soxi(path, "-c") == str(channels)
    assert soxi(path, "-r") == "8000"
    assert soxi(path, "-e") == ("u-law" if encoding is WavEncoding.MULAW else "A-law")
    assert soxi(path, "-s") == "12000"
    assert float(soxi(path, "-D")) == 1.5
    assert sox_samples(path) == 12000


@needs_sox
@pytest.mark.parametrize(("encoding", "raw_type"), [(WavEncoding.MULAW, "ul"), (WavEncoding.ALAW, "al")])
def test_sox_finds_the_caller_left_and_the_bot_right(tmp_path, encoding, raw_type):
    wav_format = WavFormat(encoding=encoding, channels=2)
    # Codes that survive sox's decode and re-encode: not µ-law's negative zero (0x7F).
    caller = bytes(code for code in range(0, 170) if code != 0x7F)[:160]
    bot = bytes(code for code in range(90, 256) if code != 0x7F)[:160]
    path = tmp_path / "call.wav"
    write_recording(path, wav_format, [interleave(caller, bot)] * 2)
    for channel, expected in (("1", caller), ("2", bot)):
        done = subprocess.run(["sox", "-D", str(path), "-t", raw_type, "-", "remix", channel],
                              capture_output=True, timeout=30, check=True)
        assert done.stdout == expected * 2


@needs_sox
def test_odd_mono_recording_with_its_pad_byte(tmp_path):
    path = tmp_path / "odd.wav"
    write_recording(path, MONO_ULAW, [bytes(161)])
    assert path.stat().st_size == HEADER_SIZE + 162
    assert soxi(path, "-s") == "161"
    assert sox_samples(path) == 161


@needs_sox
def test_abrupt_end_leaves_a_readable_file_as_of_the_last_patch(tmp_path):
    """The shell patched the sizes after 1 s, wrote 0.5 s more, and the process died."""
    path = tmp_path / "abrupt.wav"
    frame = interleave(bytes(range(160)), bytes(range(96, 256)))
    with open(path, "wb") as file:
        file.write(wav_header(STEREO_ALAW))
        # Before the first patch the file is already valid, and empty.
        file.flush()
        assert soxi(path, "-s") == "0"
        for _ in range(50):
            file.write(frame)
        file.flush()
        for offset, value in size_patches(STEREO_ALAW, 50 * len(frame)):
            file.seek(offset)
            file.write(value)
        file.seek(0, 2)
        for _ in range(25):
            file.write(frame)
    assert float(soxi(path, "-D")) == 1.0  # as of the last patch: stale, but a valid file
    assert sox_samples(path) == 8000
    assert sox_samples(path, "--ignore-length") == 12000  # everything written is recoverable
