"""The compiled parts: batched datagram I/O (eko_rtp/media/_batch.c), the
per-packet RTP state (_rtp.c), a call's per-packet paths (_stream.c), its voice
activity detector's per-frame work (_vad.c), its ears' per-packet work
(eko_rtp/call/_ears.c), the scan of a SIP message's head (eko_rtp/sip/_head.c),
and the bench's media work (eko_bench/_engine.c).

Optional: without a C compiler or Python's headers the build skips them with a
warning, and eko_rtp.media.mmsg, .rtp, .stream, .vad, eko_rtp.call.ears,
eko_rtp.sip.message and eko_bench.rtp_engine use their pure-Python twins.
Everything else about the package is in setup.cfg.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type"]

MODULES = ["eko_rtp/media/_batch", "eko_rtp/media/_rtp", "eko_rtp/media/_stream", "eko_rtp/media/_vad",
           "eko_rtp/sip/_head",
           "eko_rtp/call/_ears",
           "eko_bench/_engine"]

# What every core type shares, included by each (a change to it rebuilds them all).
SHARED = ["eko_rtp/_core_type.h"]

setup(ext_modules=[Extension(path.replace("/", "."), [f"{path}.c"], depends=SHARED, optional=True,
                             extra_compile_args=FLAGS)
                   for path in MODULES])
