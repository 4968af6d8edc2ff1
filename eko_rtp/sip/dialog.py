"""The dialog a UAS shares with its caller (RFC 3261 §12).

Theory of operation: the 2xx to an initial INVITE creates a dialog identified by the
Call-ID, our tag (local, the To tag we chose) and the caller's From tag (remote),
taken from the typed fields of the parsed INVITE (``message.py``).
From the INVITE it takes the remote target (the Contact URI) and the route set (the
Record-Route URIs in order, §12.1.1). Requests we send inside it (BYE, UPDATE,
re-INVITE) take the next local CSeq and are routed by §12.2.1.1: loose routing puts
the remote target in the Request-URI and the route set in Route headers; a strict
router first in the set (no ``lr``) gets the Request-URI itself, and the remote
target goes last in Route. A target refresh (re-INVITE, UPDATE, §12.2.2) replaces
the remote target with the new Contact.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.headers import NameAddr, Via, parse_name_addr_list
from eko_rtp.sip.message import Headers, Request
from eko_rtp.sip.uri import Uri

__all__ = ["Dialog"]


@attrs.define(kw_only=True)
class Dialog:
    """Dialog state on the UAS side; ``build_request`` makes the next in-dialog request."""

    call_id: str
    local_tag: str
    remote_tag: str | None
    local_address: NameAddr
    remote_address: NameAddr
    remote_target: Uri
    route_set: tuple[NameAddr, ...] = ()
    local_cseq: int = attrs.field(validator=[attrs.validators.ge(0), attrs.validators.lt(2**31)])
    remote_cseq: int = 0

    @classmethod
    def from_invite(cls, request: Request, *, local_tag: str, local_cseq: int) -> "Dialog":
        """The dialog our 2xx to the parsed ``request`` establishes (§12.1.1)."""
        headers = request.headers
        contacts = parse_name_addr_list(headers.get_all("Contact"), "Contact")
        if len(contacts) != 1:
            raise SipParseError(400, f"an INVITE needs exactly one Contact, not {len(contacts)}")
        return cls(
            call_id=request.call_id,
            local_tag=local_tag,
            remote_tag=request.from_.tag,
            local_address=attrs.evolve(request.to, parameters=()).with_tag(local_tag),
            remote_address=request.from_,
            remote_target=contacts[0].uri,
            route_set=tuple(parse_name_addr_list(headers.get_all("Record-Route"), "Record-Route")),
            local_cseq=local_cseq,
            remote_cseq=request.cseq.number,
        )

    def matches(self, request: Request) -> bool:
        """Whether an in-dialog request belongs here: its From tag is the remote tag (§12.2.2)."""
        return request.from_.tag == self.remote_tag

    def refresh_target(self, request: Request) -> None:
        """A target refresh request (re-INVITE, UPDATE) replaces the remote target (§12.2.2)."""
        contacts = parse_name_addr_list(request.headers.get_all("Contact"), "Contact")
        if len(contacts) == 1:
            self.remote_target = contacts[0].uri

    def record_route_values(self) -> list[str]:
        """The route set as Record-Route values, to copy into our 2xx (§12.1.1)."""
        return [str(address) for address in self.route_set]

    def next_hop(self) -> Uri:
        """The URI whose host and port a request is sent to (§8.1.2): first route or target."""
        return self.route_set[0].uri if self.route_set else self.remote_target

    def build_request(
        self,
        method: str,
        *,
        via: Via,
        extra_headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        max_forwards: int = 70,
    ) -> Request:
        """The next in-dialog request: new CSeq, routed per §12.2.1.1, with ``via`` on top."""
        self.local_cseq += 1
        if not self.route_set:
            request_uri, routes = self.remote_target, []
        elif self.route_set[0].uri.loose_route:
            request_uri, routes = self.remote_target, [str(route) for route in self.route_set]
        else:
            # Strict routing: the first route becomes the Request-URI, stripped of the
            # parameters a Request-URI may not carry, and the target goes last.
            first = self.route_set[0].uri
            request_uri = attrs.evolve(first, parameters=tuple(
                item for item in first.parameters if item[0].lower() not in ("method", "ttl", "maddr", "lr")
            ), headers=())
            routes = [str(route) for route in self.route_set[1:]] + [f"<{self.remote_target}>"]
        fields = [("Via", str(via)), ("Max-Forwards", str(max_forwards))]
        fields += [("Route", route) for route in routes]
        fields += [
            ("From", str(self.local_address)),
            ("To", str(self.remote_address)),
            ("Call-ID", self.call_id),
            ("CSeq", f"{self.local_cseq} {method}"),
        ]
        fields += list(extra_headers)
        return Request(method=method, uri=str(request_uri), headers=Headers(fields), body=body)
