"""Checkout and venv paths the systemd units may point at, wherever the tests run from.

The units hide /tmp, /home and /root from the service, so install-service refuses a
checkout or venv there (rightly). CI may clone into /tmp: these tests then use
symlinks to the real checkout and venv from a scratch directory outside the hidden
trees, so what they check does not depend on where the clone lives.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REAL_CHECKOUT = Path(__file__).resolve().parents[1]


def _scratch_parent() -> str:
    for candidate in ("/run", "/var/lib", "/srv"):
        if os.access(candidate, os.W_OK):
            return candidate
    raise RuntimeError("no writable directory outside the trees the units hide (/run, /var/lib, /srv)")


SCRATCH = Path(tempfile.mkdtemp(prefix="eko-rtp-tests-", dir=_scratch_parent()))
atexit.register(shutil.rmtree, SCRATCH, True)
CHECKOUT = SCRATCH / "checkout"
VENV = SCRATCH / "venv"
CHECKOUT.symlink_to(REAL_CHECKOUT)
VENV.symlink_to(sys.prefix)
PYTHON = VENV / "bin" / "python"
# Run the package from the symlinked checkout, so install-service sees that path.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
