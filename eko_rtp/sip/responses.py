"""Building the responses of the UAS (RFC 3261 §8.2.6) and what they say about us.

Theory of operation: a response is addressed by copying the request. §8.2.6.2:
"The From field of the response MUST equal the From header field of the request.
The Call-ID ... MUST equal ... The CSeq ... MUST equal ... The Via header field
values in the response MUST equal the Via header field values in the request and
MUST maintain the same ordering", so those go back as the text that came, except
the top Via, which gets ``received`` (§18.2.1) and ``rport`` (RFC 3581 §4) to tell
the client where its request came from. The To header is copied too, with our tag
added when it had none (§8.2.6.2: "the UAS MUST add a tag to the To header field
in the response (with the exception of the 100 (Trying) response, in which a tag
MAY be present)"; ours has none), and a 100 copies Timestamp (§8.2.6.1). Final
responses name us in Server; a body is SDP.

:func:`build_response` is pure: the user agent hands the bytes to the transaction
and the shell. The capabilities we announce (Allow, Accept, Supported; §11.2, §20)
are constants here, as is the Contact of our 2xx (§12.1.1, with
``transport=`` over a stream so in-dialog requests come back the same way, and a
``sips:`` URI in a dialog a ``sips:`` Request-URI began over TLS, §12.1.1 and RFC 5630 §3.1.3).
"""

from __future__ import annotations

from collections.abc import Iterable

from eko_rtp.sip.headers import Via, split_comma_list
from eko_rtp.sip.message import REASON_PHRASES, Headers, Request, Response
from eko_rtp.sip.session_timer import SessionTimer
from eko_rtp.sip.transaction import Hop
from eko_rtp.sip.uri import format_host_port

__all__ = [
    "METHODS",
    "ALLOW",
    "ACCEPT",
    "SUPPORTED",
    "SUPPORTED_OPTIONS",
    "stamp_via",
    "contact",
    "session_headers",
    "build_response",
]

METHODS = ("INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "UPDATE", "INFO", "NOTIFY")
ALLOW = ", ".join(METHODS)
ACCEPT = "application/sdp, application/dtmf-relay, message/sipfrag"
SUPPORTED = "timer"
SUPPORTED_OPTIONS = frozenset({"timer"})


def stamp_via(via: Via, hop: Hop) -> Via:
    """§18.2.1 received, RFC 3581 §4 rport: tell the client where its request came from.

    RFC 3581 §4 asks for both whatever the transport: over TCP they tell a client
    behind NAT which address and port its connection was seen from.
    """
    source_host, source_port = hop.address
    if via.rport is not False:
        return via.with_parameters((("received", source_host), ("rport", str(source_port))))
    if via.host.strip("[]") != source_host:
        return via.with_parameter("received", source_host)
    return via


def contact(user: str, host: str, port: int, transport: str, *, sips: bool = False) -> str:
    """Our Contact for ``transport``: ``<sip:user@host:port>``, with ``;transport=`` unless UDP.

    ``sips``: ``<sips:user@host:port>``, which means TLS by itself (RFC 5630 §3.2.2
    deprecates ``transport=tls`` beside it).
    """
    if sips:
        return f"<sips:{user}@{format_host_port(host, port)}>"
    uri = f"sip:{user}@{format_host_port(host, port)}"
    if transport != "udp":
        uri += f";transport={transport}"
    return f"<{uri}>"


def session_headers(our_contact: str, timer: SessionTimer | None) -> list[tuple[str, str]]:
    """Headers of a 2xx to INVITE, re-INVITE or UPDATE: Contact, Allow, Supported, session timer."""
    extra = [("Contact", our_contact), ("Allow", ALLOW), ("Supported", SUPPORTED)]
    if timer is not None:
        extra += timer.response_headers()
    return extra


def build_response(request: Request, status: int, *, hop: Hop, server: str, reason: str | None = None,
                   to_tag: str | None = None, extra: Iterable[tuple[str, str]] = (), body: bytes = b"") -> Response:
    """The response to ``request`` received over ``hop`` (§8.2.6).

    ``request.vias`` must hold its top Via and, when ``to_tag`` is given for a
    final response, ``request.to`` must be parsed.

    Only ``extra`` is checked as a new header line would be (its names made canonical,
    a value with CR, LF or NUL refused): what is copied from the request was checked
    when it was parsed, and the rest is ours (``server`` is one line, UserAgentSettings).
    """
    extra_fields = Headers(extra).fields if extra else ()
    headers = request.headers
    top = stamp_via(request.vias[0], hop)
    # The other Vias go back as they came (§8.2.6.2), not as we would write them.
    fields = [("Via", str(top))]
    vias = headers.get_all("Via")
    if len(vias) > 1 or (vias and "," in vias[0]):
        fields += [("Via", via) for via in split_comma_list(vias)[1:]]
    to_value = headers.get("To") or ""
    if to_tag and status != 100 and request.to.tag is None:
        to_value += f";tag={to_tag}"
    fields += [("From", headers.get("From") or ""), ("To", to_value),
               ("Call-ID", headers.get("Call-ID") or ""), ("CSeq", headers.get("CSeq") or "")]
    if status == 100 and "Timestamp" in headers:
        fields.append(("Timestamp", headers.get("Timestamp") or ""))  # §8.2.6.1
    fields += extra_fields
    if status >= 200:
        fields.append(("Server", server))
    if body:
        fields.append(("Content-Type", "application/sdp"))
    return Response(status=status, reason=reason or REASON_PHRASES.get(status, "Unknown"),
                    headers=Headers._checked(tuple(fields)), body=body)
