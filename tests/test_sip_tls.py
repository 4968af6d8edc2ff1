"""SIP over TLS on a real ``eko-rtp serve`` over loopback (issue 19).

The certificates come from a throwaway ``trustme`` CA made per test and written to
its tmp dir; the client is Python's own ``ssl`` over a blocking socket, framing
messages by Content-Length like the TCP peer of the torture tests. The server binds
its TLS listener on a port the kernel picks (``sip.tls_port = 0``) and says which in
its "listening" line.

Time here is real (the server is another process): the handshake timeout is short,
and the assertion on when the server gave up allows a margin.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
import struct
import time

import pytest
import trio
import trustme

from eko_bench import uac
from eko_rtp.server.tls import ServerTls, TlsSettings
from eko_rtp.server.transport import CLOSE_LINGER, SipTransport, TcpLimits
from server_helpers import ServerProcess
from test_server_tcp_limits import closed_within
from test_server_torture import (RESPONSE_TIMEOUT, Closed, TcpPeer, collect, final_for, in_dialog, sip_request,
                                 unique)

HOST = "127.0.0.1"
HANDSHAKE_TIMEOUT = 1.0
CALL_DURATION = 2  # s: media.max_call_duration, so the server hangs up (and sends BYE) by itself


class TlsPeer(TcpPeer):
    """One TLS connection with the server; Content-Length framing as over TCP."""

    transport = "TLS"

    def __init__(self, sock: ssl.SSLSocket, port: int | None = None):
        """``port``: the one our Via, From and Contact name (default: the socket's own)."""
        self.sock = sock
        self.port = port or sock.getsockname()[1]
        self.buffer = b""
        self.pongs = 0

    @classmethod
    def connect(cls, server_address: tuple[str, int], context: ssl.SSLContext) -> "TlsPeer":
        raw = socket.create_connection(server_address, timeout=RESPONSE_TIMEOUT)
        try:
            return cls(context.wrap_socket(raw, server_hostname=HOST))
        except BaseException:
            raw.close()
            raise

    def certificate_serial(self) -> int:
        return int(self.sock.getpeercert()["serialNumber"], 16)


class TlsFiles:
    """A CA and the server's certificate chain and key on disk; ``renew`` writes a new pair in place."""

    def __init__(self, directory):
        self.ca = trustme.CA()
        self.chain = directory / "fullchain.pem"
        self.key = directory / "privkey.pem"
        self.renew()

    def renew(self) -> None:
        issued = self.ca.issue_cert(HOST)
        self.chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
        issued.private_key_pem.write_to_path(str(self.key))

    def client(self, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(context)
        if maximum is not None:
            context.maximum_version = maximum
        return context


class TlsServer:
    """``eko-rtp serve`` with TLS, its config file, and where its TLS listener is."""

    def __init__(self, built_cache, directory, files: TlsFiles, *arguments: str, **sip):
        """``arguments``: more for ``eko-rtp serve`` (``--metrics``...); ``sip``: more ``[sip]`` keys."""
        self.files = files
        self.config = directory / "eko.toml"
        self.sip = {"transports": ["udp", "tcp", "tls"], "tls_port": 0, "tls_handshake_timeout": HANDSHAKE_TIMEOUT,
                    "tls_certificate": str(files.chain), "tls_private_key": str(files.key), **sip}
        self.write_config()
        self.process = ServerProcess(built_cache, "--config", str(self.config), *arguments)

    def write_config(self, **sip) -> None:
        values = {**self.sip, **sip}
        lines = ["[sip]", *(f"{key} = {value!r}".replace("'", '"') for key, value in values.items()),
                 "[media]", f"max_call_duration = {CALL_DURATION}"]
        self.config.write_text("\n".join(lines) + "\n")

    def __enter__(self) -> "TlsServer":
        self.process.__enter__()
        port = self.process.wait_for_log(r"listening for SIP on .*TLS (\d+)").group(1)
        self.address = (HOST, int(port))
        return self

    def __exit__(self, *exc_info) -> None:
        alive = self.process.process.poll() is None
        self.process.stop()
        assert alive, f"the server died:\n{self.process.log()}"
        assert "Traceback" not in self.process.log(), self.process.log()

    def peer(self, context: ssl.SSLContext | None = None) -> TlsPeer:
        return TlsPeer.connect(self.address, context or self.files.client())

    def reload(self) -> str:
        """SIGHUP; the log line that says how the reload went."""
        mark = len(self.process.lines)
        self.process.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        while time.monotonic() < deadline:
            for line in self.process.lines[mark:]:
                if "reloaded:" in line or "reload refused" in line:
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no reload line in the log:\n{self.process.log()}")

    def warnings(self, needle: str) -> list[str]:
        return [line for line in self.process.log().splitlines() if needle in line and " WARNING " in line]


@pytest.fixture(scope="module")
def server(built_cache, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    files = TlsFiles(directory)
    trust = directory / "ca.pem"  # the peers the server connects to have certificates from the same CA
    files.ca.cert_pem.write_to_path(str(trust))
    with TlsServer(built_cache, directory, files, tls_trust=str(trust)) as running:
        yield running


def options_over(peer: TlsPeer) -> uac.Message:
    call_id = unique("tls-options")
    peer.send(sip_request("OPTIONS", port=peer.port, transport="TLS", call_id=call_id,
                          uri=f"sip:eko@{HOST};transport=tls"))
    [answer] = collect(peer, final_for(call_id, "OPTIONS"))
    return answer


def test_options_over_tls_is_answered_over_the_same_connection(server):
    with server.peer() as peer:
        answer = options_over(peer)
        assert answer.status == 200
        assert answer.header("via").startswith(f"SIP/2.0/TLS 127.0.0.1:{peer.port};")
        assert peer.sock.version() in ("TLSv1.2", "TLSv1.3")
        assert options_over(peer).status == 200  # the connection stays up for the next one


@pytest.fixture
def rtp_socket():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((HOST, 0))
        yield sock


def invite_over(peer: TlsPeer, rtp_socket, uri: str = f"sip:eko@{HOST};transport=tls"):
    """INVITE, 100 and 200 over ``peer``, then ACK: (the INVITE, the 200)."""
    offer = uac.sdp_offer(address=HOST, rtp_port=rtp_socket.getsockname()[1], session_id=1)
    data = sip_request("INVITE", port=peer.port, transport="TLS", body=offer, uri=uri)
    invite = uac.parse_message_untrusted(data)
    peer.send(data)
    received = collect(peer, final_for(invite.call_id, "INVITE"))
    assert [message.status for message in received] == [100, 200]
    ok = received[-1]
    peer.send(in_dialog("ACK", invite, ok, port=peer.port, transport="TLS", cseq=invite.cseq[0]))
    return invite, ok


def answer_our_bye(peer: TlsPeer, server: TlsServer, invite: uac.Message) -> None:
    """The server's BYE (media.max_call_duration ran out) arrives over ``peer``, says TLS and its TLS port; 200."""
    bye = peer.receive(CALL_DURATION + RESPONSE_TIMEOUT)
    assert bye is not None and not bye.is_response and (bye.method, bye.call_id) == ("BYE", invite.call_id), bye
    assert bye.header("via").startswith(f"SIP/2.0/TLS 127.0.0.1:{server.address[1]};branch=")
    peer.send(uac.response_to(bye, 200, "OK"))
    server.process.wait_for_log(rf"\[call={re.escape(invite.call_id)}\]: ended \(max_duration\)")


def test_a_call_over_tls_gets_a_tls_contact_and_the_servers_bye_on_the_same_connection(server, rtp_socket):
    with server.peer() as peer:
        invite, ok = invite_over(peer, rtp_socket)
        assert ok.header("contact") == f"<sip:eko@127.0.0.1:{server.address[1]};transport=tls>"
        answer_our_bye(peer, server, invite)


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def stamped_recv(sock: socket.socket, size: int) -> tuple[bytes, int]:
    """One read and the kernel's receive stamp (CLOCK_REALTIME ns) of its last segment or datagram."""
    data, ancillary, _, _ = sock.recvmsg(size, socket.CMSG_SPACE(16))
    for level, kind, value in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            return data, seconds * 1_000_000_000 + nanoseconds
    raise AssertionError("the kernel gave no receive stamp")


def test_over_tls_the_first_rtp_packet_follows_the_200_ok_on_the_wire(server, rtp_socket):
    # The 200 OK waits in the connection's writer; frame 0 must wait for it, or a caller
    # gets RTP it cannot place (with SRTP, cannot decrypt: the key is in the 200).
    # TLS is run over memory buffers so that every raw read carries the kernel's stamp.
    raw = socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT)
    raw.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    rtp_socket.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = server.files.client().wrap_bio(incoming, outgoing, server_hostname=HOST)

    def pump(until) -> int:
        """Feed raw reads to TLS until ``until()`` holds; the stamp of the read that made it hold."""
        while True:
            if outgoing.pending:
                raw.sendall(outgoing.read())
            data, stamp = stamped_recv(raw, 65536)
            assert data, "the server closed the connection"
            incoming.write(data)
            if until():
                if outgoing.pending:
                    raw.sendall(outgoing.read())
                return stamp

    def handshaken() -> bool:
        try:
            tls.do_handshake()
            return True
        except ssl.SSLWantReadError:
            return False

    received = bytearray()

    def got_the_200() -> bool:
        """Whether the whole 200 OK (headers and its Content-Length of body) has been decrypted."""
        with contextlib.suppress(ssl.SSLWantReadError):
            while True:
                received.extend(tls.read(65536))
        start = received.find(b"SIP/2.0 200 ")
        end = received.find(b"\r\n\r\n", start)
        if start < 0 or end < 0:
            return False
        length = re.search(rb"\r\n(?:Content-Length|l) *: *(\d+)", bytes(received[start:end]), re.IGNORECASE)
        return length is not None and len(received) - (end + 4) >= int(length.group(1))

    try:
        with contextlib.suppress(ssl.SSLWantReadError):
            tls.do_handshake()
        pump(handshaken)
        port = raw.getsockname()[1]
        offer = uac.sdp_offer(address=HOST, rtp_port=rtp_socket.getsockname()[1], session_id=1)
        tls.write(sip_request("INVITE", port=port, transport="TLS", body=offer,
                              uri=f"sip:eko@{HOST};transport=tls"))
        ok_stamp = pump(got_the_200)
        rtp_socket.settimeout(RESPONSE_TIMEOUT)
        _, rtp_stamp = stamped_recv(rtp_socket, 2048)
    finally:
        raw.close()
    assert ok_stamp < rtp_stamp, f"the first RTP packet came {(ok_stamp - rtp_stamp) / 1e6:.3f} ms before the 200 OK"


def test_with_the_callers_connection_gone_the_bye_goes_over_a_new_verified_tls_connection(server, rtp_socket):
    # The caller listens for TLS where its Contact says (RFC 5923 §4: a new connection
    # when the old one is gone); the server must verify its certificate (sip.tls_trust).
    issued = server.files.ca.issue_cert(HOST)
    listening = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    issued.configure_cert(listening)
    with socket.create_server((HOST, 0)) as listener:
        listener.settimeout(CALL_DURATION + RESPONSE_TIMEOUT)
        contact_port = listener.getsockname()[1]
        with server.peer() as peer:
            peer.port = contact_port  # Via, From and Contact name the listener
            invite, ok = invite_over(peer, rtp_socket)
        raw, _ = listener.accept()
        with TlsPeer(listening.wrap_socket(raw, server_side=True), contact_port) as callee:
            answer_our_bye(callee, server, invite)


def test_a_sips_call_gets_a_sips_contact(server, rtp_socket):
    with server.peer() as peer:
        invite, ok = invite_over(peer, rtp_socket, uri=f"sips:eko@{HOST}")
        assert ok.header("contact") == f"<sips:eko@127.0.0.1:{server.address[1]}>"
        peer.send(in_dialog("BYE", invite, ok, port=peer.port, transport="TLS", cseq=invite.cseq[0] + 1))
        [bye_ok] = [m for m in collect(peer, final_for(invite.call_id, "BYE")) if m.cseq[1] == "BYE"]
        assert bye_ok.status == 200


def test_a_client_that_never_completes_the_handshake_is_closed_at_the_timeout(server):
    with socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT) as silent:
        port = silent.getsockname()[1]
        closed_after = closed_within(silent, HANDSHAKE_TIMEOUT + 3)
    assert closed_after is not None, "a connection with no handshake was still open"
    assert HANDSHAKE_TIMEOUT - 0.2 <= closed_after <= HANDSHAKE_TIMEOUT + 1.0, closed_after
    line = server.process.wait_for_log(rf"SIP TLS from 127\.0\.0\.1:{port}: .*$").group(0)
    assert line.endswith(f": TLS handshake not complete within {HANDSHAKE_TIMEOUT:g} s (sip.tls_handshake_timeout); "
                         "closing the connection"), line


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_a_tls_1_1_client_is_refused(server):
    old = server.files.client(maximum=ssl.TLSVersion.TLSv1_1)
    old.minimum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT) as raw:
        port = raw.getsockname()[1]
        with pytest.raises(ssl.SSLError) as caught:
            old.wrap_socket(raw, server_hostname=HOST)
    if caught.value.reason == "NO_PROTOCOLS_AVAILABLE":
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    # The client learns it from an alert, or from the close when the alert was not flushed first.
    assert caught.value.reason in ("TLSV1_ALERT_PROTOCOL_VERSION", "UNEXPECTED_EOF_WHILE_READING"), caught.value
    # Logged without a traceback (the module's server checks), at most one line per 10 s.
    server.process.wait_for_log(rf"SIP TLS from 127\.0\.0\.1:{port}: TLS handshake failed: unsupported protocol; "
                                "closing the connection")


def test_mutual_tls_refuses_a_client_without_a_certificate_and_serves_one_with(built_cache, tmp_path):
    files = TlsFiles(tmp_path)
    trunk_ca = trustme.CA()
    bundle = tmp_path / "trunk-ca.pem"
    trunk_ca.cert_pem.write_to_path(str(bundle))
    with TlsServer(built_cache, tmp_path, files, tls_client_ca=str(bundle)) as running:
        refused = False
        try:
            with running.peer() as anonymous:  # TLS 1.3: the refusal comes after the client's side is done
                options_over(anonymous)
        except (ssl.SSLError, Closed, ConnectionError, AssertionError):
            refused = True
        assert refused, "a client without a certificate was served"
        running.process.wait_for_log(r"SIP TLS from 127\.0\.0\.1:\d+: TLS handshake failed: peer did not return "
                                     r"a certificate; closing the connection")
        trunk = files.client()
        trunk_ca.issue_cert("trunk.example").configure_cert(trunk)
        with running.peer(trunk) as peer:
            assert options_over(peer).status == 200


def test_sighup_renews_the_certificate_for_new_connections_and_keeps_the_old_ones(built_cache, tmp_path):
    files = TlsFiles(tmp_path)
    with TlsServer(built_cache, tmp_path, files) as running, running.peer() as caller, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rtp:
        rtp.bind((HOST, 0))
        invite, _ = invite_over(caller, rtp)  # a call in progress over the old certificate
        with running.peer() as before:
            first = before.certificate_serial()
            assert options_over(before).status == 200
            files.renew()
            assert running.reload().endswith("calls in progress keep their audio")
            with running.peer() as after:
                assert after.certificate_serial() != first
                assert options_over(after).status == 200
            assert options_over(before).status == 200  # the connection from before still works

            # A broken certificate file: the reload is refused, naming the file and the key...
            good = files.chain.read_bytes()
            files.chain.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
            line = running.reload()
            assert " ERROR " in line and (
                f"reload refused, keeping the running configuration and cache: {files.chain}, key "
                "'sip.tls_certificate': not a PEM certificate chain") in line, line
            # ...and the running certificate serves on, old connections and new.
            with running.peer() as later:
                assert later.certificate_serial() != first
                assert options_over(later).status == 200
            assert options_over(before).status == 200
            files.chain.write_bytes(good)
        # The call went on through both reloads, to its end (media.max_call_duration) and our BYE.
        answer_our_bye(caller, running, invite)


async def test_a_message_for_tls_never_goes_in_the_clear_over_a_tcp_connection_to_that_address(tmp_path):
    # In process: a TCP client is connected; a message for TLS to the very same address
    # must not ride that connection (it dials TLS there instead, which fails here).
    files = TlsFiles(tmp_path)
    received = []
    transport = SipTransport(host=HOST, port=0, transports=["tcp", "tls"], max_message_size=65536,
                             deliver=lambda *message: received.append(message), tls_port=0,
                             tls=ServerTls(TlsSettings(certificate_chain=files.chain, private_key=files.key)))
    with trio.fail_after(RESPONSE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(transport.run)
            assert set(bound) == {"tcp", "tls"} and bound["tls"][1] != bound["tcp"][1]
            client = await trio.open_tcp_stream(*bound["tcp"])
            await client.send_all(b"\r\n\r\n")  # a keepalive: the server now holds the connection
            assert await client.receive_some() == b"\r\n"
            [connection] = transport.connections.values()
            transport.send(b"OPTIONS secret", connection.peer, "tls", None)
            transport.send(b"OPTIONS public", connection.peer, "tcp", None)
            assert await client.receive_some() == b"OPTIONS public"
            await client.aclose()
            nursery.cancel_scope.cancel()


def _read_until_closed(sock: ssl.SSLSocket) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and when it closed; SSLEOFError when without a close_notify."""
    received = b""
    while data := sock.recv(65536):  # suppress_ragged_eofs=False: b"" only after a close_notify
        received += data
    return received, time.monotonic()


async def _closed_by_the_server(tmp_path, *, send: bytes, close: str) -> tuple[bytes, float]:
    """A TLS client of an in-process transport: ``send``, then read until the server closes (``close``:
    ``"idle"``, ``"513"`` or ``"shutdown"``); what it read and after how long."""
    files = TlsFiles(tmp_path)
    limits = TcpLimits(idle_timeout=0.5, header_timeout=5.0, max_connections=8, max_connections_per_source=8)

    def deliver(data, source, transport_name, connection):
        if data.startswith(b"OPTIONS"):  # the head of the message too large: what the SIP core would answer
            transport.send(b"SIP/2.0 513 Message Too Large\r\nContent-Length: 0\r\n\r\n", source, "tls", connection)

    transport = SipTransport(host=HOST, port=0, transports=["tls"], max_message_size=1024, deliver=deliver,
                             tls_port=0, tcp_limits=limits,
                             tls=ServerTls(TlsSettings(certificate_chain=files.chain, private_key=files.key)))
    context = files.client()

    def client(address) -> tuple[bytes, float]:
        raw = socket.create_connection(address, timeout=RESPONSE_TIMEOUT)
        with context.wrap_socket(raw, server_hostname=HOST, suppress_ragged_eofs=False) as sock:
            sock.sendall(send)
            return _read_until_closed(sock)

    with trio.fail_after(RESPONSE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(transport.run)
            if close == "shutdown":
                async def stop_once_connected():
                    while not transport.connections:
                        await trio.sleep(0.01)
                    await trio.sleep(0.2)  # the pong is out
                    nursery.cancel_scope.cancel()
                nursery.start_soon(stop_once_connected)
            started = time.monotonic()
            received, closed_at = await trio.to_thread.run_sync(client, bound["tls"], abandon_on_cancel=False)
            nursery.cancel_scope.cancel()
    return received, closed_at - started


@pytest.mark.parametrize("close", ["idle", "513", "shutdown"])
async def test_a_graceful_close_is_a_clean_tls_shutdown(tmp_path, close):
    # The server sends close_notify before it closes (idle, after a 513, at shutdown): the
    # client sees a clean TLS end (read returns b""), never SSLEOFError, a truncation it could not tell.
    message = sip_request("OPTIONS", port=5061, transport="TLS", body=b"v=0\r\n" * 400,
                          content_type="application/sdp") if close == "513" else b"\r\n\r\n"
    received, after = await _closed_by_the_server(tmp_path, send=message, close=close)
    if close == "513":
        assert received == b"SIP/2.0 513 Message Too Large\r\nContent-Length: 0\r\n\r\n"
        assert after <= CLOSE_LINGER + 1.0  # the rest of the message is read and dropped, then the close
    else:
        assert received == b"\r\n"  # the pong to our keepalive
        if close == "idle":
            assert 0.4 <= after <= 0.5 + 1.0, after
        else:
            assert after < 1.0, after
