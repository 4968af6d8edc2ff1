"""The one compiled part: batched datagram I/O (eko_rtp/media/_batch.c).

Optional: without a C compiler or Python's headers the build skips it with a
warning, and eko_rtp.media.mmsg uses its pure-Python classes. Everything else about
the package is in setup.cfg.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("eko_rtp.media._batch", ["eko_rtp/media/_batch.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                                 "-Wno-missing-field-initializers", "-Wno-cast-function-type"])])
