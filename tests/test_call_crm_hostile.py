"""A CRM answering with 1,001 bytes of nesting costs the caller nothing (issue 17, defect 1).

The real server's CRM client gets, for every look-up, a list 1001 levels deep (``0x91``
x 1000, then nil). Its description used to raise RecursionError in the client's task,
which ended the server and every call. Now the connection is dropped as a protocol
error, the look-up fails, and the caller hears the standard greeting: the exact bytes
of ``greet.raw``, call after call, while the client reconnects.
"""

from __future__ import annotations

import socket
import threading

from raw_caller import place_call
from server_helpers import ServerProcess

DEEP = b"\x91" * 1000 + b"\xc0"
KNOWN = "0612345678"  # a sample customer: a sane CRM would greet them by their ticket


class DeepCrm:
    """Accepts connections and answers whatever arrives with :data:`DEEP`."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.connections = 0
        self.answered = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                while connection.recv(65536):
                    connection.sendall(DEEP)
                    self.answered += 1
            except OSError:
                pass

    def close(self) -> None:
        self.listener.close()


def audio_of(record, payload_type: int = 0) -> bytes:
    packets = sorted((p for p in record.packets if p.payload_type == payload_type), key=lambda p: p.sequence)
    return b"".join(p.payload for p in packets)


def test_a_crm_answering_deep_nesting_leaves_callers_their_greeting(built_cache):
    greet = (built_cache / "greet.raw").read_bytes()
    crm = DeepCrm()
    try:
        with ServerProcess(built_cache, "--crm", crm.address) as server:
            server.wait_for_log(r"CRM connected")
            for attempt in range(2):
                record = place_call(server.address, hold=1.5, caller=KNOWN)
                assert record.status == 200, server.log()[-3000:]
                heard = audio_of(record)
                assert len(heard) >= 50 * 160, len(heard)  # a second of it at least
                assert heard == greet[: len(heard)]  # the standard greeting, byte for byte
                server.wait_for_log(r"CRM look-up of \+\*+5678: CRM at .* broke the protocol: "
                                    r"message nests deeper than 16 levels")
                assert server.process.poll() is None
            assert crm.answered >= 2
            assert crm.connections >= 2  # each bad answer cost the connection, not the server
    finally:
        crm.close()
