"""The compiled parts: batched datagram I/O (eko_rtp/media/_batch.c), the
per-packet RTP state (_rtp.c), a call's per-packet paths (_stream.c), its voice
activity detector's per-frame work (_vad.c), its ears' per-packet work
(eko_rtp/call/_ears.c), the parse of a plain SIP message (eko_rtp/sip/_head.c) and
of its SDP (eko_rtp/media/_sdp.c), and the bench's media work (eko_bench/_engine.c).

Optional: without a C compiler or Python's headers the build skips them with a
warning, and eko_rtp.media.mmsg, .rtp, .stream, .vad, .sdp, eko_rtp.call.ears,
eko_rtp.sip.message and eko_bench.rtp_engine use their pure-Python twins.
Everything else about the package is in setup.cfg.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type"]

MODULES = ["eko_rtp/media/_batch", "eko_rtp/media/_rtp", "eko_rtp/media/_stream", "eko_rtp/media/_vad",
           "eko_rtp/media/_sdp", "eko_rtp/sip/_head",
           "eko_rtp/call/_ears",
           "eko_bench/_engine"]

# What the core types and the parsers share, included by them (a change rebuilds them all).
SHARED = ["eko_rtp/_core_type.h", "eko_rtp/_names.h", "eko_rtp/_values.h"]

setup(ext_modules=[Extension(path.replace("/", "."), [f"{path}.c"], depends=SHARED, optional=True,
                             extra_compile_args=FLAGS)
                   for path in MODULES])
