"""Starting, pinning, probing and stopping what the bench measures.

Two kinds of target: ``eko-rtp serve`` (our server, spawned with ``--spawn`` or
already running at ``--address``) and the pjsua2 reference bot in
``bench/peers/pjsua2_bot.py``. A spawned target is pinned to ``--server-cpus``
with ``os.sched_setaffinity`` and the bench pins itself to the remaining CPUs, so
the figures are one core's worth of server with the load generator elsewhere.
Readiness is an OPTIONS that gets a 200 (the server contract), polled with a
deadline, over the transport the run will use (with ``--tls``, a TLS connection to
the server's TLS port, made again until one is accepted); a target that exits first
is reported with the tail of its stderr.
"""

from __future__ import annotations

import ipaddress
import os
import pathlib
import socket
import ssl
import subprocess
import sys
import tempfile

import attrs
import trio

from eko_bench.sip_client import SipClient
from eko_rtp.config import parse_cpu_list
from eko_rtp.config import parse_port_range as parse_rtp_port_range
from eko_rtp.errors import UserError
from eko_rtp.server.tls import build_client_context

PEER_SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "peers" / "pjsua2_bot.py"
PEER_MAX_CALLS = 4  # PJSUA_MAX_CALLS in the pjsua2-python wheel
PHRASES = ("greet", "welcome")  # what the default script plays, in order
READY_TIMEOUT = 30.0
CRM_CLIENTS = 3000  # synthetic clients seeded for greeting-returning: one per call the bench may place
# Not passed on to a spawned server: with a Deepgram key it would stream every call it
# answers to the real service (billed). Only the bench's fake endpoint is given (--asr).
# A credentials directory could hold such a key (eko_rtp/service/credentials.py).
NOT_INHERITED = ("DEEPGRAM_API_KEY", "DEEPGRAM_BASE_URL", "CREDENTIALS_DIRECTORY")


def check_loopback(host: str) -> str:
    """Refuse anything but 127.0.0.0/8 and ::1: the bench floods what it targets."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise UserError(f"target host {host!r} is not an IP address (the bench only targets loopback)", key="--address") from None
    if not address.is_loopback:
        raise UserError(f"target {host} is outside loopback (127.0.0.0/8, ::1); the bench refuses to load other hosts",
                        key="--address")
    return host


def parse_host_port(text: str, *, key: str) -> tuple[str, int]:
    host, colon, port = text.rpartition(":")
    host = host.strip("[]")
    if not colon or not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"expected HOST:PORT, got {text!r}", key=key)
    return check_loopback(host), int(port)


def free_udp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def parse_port_range(text: str) -> range:
    """'20000-29999' -> range(20000, 30000), with room for at least one RTP/RTCP pair."""
    low, dash, high = text.partition("-")
    if not dash or not low.isdigit() or not high.isdigit() or not 1024 <= int(low) < int(high) <= 65535:
        raise UserError(f"expected a port range LO-HI within 1024-65535, got {text!r}", key="--bench-rtp-ports")
    return range(int(low), int(high) + 1)


def server_rtp_ports(text: str, *, key: str) -> range:
    """The ports a server given ``--rtp-ports text`` binds, read as the server reads them."""
    low, high = parse_rtp_port_range(text, what=key)
    return range(low, high + 1)


def parse_cpus(text: str) -> set[int]:
    """'0' or '0,2' or '0-1' -> a CPU set, among the CPUs this process may use."""
    cpus = set(parse_cpu_list(text, what="--server-cpus"))
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise UserError(f"CPUs {sorted(cpus)} are not all among this process's {sorted(available)}", key="--server-cpus")
    return cpus


def pin(pid: int, cpus: set[int] | None) -> None:
    """Pin ``pid`` (0: the bench) to ``cpus``; the bench goes to the others when any remain."""
    if cpus is None:
        return
    os.sched_setaffinity(pid, cpus)


def pin_bench_away_from(server_cpus: set[int] | None) -> set[int]:
    available = os.sched_getaffinity(0)
    if server_cpus is not None and available - server_cpus:
        os.sched_setaffinity(0, available - server_cpus)
    return os.sched_getaffinity(0)


def phrase_files(cache_dir: str) -> list[str]:
    """The cache's rendered µ-law files for the default script, in play order."""
    found = [str(pathlib.Path(cache_dir) / f"{key}.raw") for key in PHRASES if (pathlib.Path(cache_dir) / f"{key}.raw").is_file()]
    if not found:
        raise UserError(f"no {PHRASES[0]}.raw in the cache; run: eko-rtp cache build --cache {cache_dir}", path=cache_dir)
    return found


def _phrase_audio(cache_dir: str, key: str, scenario: str) -> bytes:
    path = pathlib.Path(cache_dir) / f"{key}.raw"
    try:
        return path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read the phrase {key!r} the {scenario} scenario plays: {error.strerror}"
                        f" (build it with: eko-rtp cache build --cache {cache_dir})", path=str(path)) from None


@attrs.frozen(kw_only=True)
class PhraseShape:
    """Where a cached phrase is silent, in whole 20 ms frames of µ-law zero codes."""

    sound_frames: int  # from its start to its last frame with sound (its trailing silence left out)
    longest_pause_frames: int  # the longest silent run before that


def phrase_shape(cache_dir: str, key: str) -> PhraseShape:
    """The shape of cached phrase ``key`` (the listening scenario's barge-ins are told from its pauses and end)."""
    audio = _phrase_audio(cache_dir, key, "listening")
    longest = run = sound_frames = 0
    for index, start in enumerate(range(0, len(audio) - len(audio) % 160, 160)):
        if audio[start:start + 160].strip(bytes((0xFF, 0x7F))):
            longest = max(longest, run)
            run = 0
            sound_frames = index + 1
        else:
            run += 1
    return PhraseShape(sound_frames=sound_frames, longest_pause_frames=longest)


def trailing_silence_frames(cache_dir: str, key: str) -> int:
    """Whole 20 ms frames of µ-law silence that end cached phrase ``key`` (its rendered pause)."""
    audio = _phrase_audio(cache_dir, key, "hybrid")
    frames = 0
    for end in range(len(audio) - len(audio) % 160, 0, -160):
        if audio[end - 160:end].strip(bytes((0xFF, 0x7F))):
            break
        frames += 1
    return frames


@attrs.define
class Target:
    """Something answering SIP at ``host:port``; ``process`` when the bench started it."""

    name: str
    host: str
    port: int
    process: subprocess.Popen | None = None
    pid: int | None = None
    # A front's workers (--worker-pid): the processes that serve its calls, each sampled.
    workers: tuple[int, ...] = ()
    stderr_path: str | None = None
    max_calls: int | None = None
    rtp_ports: range | None = None  # the server's RTP/RTCP ports, when known (its receive queues are sampled)
    # The bench's own processes serving this target (a fake endpoint), name -> pid: their CPU is the bench's.
    helpers: dict[str, int] = attrs.Factory(dict)
    tls_port: int | None = None  # its SIP-over-TLS port, when it has one
    tls_trust: str | None = None  # PEM CA bundle its TLS certificate chains to (None: the system's store)

    def tls_context(self) -> ssl.SSLContext:
        """The client context for its TLS port: its certificate verified, with the name it is dialled by."""
        return build_client_context(trust=pathlib.Path(self.tls_trust) if self.tls_trust else None)

    def stderr_tail(self, lines: int = 15) -> str:
        if self.stderr_path is None:
            return ""
        with open(self.stderr_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def _spawn(name: str, command: list[str], host: str, port: int, cpus: set[int] | None, max_calls: int | None,
           env: dict[str, str] | None = None, rtp_ports: range | None = None,
           helpers: dict[str, int] | None = None) -> Target:
    """Start ``command`` (in environment ``env``, whole; None: the bench's) pinned to ``cpus``."""
    stderr = tempfile.NamedTemporaryFile(prefix=f"eko-bench-{name}-", suffix=".log", delete=False)
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, env=env)
    stderr.close()
    pin(process.pid, cpus)
    return Target(name=name, host=host, port=port, process=process, pid=process.pid, stderr_path=stderr.name,
                  max_calls=max_calls, rtp_ports=rtp_ports, helpers=dict(helpers or {}))


def spawn_server(*, host: str, cache_dir: str | None, cpus: set[int] | None, rtp_ports: str, extra: list[str],
                 env: dict[str, str] | None = None, helpers: dict[str, int] | None = None) -> Target:
    """``eko-rtp serve`` on a free port; ``env`` adds to the bench's environment (the fake endpoints),
    less ``NOT_INHERITED``; ``helpers`` are the bench's processes serving it (name -> pid)."""
    ports = server_rtp_ports(rtp_ports, key="--rtp-ports")  # refused here, before anything starts
    port = free_udp_port(host)
    command = [sys.executable, "-m", "eko_rtp", "serve", "--listen", f"{host}:{port}", "--media-address", host,
               "--rtp-ports", rtp_ports]
    if cache_dir is not None:
        command += ["--cache", cache_dir]
    environment = {name: value for name, value in os.environ.items() if name not in NOT_INHERITED}
    environment.update(env or {})
    return _spawn("server", command + extra, host, port, cpus, None, environment, ports, helpers)


def lost_its_sip_port(target: Target) -> bool:
    """Whether ``target`` exited because its SIP port was taken (``eko-rtp serve`` says
    ``cannot bind SIP on HOST:PORT: Address already in use`` and exits)."""
    if target.process is None or target.process.poll() is None:
        return False
    return f"cannot bind SIP on {target.host}:{target.port}: Address already in use" in target.stderr_tail()


def spawn_peer(*, host: str, cache_dir: str, cpus: set[int] | None, rtp_port: int) -> Target:
    if not PEER_SCRIPT.is_file():
        raise UserError(f"the reference peer is not at {PEER_SCRIPT} (it ships in the source tree only)")
    port = free_udp_port(host)
    command = [sys.executable, str(PEER_SCRIPT), "--listen", f"{host}:{port}", "--rtp-port", str(rtp_port)]
    for path in phrase_files(cache_dir):
        command += ["--audio", path]
    return _spawn("peer", command, host, port, cpus, PEER_MAX_CALLS)


async def wait_ready(target: Target, *, local_host: str, tls: bool = False, timeout: float = READY_TIMEOUT) -> None:
    """Poll with OPTIONS until a 200, the process exits, or ``timeout``; with ``tls`` over TLS to its TLS port."""
    answered = False
    refused = None  # the last reason a TLS connection was not made
    port = target.tls_port if tls else target.port
    with trio.move_on_after(timeout):
        while not answered and (target.process is None or target.process.poll() is None):
            try:
                client = await SipClient.open(local_host=local_host, target_host=target.host, target_port=port,
                                              tls=target.tls_context() if tls else None)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as error:
                refused = error.__cause__ or error  # not listening yet, or a handshake that failed
                await trio.sleep(0.2)
                continue
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(client.receive_loop)
                    while target.process is None or target.process.poll() is None:
                        if await client.options(timeout=0.3) == 200:
                            answered = True
                            break
                        await trio.sleep(0.2)
                    nursery.cancel_scope.cancel()
            finally:
                client.close()
    # Raised out here, not in the nursery, so the CLI sees a UserError and not an ExceptionGroup.
    if answered:
        return
    if target.process is not None and target.process.poll() is not None:
        raise UserError(f"{target.name} exited with status {target.process.returncode} before answering"
                        f" OPTIONS; its last output:\n{target.stderr_tail()}")
    over = f" over TLS (last connection attempt: {refused})" if tls and refused is not None else ""
    raise UserError(f"{target.name} at {target.host}:{port} did not answer OPTIONS 200{over} within {timeout:.0f} s;"
                    f" its last output:\n{target.stderr_tail()}")


def free_tcp_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def spawn_crm(*, host: str, directory: str, clients: int) -> Target:
    """Seed a fresh embedded CRM with ``clients`` synthetic clients and serve it (docs/crm-rpc.md)."""
    database = str(pathlib.Path(directory) / "crm.sqlite3")
    seeded = subprocess.run([sys.executable, "-m", "eko_rtp", "crm", "seed", "--db", database, "--synthetic", str(clients)],
                            capture_output=True, text=True, timeout=120)
    if seeded.returncode != 0:
        raise UserError(f"eko-rtp crm seed failed (status {seeded.returncode}): {seeded.stderr.strip()[-500:]}")
    port = free_tcp_port(host)
    return _spawn("crm", [sys.executable, "-m", "eko_rtp", "crm", "serve", "--listen", f"{host}:{port}", "--db", database],
                  host, port, None, None)


async def wait_listening(target: Target, *, timeout: float = READY_TIMEOUT) -> None:
    """Poll a TCP service (the CRM) with connects until it accepts, exits, or ``timeout``."""
    with trio.move_on_after(timeout):
        while target.process.poll() is None:
            try:
                stream = await trio.open_tcp_stream(target.host, target.port)
            except OSError:
                await trio.sleep(0.1)
                continue
            await stream.aclose()
            return
    raise UserError(f"{target.name} at {target.host}:{target.port} did not accept connections (status"
                    f" {target.process.poll()}); its last output:\n{target.stderr_tail()}")
