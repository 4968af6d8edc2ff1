"""What the SIP TCP and TLS listeners turn away or cut short, on a real server's /metrics (issue 17).

One ``eko-rtp serve`` with UDP, TCP and TLS, short timeouts and a per-source cap of
two; each peer here does one thing the transport counts (a TLS client served, plain
text on the TLS port, a TLS client that never says hello, a third connection from
one address, a message too large, one without Content-Length, a silent connection),
and the counters must say exactly that, by transport, once the server has synced
them (once a second).
"""

from __future__ import annotations

import re
import socket
import time
import urllib.request

from server_helpers import free_port
from test_server_tcp_limits import SourcedPeer, closed_within
from test_server_torture import RESPONSE_TIMEOUT, collect, final_for, sip_request, unique
from test_sip_tls import HANDSHAKE_TIMEOUT, TlsFiles, TlsServer, options_over

IDLE_TIMEOUT = 1.0
SAMPLE = re.compile(r"^(eko_sip_[a-z_]+)(\{[^}]*\})? (\S+)$", re.MULTILINE)


def scrape(port: int) -> dict[str, float]:
    """Every eko_sip_connections*, TLS handshake and accept sample, keyed by name and labels as exported."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {name + (labels or ""): float(value) for name, labels, value in SAMPLE.findall(text)
            if ("connections" in name or "handshake" in name or "descriptors" in name)
            and not name.endswith("_created")}


def test_every_refusal_and_cut_is_counted_by_transport(built_cache, tmp_path):
    files = TlsFiles(tmp_path)
    metrics_port = free_port()
    with TlsServer(built_cache, tmp_path, files, "--metrics", f"127.0.0.1:{metrics_port}",
                   tcp_idle_timeout=IDLE_TIMEOUT, tcp_max_connections_per_source=2, max_message_size=4096) as server:
        tcp = server.process.address
        with server.peer() as served:  # a TLS client, served
            assert options_over(served).status == 200
            deadline = time.monotonic() + RESPONSE_TIMEOUT
            while scrape(metrics_port)['eko_sip_connections_open{transport="tls"}'] != 1.0:
                assert time.monotonic() < deadline, scrape(metrics_port)
                served.send(b"\r\n\r\n")  # a keepalive: not idle meanwhile
                time.sleep(0.1)
        with socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT) as plain:  # SIP in clear to TLS
            plain.sendall(sip_request("OPTIONS", port=plain.getsockname()[1], transport="TCP"))
            assert closed_within(plain, RESPONSE_TIMEOUT) is not None
        with socket.create_connection(server.address, timeout=RESPONSE_TIMEOUT) as silent:  # never says hello
            assert closed_within(silent, HANDSHAKE_TIMEOUT + 3) is not None
        kept = [SourcedPeer(tcp, "127.0.0.5") for _ in range(2)]
        try:
            with SourcedPeer(tcp, "127.0.0.5") as third:  # over the per-source cap
                assert closed_within(third.sock, RESPONSE_TIMEOUT) is not None
            for peer in kept:  # silent: both cut at the idle timeout
                assert closed_within(peer.sock, IDLE_TIMEOUT + 3) is not None
        finally:
            for peer in kept:
                peer.close()
        with SourcedPeer(tcp, "127.0.0.6") as large:  # answered 513, then closed
            call_id = unique("large")
            large.send(sip_request("OPTIONS", port=large.port, transport="TCP", call_id=call_id,
                                   body=b"v=0\r\n" * 1000, content_type="application/sdp"))
            [answer] = collect(large, final_for(call_id, "OPTIONS"))
            assert answer.status == 513
            assert closed_within(large.sock, RESPONSE_TIMEOUT) is not None
        with SourcedPeer(tcp, "127.0.0.7") as unframeable:
            unframeable.send(b"OPTIONS sip:eko@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.7\r\n\r\n")
            assert closed_within(unframeable.sock, RESPONSE_TIMEOUT) is not None

        expected = {
            'eko_sip_connections_total{outcome="accepted",transport="tcp"}': 4.0,
            'eko_sip_connections_total{outcome="refused_max_connections",transport="tcp"}': 0.0,
            'eko_sip_connections_total{outcome="refused_per_source",transport="tcp"}': 1.0,
            'eko_sip_connections_total{outcome="accepted",transport="tls"}': 3.0,
            'eko_sip_connections_total{outcome="refused_max_connections",transport="tls"}': 0.0,
            'eko_sip_connections_total{outcome="refused_per_source",transport="tls"}': 0.0,
            'eko_sip_connections_closed_total{reason="idle_timeout",transport="tcp"}': 2.0,
            'eko_sip_connections_closed_total{reason="header_timeout",transport="tcp"}': 0.0,
            'eko_sip_connections_closed_total{reason="too_large",transport="tcp"}': 1.0,
            'eko_sip_connections_closed_total{reason="unframeable",transport="tcp"}': 1.0,
            'eko_sip_connections_closed_total{reason="idle_timeout",transport="tls"}': 0.0,
            'eko_sip_connections_closed_total{reason="header_timeout",transport="tls"}': 0.0,
            'eko_sip_connections_closed_total{reason="too_large",transport="tls"}': 0.0,
            'eko_sip_connections_closed_total{reason="unframeable",transport="tls"}': 0.0,
            'eko_sip_tls_handshake_failures_total{reason="failed"}': 1.0,
            'eko_sip_tls_handshake_failures_total{reason="timeout"}': 1.0,
            'eko_sip_accept_out_of_descriptors_total{transport="tcp"}': 0.0,
            'eko_sip_accept_out_of_descriptors_total{transport="tls"}': 0.0,
            'eko_sip_connections_open{transport="tcp"}': 0.0,
            'eko_sip_connections_open{transport="tls"}': 0.0,
        }
        deadline = time.monotonic() + RESPONSE_TIMEOUT
        while (scraped := scrape(metrics_port)) != expected:  # synced once a second
            assert time.monotonic() < deadline, {key: (scraped.get(key), value) for key, value in expected.items()
                                                 if scraped.get(key) != value} or scraped
            time.sleep(0.2)
