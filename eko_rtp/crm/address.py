"""Where the CRM listens: ``HOST:PORT``, ``[IPv6]:PORT`` or a Unix socket path.

A value containing "/" is a Unix stream socket path (write ``./crm.sock`` for one in
the current directory); anything else must carry a port.
"""

from __future__ import annotations

import attrs

from eko_rtp.errors import UserError


@attrs.frozen(kw_only=True)
class CrmAddress:
    """A TCP endpoint (host and port) or a Unix socket path (``path``)."""

    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.path is None) == (self.host is None):
            raise ValueError("CrmAddress needs either host and port, or path")
        if self.host is not None and (type(self.port) is not int or not 0 <= self.port <= 65535):
            raise ValueError(f"CrmAddress port must be an int in [0, 65535], got {self.port!r}")

    @property
    def is_unix(self) -> bool:
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        if self.host is not None and ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_crm_address(text: str) -> CrmAddress:
    """Parse an address as written in a flag or config; UserError names the bad value."""
    if "/" in text:
        return CrmAddress(path=text)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise UserError(f"CRM address {text!r}: expected [IPv6]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise UserError(f"CRM address {text!r}: expected HOST:PORT, [IPv6]:PORT or a socket path containing '/'")
        if ":" in host:
            raise UserError(f"CRM address {text!r}: write IPv6 hosts in brackets, as [::1]:7070")
    if not host:
        raise UserError(f"CRM address {text!r}: empty host")
    if not port_text.isascii() or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UserError(f"CRM address {text!r}: port {port_text!r} is not a number in 0-65535")
    return CrmAddress(host=host, port=int(port_text))
