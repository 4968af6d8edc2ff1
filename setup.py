"""The compiled parts: batched datagram I/O (eko_rtp/media/_batch.c), the
per-packet RTP state (_rtp.c) and a call's frame loop (_stream.c).

Optional: without a C compiler or Python's headers the build skips them with a
warning, and eko_rtp.media.mmsg, .rtp and .stream use their pure-Python twins.
Everything else about the package is in setup.cfg.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers",
         "-Wno-cast-function-type"]

setup(ext_modules=[Extension(f"eko_rtp.media.{name}", [f"eko_rtp/media/{name}.c"], optional=True,
                             extra_compile_args=FLAGS) for name in ("_batch", "_rtp", "_stream")])
