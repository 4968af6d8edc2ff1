"""The bench's own RTP ports stay apart from the servers' (issue 14, friction)."""

from __future__ import annotations

import os
import subprocess
import sys

from eko_bench.cli import build_parser
from eko_bench.targets import server_rtp_ports
from eko_rtp.config import load_config


def test_the_bench_default_rtp_ports_are_apart_from_the_servers():
    args = build_parser().parse_args([])
    low, high = load_config(None).rtp_ports  # eko-rtp serve with no config
    server = range(low, high + 1)
    spawned = server_rtp_ports(args.rtp_ports, key="--rtp-ports")
    assert (server, spawned) == (range(20000, 30000), range(30000, 40000))
    assert args.bench_rtp_ports == range(10000, 20000)
    assert set(args.bench_rtp_ports).isdisjoint(server)
    assert set(args.bench_rtp_ports).isdisjoint(spawned)
    # the pjsua2 peer's RTP starts at 40000 (campaign.py), tshark's cross-check filters 40000-40010
    assert max(args.bench_rtp_ports) < 40000


def test_help_says_why_the_bench_default_is_where_it_is():
    # Wide enough that argparse breaks no line (it would break "--rtp-ports" at its hyphen).
    environment = {**os.environ, "COLUMNS": "1000"}
    done = subprocess.run([sys.executable, "-m", "eko_bench", "--help"], capture_output=True, text=True, timeout=60,
                          env=environment)
    assert done.returncode == 0, done.stderr
    assert (
        "--bench-rtp-ports BENCH_RTP_PORTS the bench's own RTP/RTCP port pairs (default 10000-19999: apart from"
        " eko-rtp's default media.rtp_ports 20000-29999, a spawned server's --rtp-ports 30000-39999, the pjsua2"
        " peer's ports from 40000 and Linux's ephemeral ports)"
    ) in " ".join(done.stdout.split())
