"""One SIP OPTIONS probe over UDP, as the Kamailio front's dispatcher sends them.

A blocking helper for operator commands (rolling-restart), never for the server's
event loop. The request is built and the answer parsed by the SIP core
(:mod:`eko_rtp.sip.message`); this module only moves the bytes. Answers that are
not a final response to our probe (a 100, a stray datagram, garbage) are ignored
until the deadline, so the result is the worker's own word or nothing.
"""

from __future__ import annotations

import secrets
import socket
import time

from eko_rtp.config import HostPort
from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.message import Headers, Request, Response, parse_message_untrusted


def options_request(target: HostPort, local: HostPort, *, call_id: str, branch: str, tag: str) -> Request:
    """An out-of-dialog OPTIONS to ``target`` (RFC 3261 §11.1) sent from ``local``."""
    headers = Headers((
        ("Via", f"SIP/2.0/UDP {local};branch={branch};rport"),
        ("Max-Forwards", "70"),
        ("From", f"<sip:rolling-restart@{local}>;tag={tag}"),
        ("To", f"<sip:{target}>"),
        ("Call-ID", call_id),
        ("CSeq", "1 OPTIONS"),
        ("Accept", "application/sdp"),
    ))
    return Request(method="OPTIONS", uri=f"sip:{target}", headers=headers)


def probe_options(target: HostPort, *, timeout: float = 1.0) -> int | None:
    """The status of the final response to one OPTIONS sent to ``target``, None without one in ``timeout`` s."""
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.bind((target.host, 0))  # the worker answers where it is reached from: the same host
        local = HostPort(host=target.host, port=sock.getsockname()[1])
        call_id = secrets.token_hex(8)
        request = options_request(target, local, call_id=call_id, branch="z9hG4bK" + secrets.token_hex(8),
                                  tag=secrets.token_hex(4))
        try:
            sock.sendto(request.to_bytes(), (target.host, target.port))
        except OSError:
            return None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(65535)
            except (TimeoutError, ConnectionRefusedError):  # refused: nothing listens there (ICMP)
                return None
            try:
                message = parse_message_untrusted(data, transport="udp")
            except SipParseError:
                continue
            if isinstance(message, Response) and message.call_id == call_id and message.status >= 200:
                return message.status
    return None
