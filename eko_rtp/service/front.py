"""The Kamailio front (sip/kamailio/kamailio.cfg) as the workers of one box see it.

Two things: :func:`dispatcher_list` writes the dispatcher module's list file for a
worker plan (set 1, one line per worker, in worker order), and
:func:`parse_dispatcher_flags` reads ``kamcmd dispatcher.list``'s answer into
URI -> flags ("AP": active and probed; "IP": inactive, probed; "DX": disabled), so
a rolling restart can wait until the front has put a restarted worker back into
the rotation before it takes the next one out. :func:`front_flags` runs kamcmd.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable

from eko_rtp.errors import UserError
from eko_rtp.service.workers import Worker

DISPATCHER_SET = 1
# kamcmd lives in /usr/sbin, which an operator's PATH may lack.
_SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"
_NODE = re.compile(r"URI: (\S+)\s+FLAGS: (\S+)")


def dispatcher_list(workers: Iterable[Worker]) -> str:
    """The dispatcher list file for ``workers`` (the format of sip/kamailio/dispatcher.list)."""
    lines = [
        "# Eko RTP workers of this box behind the Kamailio front (written by eko-rtp install-service --workers).",
        "# SET URI FLAGS PRIORITY: every worker in set 1, active (0); probing comes from ds_probing_mode 1.",
    ]
    lines += [f"{DISPATCHER_SET} {worker.sip_uri} 0 0" for worker in workers]
    return "\n".join(lines) + "\n"


def parse_dispatcher_flags(text: str) -> dict[str, str]:
    """URI -> FLAGS of each destination in the output of ``kamcmd dispatcher.list``."""
    return dict(_NODE.findall(text))


def front_flags(control: str, *, timeout: float = 5.0) -> dict[str, str]:
    """Ask the front at ``control`` (its ctl socket, e.g. unix:/run/kamailio/kamailio_ctl) for its nodes' flags."""
    kamcmd = shutil.which("kamcmd") or shutil.which("kamcmd", path=_SBIN_PATH)
    if kamcmd is None:
        raise UserError("kamcmd is not installed (Debian package kamailio): it is how the front is asked which"
                        " workers it routes to", key="--front-control")
    try:
        completed = subprocess.run([kamcmd, "-s", control, "dispatcher.list"], capture_output=True, text=True,
                                   timeout=timeout)
    except subprocess.TimeoutExpired:
        return {}
    if completed.returncode != 0:
        return {}
    return parse_dispatcher_flags(completed.stdout)
