"""The bench picks a free SIP port for the server it spawns, then the server binds it:
another process can take it in between. The bench then starts the server again on
another port instead of failing the run (a real server, a real taken port)."""

import json
import socket
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

# The bench in a process whose first port pick is one this process holds.
WRAPPER = textwrap.dedent("""
    import socket, sys
    from eko_bench import targets
    from eko_bench.cli import main

    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    picks = []
    real_pick = targets.free_udp_port

    def pick(host):
        picks.append(host)
        return held.getsockname()[1] if len(picks) == 1 else real_pick(host)

    if __name__ == "__main__":  # not in the media process multiprocessing starts from this file
        targets.free_udp_port = pick
        status = main(sys.argv[1:])
        print(f"PICKS {len(picks)} HELD {held.getsockname()[1]}", file=sys.stderr)
        raise SystemExit(status)
""")


def test_a_server_that_lost_its_port_is_started_again_on_another(built_cache, tmp_path):
    wrapper = tmp_path / "bench_with_a_taken_port.py"
    wrapper.write_text(WRAPPER)
    done = subprocess.run([sys.executable, str(wrapper), "--spawn", "--cache", str(built_cache), "--calls", "2",
                           "--hold", "2", "--noise-probe", "0", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "could not bind SIP port" in done.stderr and "starting it again on another" in done.stderr
    assert "PICKS 2 " in done.stderr
    run = json.loads(done.stdout)["runs"][0]
    assert run["calls"]["answered"] == 2


def test_only_a_taken_sip_port_counts_as_lost(built_cache, tmp_path):
    from eko_bench import targets

    held = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    command = [sys.executable, "-m", "eko_rtp", "serve", "--listen", f"127.0.0.1:{port}", "--cache",
               str(built_cache), "--metrics", ""]
    lost = targets._spawn("server", command, "127.0.0.1", port, None, None)
    lost.process.wait(timeout=30)
    assert targets.lost_its_sip_port(lost)
    held.close()
    broken = targets._spawn("server", command[:4] + ["--no-such-option"], "127.0.0.1", port, None, None)
    broken.process.wait(timeout=30)
    assert not targets.lost_its_sip_port(broken)  # it failed, but not for its port: no second try
