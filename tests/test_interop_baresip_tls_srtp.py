"""Encrypted calls with a real phone (issue 19): baresip calls the server over SIP/TLS with SDES-SRTP.

The certificates are made here, for each test, by a throwaway CA (``trustme``): the
server's certificate names 127.0.0.1 and the phone is told to trust the CA. No key is
ever committed. The server runs with ``tls`` among ``sip.transports`` and
``media.srtp = "required"``; baresip (tests/peers/baresip_peer.py, ``srtp-mand``)
offers ``RTP/SAVP`` with one ``a=crypto`` of AES_CM_128_HMAC_SHA1_80, so the greeting
it records and the digits the server logs have crossed SRTP both ways.

Refusals: a server whose ``media.srtp_suites`` leaves out the phone's only suite
answers its INVITE 488; and, since baresip cannot be made to offer another suite,
a handcrafted INVITE over TLS offering only ``F8_128_HMAC_SHA1_80`` (RFC 4568
§6.2.3, which we do not run) gets 488 too, and the connection goes on serving.

Only the baresip tests skip when baresip is missing; the handcrafted one needs none.
Every wait is bounded.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import socket
import time
from pathlib import Path

import attrs
import pytest
import trustme

from eko_rtp.server.tls import build_client_context
from eko_rtp.sip.framing import StreamFramer
from peers.baresip_peer import BaresipPeer, baresip_binary
from server_helpers import ServerProcess, free_port
from test_call_pjsua2 import assert_heard, phrase_samples

pytestmark = pytest.mark.interop
needs_baresip = pytest.mark.skipif(baresip_binary() is None,
                                   reason="baresip is not installed (apt-get install baresip)")

LOCAL_HANGUP = "Connection reset by user"  # libre's reason when our side sent the BYE
TLS_READY = 10.0  # s for the server's TLS listener to accept once SIP is up
RESPONSE_TIMEOUT = 10.0


@attrs.frozen(kw_only=True)
class TlsFiles:
    """A throwaway CA and the server certificate it issued for 127.0.0.1, as PEM files."""

    ca: Path
    certificate_chain: Path
    private_key: Path


@pytest.fixture
def tls_files(tmp_path) -> TlsFiles:
    directory = tmp_path / "tls"
    directory.mkdir()
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1")
    files = TlsFiles(ca=directory / "ca.pem", certificate_chain=directory / "server-chain.pem",
                     private_key=directory / "server-key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    files.certificate_chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(files.private_key))
    files.private_key.chmod(0o600)
    return files


def encrypted_config(path: Path, files: TlsFiles, *, tls_port: int, suites: tuple[str, ...] = ()) -> Path:
    """A server config: SIP over TLS on ``tls_port`` beside UDP and TCP, SRTP required."""
    suite_line = [f"srtp_suites = {json.dumps(list(suites))}"] if suites else []
    path.write_text("\n".join([
        "[sip]",
        'transports = ["udp", "tcp", "tls"]',
        f"tls_port = {tls_port}",
        f'tls_certificate = "{files.certificate_chain}"',
        f'tls_private_key = "{files.private_key}"',
        "[media]",
        'srtp = "required"',
        *suite_line,
        "",
    ]), encoding="utf-8")
    return path


def wait_tls_listening(port: int, timeout: float = TLS_READY) -> None:
    """Until the TLS port accepts a TCP connection (closed at once), or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing accepts on the TLS port 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.05)


def leaked_keys(log: str) -> list[str]:
    """Inline SDES keys the server logged in clear (it must redact every one)."""
    return re.findall(r"inline:(?!\[redacted\])[A-Za-z0-9+/=]{8,}", log)


def tls_uri(port: int) -> str:
    return f"sip:eko@127.0.0.1:{port};transport=tls"


@needs_baresip
def test_baresip_over_tls_with_srtp_hears_the_greeting_keys_digits_and_hangs_up(built_cache, tmp_path, tls_files):
    tls_port = free_port()
    config = encrypted_config(tmp_path / "eko.toml", tls_files, tls_port=tls_port)
    with ServerProcess(built_cache, "--config", str(config), "--script", "eko_test_scripts:greet_and_log_digits") as server:
        wait_tls_listening(tls_port)
        with BaresipPeer(tmp_path / "baresip", tls_ca=tls_files.ca, media_encryption="srtp-mand") as phone:
            phone.dial(tls_uri(tls_port))
            time.sleep(3.5)  # real time on purpose: windowed_match wants the phrase's first 2 s, within 1 s
            phone.send_digits("123#")
            server.wait_for_log(r": digit #$")
            closed = phone.hang_up()
            server.wait_for_log(r"ended \(remote_bye\)")
        trace = phone.sip_trace()
        output = phone.output()
    assert closed.param == LOCAL_HANGUP
    assert {message.transport for message in trace} == {"TLS"}, trace
    server_address = f"127.0.0.1:{tls_port}"
    sent = [message for message in trace if message.destination == server_address]
    received = [message for message in trace if message.destination != server_address]
    assert [message.start_line.split(" ")[0] for message in sent] == ["INVITE", "ACK", "BYE"]
    finals = [message for message in received if not message.start_line.split(" ")[1].startswith("1")]
    assert [message.start_line.split(" ")[1] for message in finals] == ["200", "200"]
    offer, answer = sent[0].body, finals[0].body
    assert re.search(r"^m=audio \d+ RTP/SAVP ", offer, re.MULTILINE), offer
    assert re.findall(r"^a=crypto:(\d+) (\S+) ", offer, re.MULTILINE) == [("1", "AES_CM_128_HMAC_SHA1_80")]
    # RFC 4568 §5.1.2: one a=crypto in the answer, with the accepted line's tag and suite.
    assert re.search(r"^m=audio \d+ RTP/SAVP ", answer, re.MULTILINE), answer
    assert re.findall(r"^a=crypto:(\d+) (\S+) ", answer, re.MULTILINE) == [("1", "AES_CM_128_HMAC_SHA1_80")]
    assert "SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)" in output
    assert "failed to decrypt" not in output  # baresip authenticated every packet the server sent
    assert [line.rsplit(" ", 1)[-1] for line in server.lines if ": digit " in line] == ["1", "2", "3", "#"]
    assert leaked_keys(server.log()) == []
    assert_heard(str(phone.recording()), phrase_samples(built_cache, "greet"))


@needs_baresip
def test_baresip_offering_a_suite_the_server_does_not_take_is_refused_with_488(built_cache, tmp_path, tls_files):
    tls_port = free_port()
    # baresip offers AES_CM_128_HMAC_SHA1_80 only: a server that takes AEAD alone cannot answer it.
    config = encrypted_config(tmp_path / "eko.toml", tls_files, tls_port=tls_port, suites=("AEAD_AES_128_GCM",))
    with ServerProcess(built_cache, "--config", str(config)) as server:
        wait_tls_listening(tls_port)
        with BaresipPeer(tmp_path / "baresip", tls_ca=tls_files.ca, media_encryption="srtp-mand") as phone:
            mark = len(phone.events)
            phone.command("dial", tls_uri(tls_port))
            closed = phone.wait_for_event("CALL_ESTABLISHED", "CALL_CLOSED", since=mark, timeout=10)
        trace = phone.sip_trace()
        assert server.process.poll() is None  # still serving
    assert closed.kind == "CALL_CLOSED", closed
    assert "488" in closed.param, closed
    assert {message.transport for message in trace} == {"TLS"}, trace
    finals = [message.start_line for message in trace
              if message.start_line.startswith("SIP/2.0 ") and not message.start_line.split(" ")[1].startswith("1")]
    assert [line.split(" ")[1] for line in finals] == ["488"]
    assert [message.start_line.split(" ")[0] for message in trace
            if not message.start_line.startswith("SIP/2.0")] == ["INVITE", "ACK"]


# ------------------------------------------------------------------ a handcrafted caller


class TlsCaller:
    """A SIP client over one TLS connection, blocking, every read bounded: enough for one INVITE."""

    def __init__(self, port: int, ca: Path):
        context = build_client_context(trust=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=RESPONSE_TIMEOUT)
        self.stream = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.local = "127.0.0.1:%d" % self.stream.getsockname()[1]
        self.port = port
        self.framer = StreamFramer()

    def close(self) -> None:
        self.stream.close()

    def send(self, message: bytes) -> None:
        self.stream.sendall(message)

    def request(self, method: str, *, call_id: str, branch: str, cseq: int = 1, to_tag: str = "",
                body: bytes = b"") -> bytes:
        headers = [
            f"{method} {tls_uri(self.port)} SIP/2.0",
            f"Via: SIP/2.0/TLS {self.local};branch={branch};rport",
            "Max-Forwards: 70",
            "From: <sip:+33612345678@127.0.0.1>;tag=handcrafted",
            f"To: <sip:eko@127.0.0.1:{self.port}>" + (f";tag={to_tag}" if to_tag else ""),
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:caller@{self.local};transport=tls>",
        ]
        if body:
            headers.append("Content-Type: application/sdp")
        headers.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + body

    def final_response(self) -> bytes:
        """The next final response (provisional ones are skipped), within RESPONSE_TIMEOUT."""
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        while True:
            message = self.framer.next_message()
            if message is not None:
                if not re.match(rb"SIP/2\.0 1\d\d ", message):
                    return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no final response in time")
            self.stream.settimeout(remaining)
            data = self.stream.recv(65536)
            if not data:
                raise AssertionError("the server closed the TLS connection")
            self.framer.receive_data(data)


def savp_offer(suite: str, master_length: int) -> bytes:
    key = base64.b64encode(secrets.token_bytes(master_length)).decode()
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        "m=audio 40000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
        f"a=crypto:1 {suite} inline:{key}\r\na=sendrecv\r\n"
    ).encode()


def test_a_handcrafted_invite_with_an_unsupported_suite_is_refused_with_488(built_cache, tmp_path, tls_files):
    tls_port = free_port()
    config = encrypted_config(tmp_path / "eko.toml", tls_files, tls_port=tls_port)
    with ServerProcess(built_cache, "--config", str(config)) as server:
        wait_tls_listening(tls_port)
        caller = TlsCaller(tls_port, tls_files.ca)
        try:
            # RFC 4568 §6.2.3: F8_128_HMAC_SHA1_80 has a 128-bit key and a 112-bit salt.
            branch = "z9hG4bK" + secrets.token_hex(8)
            caller.send(caller.request("INVITE", call_id="f8@handcrafted", branch=branch,
                                       body=savp_offer("F8_128_HMAC_SHA1_80", 30)))
            refusal = caller.final_response()
            status_line = refusal.split(b"\r\n", 1)[0]
            to_tag = re.search(rb"\r\nTo:[^\r\n]*;tag=([^;\r\n]+)", refusal, re.IGNORECASE)
            # §17.1.1.3: the ACK of a non-2xx final has the INVITE's branch and the response's To tag.
            caller.send(caller.request("ACK", call_id="f8@handcrafted", branch=branch,
                                       to_tag=to_tag.group(1).decode() if to_tag else ""))
            # The same connection still serves: a probe after the refusal is answered.
            caller.send(caller.request("OPTIONS", call_id="probe@handcrafted", branch="z9hG4bK" + secrets.token_hex(8)))
            probe = caller.final_response()
        finally:
            caller.close()
        assert server.process.poll() is None
        log = server.log()
    # 488 Not Acceptable Here (RFC 4568 §5.1.2), its reason phrase saying which suite was refused.
    assert status_line.startswith(b"SIP/2.0 488 ") and b"F8_128_HMAC_SHA1_80" in status_line, refusal
    assert b"Via: SIP/2.0/TLS " in refusal
    assert probe.split(b"\r\n", 1)[0] == b"SIP/2.0 200 OK", probe
    assert leaked_keys(log) == []
