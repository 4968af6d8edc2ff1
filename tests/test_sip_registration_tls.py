"""Registration over TLS (``registration.transport = "tls"``) against a registrar of our own (issue 19).

The registrar is Python's ``ssl`` on loopback in a thread, its certificate from a
throwaway ``trustme`` CA that the server trusts through ``sip.tls_trust``: the server
dials it, verifies it, and registers over that connection; the registrar grants a
short binding, so the refresh comes within seconds, over the same connection.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time

import trustme

from eko_bench import uac
from server_helpers import ServerProcess
from test_server_torture import Closed
from test_sip_tls import HOST, TlsFiles, TlsPeer

GRANTED = 4  # s: the binding the registrar grants; the server refreshes it about 2 s later


class TlsRegistrar:
    """Answers every REGISTER 200 with a ``GRANTED`` s binding; notes each with its connection and TLS version."""

    def __init__(self, ca: trustme.CA):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert(HOST).configure_cert(self.context)
        self.listener = socket.create_server((HOST, 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.registers: list[tuple[int, str, uac.Message]] = []  # (connection number, TLS version, REGISTER)
        self.connections = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except socket.timeout:
                continue
            self.connections += 1
            thread = threading.Thread(target=self._serve, args=(raw, self.connections), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, raw: socket.socket, number: int) -> None:
        raw.settimeout(5)
        try:
            with self.context.wrap_socket(raw, server_side=True) as sock, TlsPeer(sock) as peer:
                while not self._stop.is_set():
                    message = peer.receive(0.2)
                    if message is None or message.method != "REGISTER":
                        continue
                    self.registers.append((number, sock.version(), message))
                    peer.send(ok(message))
        except (Closed, OSError):
            return

    def wait_for(self, count: int, timeout: float, log) -> list[tuple[int, str, uac.Message]]:
        """The first ``count`` REGISTERs, once they came; ``log()``: the server's, should they not."""
        deadline = time.monotonic() + timeout
        while len(self.registers) < count:
            assert time.monotonic() < deadline, f"{len(self.registers)} REGISTER(s) after {timeout} s:\n{log()}"
            time.sleep(0.05)
        return self.registers[:count]

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        self.listener.close()


def binding(register: uac.Message) -> str:
    """The REGISTER's Contact, ``<uri>``, without the ``;expires=`` it asks for."""
    contact = register.header("contact")
    return contact[:contact.index(">") + 1]


def ok(register: uac.Message) -> bytes:
    """200 OK to a REGISTER (RFC 3261 §10.3): the binding back, granted for GRANTED seconds."""
    lines = ["SIP/2.0 200 OK"]
    lines += [f"Via: {via}" for via in register.all_headers("via")]
    lines += [f"From: {register.header('from')}", f"To: {register.header('to')};tag=registrar",
              f"Call-ID: {register.call_id}", f"CSeq: {register.header('cseq')}",
              f"Contact: {binding(register)};expires={GRANTED}", "Content-Length: 0", "", ""]
    return "\r\n".join(lines).encode()


def test_the_server_registers_over_tls_with_a_tls_contact_and_refreshes(built_cache, tmp_path):
    files = TlsFiles(tmp_path)
    trust = tmp_path / "ca.pem"
    files.ca.cert_pem.write_to_path(str(trust))
    registrar = TlsRegistrar(files.ca)
    config = tmp_path / "eko.toml"
    config.write_text(
        '[sip]\ntransports = ["udp", "tcp", "tls"]\ntls_port = 0\n'
        f'tls_certificate = "{files.chain}"\ntls_private_key = "{files.key}"\ntls_trust = "{trust}"\n'
        f'[registration]\nregistrar = "sip:{HOST}:{registrar.port}"\naor = "sip:0123456789@{HOST}"\n'
        'transport = "tls"\nexpires = 60\n', encoding="utf-8")
    try:
        with ServerProcess(built_cache, "--config", str(config)) as server:
            tls_port = int(server.wait_for_log(r"listening for SIP on .*TLS (\d+)").group(1))
            (first_connection, version, first), (again_connection, _, refresh) = registrar.wait_for(
                2, 2 * GRANTED, server.log)
            server.wait_for_log(rf"registration: registered to sip:{HOST}:{registrar.port} \(expires in {GRANTED} s\)")
    finally:
        registrar.close()
    assert version in ("TLSv1.2", "TLSv1.3")
    assert first_connection == again_connection == 1  # the refresh reuses the connection (RFC 5923)
    assert first.request_uri == f"sip:{HOST}:{registrar.port}"
    assert first.header("via").startswith(f"SIP/2.0/TLS {HOST}:{tls_port};")
    assert first.header("contact") == f"<sip:eko@{HOST}:{tls_port};transport=tls>;expires=60"
    assert (refresh.call_id, refresh.header("contact")) == (first.call_id, first.header("contact"))
    assert refresh.cseq[0] == first.cseq[0] + 1
