"""The one frame of Eko's audio: 20 ms of 8 kHz G.711.

Everything that cuts, paces, stamps or counts audio (the cache, live TTS, the
playout queue, the RTP sender, the frame clock, the benchmark) takes its sizes
from here. RFC 3551 §4.5.14: PCMU and PCMA sample at 8000 Hz, one octet per
sample; §4.2: 20 ms is the default packetisation (``a=ptime:20``).
"""

SAMPLE_RATE = 8000  # Hz
FRAME_SECONDS = 0.020
SAMPLES_PER_FRAME = 160  # SAMPLE_RATE * FRAME_SECONDS: the RTP timestamp step of a frame
FRAME_BYTES = SAMPLES_PER_FRAME  # one octet per G.711 sample
FRAME_NS = 20_000_000  # FRAME_SECONDS in nanoseconds, for integer clocks
