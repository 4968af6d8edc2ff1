"""The CRM error family: what went wrong talking to the CRM, and whose fault it was.

Every failure of a CRM call surfaces as a :class:`CrmError` subclass, so the call
path can write one ``except CrmError`` and carry on with the greeting for an
unknown caller. None of these is ever fatal to the server.
"""

from __future__ import annotations


class CrmError(Exception):
    """A CRM call did not produce a usable answer."""


class CrmUnavailable(CrmError):
    """There is no working connection to the CRM (refused, lost, closed mid-message)."""


class CrmTimeout(CrmError):
    """The CRM did not answer before the request's deadline."""


class CrmRemoteError(CrmError):
    """The CRM answered with an error element instead of a result."""

    def __init__(self, message: str, *, code: int | None = None, method: str | None = None):
        self.code = code
        self.method = method
        super().__init__(message)


class CrmReplyError(CrmError):
    """The CRM answered with a well-framed reply of the wrong shape or types."""


class RpcProtocolError(CrmError):
    """The byte stream is not msgpack-RPC (garbage, over a limit, wrong message shape).

    The connection it came from cannot be trusted to stay in sync and must be dropped.
    """
