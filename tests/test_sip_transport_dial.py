"""One dial per destination: messages sent while a TCP or TLS connection is being opened wait for it (issue 17).

In process, on loopback: the transport's peer is a trio listener of the test's own
that counts the connections it is offered; the messages are sent in one step, before
the dial has even begun, as the SIP core emits a response and a request together.
"""

from __future__ import annotations

import socket

import pytest
import trio
import trustme

from eko_rtp.server.tls import ServerTls, TlsSettings
from eko_rtp.server.transport import MAX_QUEUED_BEHIND_DIAL, SipTransport

HOST = "127.0.0.1"
TIMEOUT = 5.0


@pytest.fixture
def tls_files(tmp_path):
    """A CA, the server's certificate for 127.0.0.1 signed by it, and its certificate as the transport's trust."""
    ca = trustme.CA()
    issued = ca.issue_cert(HOST)
    chain, key, trust = tmp_path / "chain.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(trust))
    return ServerTls(TlsSettings(certificate_chain=chain, private_key=key, trust=trust))


class Peer:
    """A listener on loopback that the transport dials; ``accept`` serves one connection (TLS: handshaken)."""

    def __init__(self, listener: trio.SocketListener, tls: ServerTls | None):
        self.listener = listener
        self.tls = tls
        self.address = listener.socket.getsockname()[:2]

    async def accept(self) -> trio.abc.Stream:
        stream = await self.listener.accept()
        if self.tls is not None:
            stream = self.tls.wrap(stream)
            await stream.do_handshake()
        return stream

    async def no_second_connection(self) -> bool:
        with trio.move_on_after(0.3):
            await self.listener.accept()
            return False
        return True


async def read_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some()
        assert chunk, f"the connection closed after {data!r}"
        data += chunk
    return data


def transport_for(transport: str, tls: ServerTls) -> SipTransport:
    return SipTransport(host=HOST, port=0, transports=["tcp", "tls"], max_message_size=65536,
                        deliver=lambda *message: None, tls=tls, tls_port=0)


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_messages_sent_while_a_dial_is_under_way_share_its_connection(tls_files, transport):
    sip = transport_for(transport, tls_files)
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    peer = Peer(listener, tls_files if transport == "tls" else None)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(sip.run)
            written = [sip.send(f"message {n};".encode(), peer.address, transport, None) for n in range(3)]
            assert not any(event.is_set() for event in written)  # all wait for the one connection
            stream = await peer.accept()
            assert await read_exactly(stream, 3 * len(b"message 0;")) == b"message 0;message 1;message 2;"
            for event in written:
                await event.wait()
            later = sip.send(b"message 3;", peer.address, transport, None)  # the connection is up: it goes there
            assert await read_exactly(stream, len(b"message 3;")) == b"message 3;"
            await later.wait()
            assert await peer.no_second_connection()
            assert [(c.transport, c.peer) for c in sip.connections.values()] == [(transport, peer.address)]
            await stream.aclose()
            nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_beyond_the_bound_messages_waiting_for_a_dial_are_dropped(tls_files):
    sip = transport_for("tcp", tls_files)
    listener = (await trio.open_tcp_listeners(0, host=HOST))[0]
    peer = Peer(listener, None)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(sip.run)
            written = [sip.send(b"%03d;" % n, peer.address, "tcp", None) for n in range(MAX_QUEUED_BEHIND_DIAL + 3)]
            # The first opens the dial, the next ones wait with it up to the bound; the rest are lost at once.
            assert [event.is_set() for event in written] == [False] * MAX_QUEUED_BEHIND_DIAL + [True] * 3
            stream = await peer.accept()
            expected = b"".join(b"%03d;" % n for n in range(MAX_QUEUED_BEHIND_DIAL))
            assert await read_exactly(stream, len(expected)) == expected
            assert await peer.no_second_connection()
            await stream.aclose()
            nursery.cancel_scope.cancel()
    await listener.aclose()


async def test_a_failed_dial_releases_every_message_waiting_for_it(tls_files, caplog):
    with socket.socket() as closed:  # a port nobody listens on: the dial is refused
        closed.bind((HOST, 0))
        destination = closed.getsockname()[:2]
    sip = transport_for("tcp", tls_files)
    with trio.fail_after(TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(sip.run)
            written = [sip.send(b"lost;", destination, "tcp", None) for _ in range(3)]
            for event in written:
                await event.wait()  # whoever waits for one is not left waiting
            assert sip.connections == {}
            again = sip.send(b"retry;", destination, "tcp", None)  # the next message dials anew
            await again.wait()
            nursery.cancel_scope.cancel()
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings[0].startswith(f"SIP TCP connect to {HOST}:{destination[1]} failed: ")
    assert warnings[1] == f"SIP TCP to {HOST}:{destination[1]}: 3 messages dropped with the connection"
    assert warnings[2].startswith(f"SIP TCP connect to {HOST}:{destination[1]} failed: ")
    assert len(warnings) == 3
