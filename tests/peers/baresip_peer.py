"""baresip (Debian ``baresip``, 1.0.x) as a SIP phone for the interop tests, driven over ctrl_tcp.

Theory of operation: each ``BaresipPeer`` writes a throwaway configuration directory
(``config``, ``accounts`` and a WAV of silence), starts ``baresip -f DIR`` as a subprocess
and talks to it through the ``ctrl_tcp`` module: JSON objects framed as netstrings
(``12:{"a":"b"},``). A command is ``{"command", "params", "token"}``; baresip answers
``{"response": true, "ok", "data", "token"}`` and, unasked, reports what happens as
``{"event": true, "type": "CALL_ESTABLISHED", "param", "id", ...}``. The commands are
the ``menu`` module's (``dial``, ``hangup``, ``hold``, ``resume``, ``sndcode``).

Only the modules a headless phone needs are loaded:

- ``g711``: PCMU and PCMA; RFC 4733 telephone-event is in baresip's core;
- ``aufile`` as the microphone, playing the silence file (so baresip sends RTP);
- ``aubridge`` as the loudspeaker: a null sink, nothing is played anywhere;
- ``sndfile``, an audio filter that writes what baresip *decoded* from the far end to
  ``recordings/dump-<time>-dec.wav`` (16-bit mono at the codec's 8 kHz); the file's
  header is only complete once baresip has closed it, so read it after ``close()``;
- ``account`` (read ``accounts``), ``menu`` (the commands), ``ctrl_tcp`` (the socket).

baresip listens for SIP on 127.0.0.1, port 0 (the kernel picks one per transport; the
Contact carries it).

Encrypted calls (issue 19): with ``tls_ca`` baresip trusts that CA file for SIP over TLS
(config ``sip_cafile``) and dials ``sip:...;transport=tls`` URIs over TLS; with
``media_encryption`` the ``srtp`` module is loaded and the account asks for it
(``;mediaenc=``). What baresip 1.0.0 with libre 1.1.0 does, found by experiment:

- ``srtp-mand`` offers ``RTP/SAVP`` with exactly one ``a=crypto:1 AES_CM_128_HMAC_SHA1_80``
  line; ``srtp`` (best effort) offers the same ``a=crypto`` under ``RTP/AVP``; ``srtp-mandf``
  is ``srtp-mand`` that also fails a call whose answer has no usable ``a=crypto``. Its
  ``srtp`` module knows the AES-CM and AEAD suites but offers only that one, and no
  config key changes it: a refusal by suite is made on the server's side, or by a
  handcrafted INVITE.
- it connects TLS 1.3 and does **not** verify the server's certificate (neither the CA
  nor the name): ``sip_cafile`` is set so that a later baresip that does verify still
  trusts the test's CA, but nothing here may rely on baresip rejecting a bad certificate.
- it needs no certificate of its own to dial over TLS (``sip_certificate`` is only for
  the TLS listener it opens beside, which no test calls). ``-s`` makes it print every SIP message it sends or receives, which
``sip_trace()`` reads back; ``-t`` makes it quit on its own after ``lifetime`` seconds even
if the test dies before ``close()``. Every wait here is bounded.

baresip 1.0.0 quirk (not the server's): after a hold and a resume, the ``sndfile``
recording gets nothing more (the same against a second baresip), so a test can only
listen to what comes before the first hold.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import wave
from pathlib import Path

import attrs

from server_helpers import free_port

MODULE_PATH = Path("/usr/lib/baresip/modules")
CONTROL_STARTUP = 5.0  # seconds for baresip to open its control socket
MAX_NETSTRING = 1 << 20  # a length prefix beyond this is garbage, not a message


def baresip_binary() -> str | None:
    return shutil.which("baresip")


class BaresipError(AssertionError):
    """baresip did not do what the test asked (the message ends with its output)."""


@attrs.frozen(kw_only=True)
class BaresipEvent:
    """One event baresip reported on its control socket."""

    kind: str  # "CALL_ESTABLISHED", "CALL_CLOSED", "CALL_REMOTE_SDP", ...
    param: str  # e.g. the close reason "Connection reset by peer" (a BYE came in)
    call_id: str


@attrs.frozen(kw_only=True)
class TracedMessage:
    """One SIP message from baresip's ``-s`` trace."""

    transport: str  # "UDP", "TCP" or "TLS"
    source: str  # "127.0.0.1:5060"
    destination: str
    start_line: str  # "INVITE sip:eko@127.0.0.1:5060 SIP/2.0", "SIP/2.0 200 OK"
    body: str = ""  # the SDP of an INVITE or its 200, as printed (line ends may have lost their CR)


# -s prints each message as "\x1b[36;1m#\nUDP 127.0.0.1:a -> 127.0.0.1:b\nSTART LINE\n...\x1b[;m"
TRACE_HEADER = re.compile(r"^(UDP|TCP|TLS) (\S+) -> (\S+)\r?\n([^\r\n]+)", re.MULTILINE)
TRACE_BLOCK = re.compile(r"\x1b\[36;1m#\r?\n(.*?)(?:\x1b\[;m|\Z)", re.DOTALL)
BLANK_LINE = re.compile(r"\r?\n\r?\n")


MEDIA_ENCRYPTIONS = ("srtp", "srtp-mand", "srtp-mandf")  # the srtp module's mediaenc names


def config_text(*, control_port: int, recordings: Path, microphone: Path, tls_ca: Path | None = None,
                srtp: bool = False) -> str:
    """baresip's ``config``: loopback only, the modules listed in the module docstring, no sound card;
    with ``tls_ca`` the CA it trusts for SIP over TLS, with ``srtp`` the SDES-SRTP module."""
    encrypted = [f"sip_cafile {tls_ca}"] if tls_ca is not None else []
    if srtp:
        encrypted.append("module srtp.so")
    return "\n".join([
        "# written by tests/peers/baresip_peer.py for one test; thrown away after it",
        "poll_method epoll",
        "sip_listen 127.0.0.1:0",
        "net_interface 127.0.0.1",  # the address of the SDP c= line and the Contact
        "call_local_timeout 10",
        f"audio_source aufile,{microphone}",
        "audio_player aubridge,null",  # a bridge with no source on its other side: a sink
        "audio_alert aubridge,null",
        "audio_level no",
        "rtp_stats no",
        "rtcp_mux no",
        f"module_path {MODULE_PATH}",
        "module g711.so",
        "module sndfile.so",
        "module aufile.so",
        "module aubridge.so",
        "module_tmp account.so",
        "module_app menu.so",
        "module_app ctrl_tcp.so",
        f"ctrl_tcp_listen 127.0.0.1:{control_port}",
        f"snd_path {recordings}",
        "statmode_default off",  # no per-second status line in the output
        "ringback_disabled yes",
        "menu_bell no",
        *encrypted,
        "",
    ])


def write_silence(path: Path, seconds: float) -> None:
    """The microphone: 16-bit mono 8 kHz silence, longer than the peer lives."""
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(2 * int(8000 * seconds)))


class BaresipPeer:
    """One baresip process with its own configuration directory, driven over ctrl_tcp.

    Use as a context manager: ``with BaresipPeer(tmp_path / "baresip") as phone:``.
    """

    def __init__(self, directory: Path, *, control_port: int | None = None, lifetime: int = 40,
                 tls_ca: Path | None = None, media_encryption: str | None = None):
        if media_encryption is not None and media_encryption not in MEDIA_ENCRYPTIONS:
            raise ValueError(f"media_encryption must be one of {MEDIA_ENCRYPTIONS}, not {media_encryption!r}")
        self.directory = directory
        self.tls_ca = tls_ca
        self.media_encryption = media_encryption
        self.recordings = directory / "recordings"
        self.output_path = directory / "baresip.out"
        self.control_port = control_port or free_port()
        self.lifetime = lifetime
        self.events: list[BaresipEvent] = []
        self._responses: dict[str, dict] = {}
        self._buffer = b""
        self._next_token = 0
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    # -- lifetime ----------------------------------------------------------------

    def start(self) -> None:
        binary = baresip_binary()
        if binary is None:
            raise BaresipError("baresip is not installed (apt-get install baresip)")
        self.recordings.mkdir(parents=True, exist_ok=True)
        microphone = self.directory / "silence.wav"
        write_silence(microphone, self.lifetime + 5)
        (self.directory / "config").write_text(
            config_text(control_port=self.control_port, recordings=self.recordings, microphone=microphone,
                        tls_ca=self.tls_ca, srtp=self.media_encryption is not None)
        )
        # regint=0: no REGISTER, the account only names us in From
        mediaenc = f";mediaenc={self.media_encryption}" if self.media_encryption else ""
        (self.directory / "accounts").write_text(f"<sip:baresip@127.0.0.1>;regint=0{mediaenc}\n")
        with open(self.output_path, "wb") as output:
            self._process = subprocess.Popen(
                [binary, "-4", "-v", "-s", "-f", str(self.directory), "-t", str(self.lifetime)],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        deadline = time.monotonic() + CONTROL_STARTUP
        while True:
            if self._process.poll() is not None:
                raise self._error(f"baresip exited with {self._process.returncode} at startup")
            try:
                self._control = socket.create_connection(("127.0.0.1", self.control_port), timeout=0.1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise self._error(f"no ctrl_tcp socket on 127.0.0.1:{self.control_port} "
                                      f"within {CONTROL_STARTUP} s") from None
                time.sleep(0.02)

    def close(self) -> int | None:
        """Stop baresip (SIGTERM: it ends its calls and closes its recordings), bounded."""
        if self._control is not None:
            self._control.close()
            self._control = None
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return process.returncode

    def __enter__(self) -> "BaresipPeer":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- what baresip said ---------------------------------------------------------

    def output(self) -> str:
        try:
            return self.output_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def sip_trace(self) -> list[TracedMessage]:
        traced = []
        for block in TRACE_BLOCK.findall(self.output()):
            header = TRACE_HEADER.match(block)
            if header is None:
                continue
            transport, source, destination, start_line = header.groups()
            parts = BLANK_LINE.split(block, maxsplit=1)
            traced.append(TracedMessage(transport=transport, source=source, destination=destination,
                                        start_line=start_line, body=parts[1].strip() if len(parts) == 2 else ""))
        return traced

    def recording(self) -> Path:
        """The WAV of the audio baresip decoded in its (only) call; complete after ``close()``."""
        found = sorted(self.recordings.glob("*-dec.wav"))
        if len(found) != 1:
            raise self._error(f"expected one decoded-audio recording in {self.recordings}, found {found}")
        return found[0]

    def _error(self, message: str) -> BaresipError:
        return BaresipError(f"{message}\n--- baresip output (end) ---\n{self.output()[-6000:]}")

    # -- the control socket ----------------------------------------------------------

    def command(self, name: str, params: str = "", *, timeout: float = 5.0) -> str:
        """Run one baresip command; its response's data. Events read meanwhile are kept."""
        if self._control is None:
            raise BaresipError("baresip is not running")
        self._next_token += 1
        token = f"t{self._next_token}"
        body = json.dumps({"command": name, "params": params, "token": token}).encode()
        self._control.sendall(b"%d:%s," % (len(body), body))
        deadline = time.monotonic() + timeout
        while token not in self._responses:
            self._read_message(deadline, waiting_for=f"the response to {name!r}")
        response = self._responses.pop(token)
        if not response.get("ok"):
            raise self._error(f"command {name} {params!r} failed: {response}")
        return str(response.get("data", ""))

    def wait_for_event(self, *kinds: str, since: int = 0, timeout: float = 10.0) -> BaresipEvent:
        """The first event of one of ``kinds`` at index ``since`` or later in ``events``."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[since:]:
                if event.kind in kinds:
                    return event
            self._read_message(deadline, waiting_for=" or ".join(kinds))

    def _read_message(self, deadline: float, *, waiting_for: str) -> None:
        """Read until one more message is filed (an event or a response), or fail at ``deadline``."""
        while True:
            message = self._pop_netstring()
            if message is not None:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._error(f"baresip: no {waiting_for} in time; events so far: {self.events}")
            self._control.settimeout(remaining)
            try:
                chunk = self._control.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise self._error(f"baresip closed its control socket while we waited for {waiting_for}")
            self._buffer += chunk
        if message.get("event"):
            self.events.append(BaresipEvent(
                kind=str(message.get("type", "")), param=str(message.get("param", "")),
                call_id=str(message.get("id", "")),
            ))
        elif message.get("response"):
            self._responses[str(message.get("token", ""))] = message
        else:
            raise self._error(f"baresip sent neither an event nor a response: {message}")

    def _pop_netstring(self) -> dict | None:
        length_text, colon, rest = self._buffer.partition(b":")
        if not colon:
            if len(length_text) > 8:
                raise self._error(f"baresip sent no netstring length: {self._buffer[:40]!r}")
            return None
        if not length_text.isdigit() or int(length_text) > MAX_NETSTRING:
            raise self._error(f"baresip sent a bad netstring length: {length_text[:40]!r}")
        length = int(length_text)
        if len(rest) < length + 1:
            return None
        if rest[length : length + 1] != b",":
            raise self._error(f"baresip's netstring does not end with a comma: {rest[: length + 1][-40:]!r}")
        self._buffer = rest[length + 1 :]
        try:
            return json.loads(rest[:length])
        except ValueError as error:
            raise self._error(f"baresip sent a netstring that is not JSON ({error}): {rest[:80]!r}") from None

    # -- the phone -----------------------------------------------------------------

    def dial(self, uri: str, *, timeout: float = 10.0) -> BaresipEvent:
        """Call ``uri``; return CALL_ESTABLISHED once the 200 OK came (fails if the call closes first)."""
        mark = len(self.events)
        self.command("dial", uri)
        event = self.wait_for_event("CALL_ESTABLISHED", "CALL_CLOSED", since=mark, timeout=timeout)
        if event.kind != "CALL_ESTABLISHED":
            raise self._error(f"the call to {uri} was not answered: {event.param}")
        return event

    def hang_up(self, *, timeout: float = 5.0) -> BaresipEvent:
        """Send BYE; return the CALL_CLOSED event."""
        mark = len(self.events)
        self.command("hangup")
        return self.wait_for_event("CALL_CLOSED", since=mark, timeout=timeout)

    def hold(self, *, timeout: float = 5.0) -> BaresipEvent:
        """re-INVITE with a=sendonly; return once the 200 OK's SDP answer came."""
        return self._modify("hold", timeout)

    def resume(self, *, timeout: float = 5.0) -> BaresipEvent:
        """re-INVITE with a=sendrecv; return once the 200 OK's SDP answer came."""
        return self._modify("resume", timeout)

    def _modify(self, name: str, timeout: float) -> BaresipEvent:
        mark = len(self.events)
        self.command(name)
        event = self.wait_for_event("CALL_REMOTE_SDP", "CALL_CLOSED", since=mark, timeout=timeout)
        if event.kind != "CALL_REMOTE_SDP":
            raise self._error(f"the call closed during {name}: {event.param}")
        return event

    def send_digits(self, digits: str) -> None:
        """Key ``digits`` in: RFC 4733 telephone-events on the RTP stream, one after the other."""
        self.command("sndcode", digits)
