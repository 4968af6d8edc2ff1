"""Hand-overs that must reach the CRM: a ticket or a callback, retried within the call's life.

Theory of operation: once the caller has been told "we will call you back", losing
the request quietly would be the worst outcome. :func:`deliver` sends one
:class:`TicketRequest` or :class:`CallbackRequest` and, while the CRM is down
(no connection, no answer in time, a broken stream, or its own internal error),
tries again after a backoff that doubles from ``backoff_initial`` to ``backoff_max``,
until an absolute ``deadline`` on ``trio.current_time()`` (the end of the call's
life, which its owner knows). Retrying is safe because the CRM keeps one ticket and
one callback per ``call_id`` (docs/crm-rpc.md): a retry after a lost answer gets the
first one's id, never a second row.

What is not retried: an "invalid params" or "unknown method" answer, or a reply of
the wrong shape. Asking again would get the same answer; the first is our own bug,
the others a CRM that does not speak this version. Those end at once with an error
line.

Logging is bounded: a failed attempt logs a warning only when its number is a power
of two (1, 2, 4, 8...), so a request retried for ten minutes writes about ten lines,
not three hundred; the client logs each failure at debug level only. Whatever the
end, a request that was not delivered gets exactly one error line naming the call
and what was lost. Every outcome is counted in :class:`FollowupStats`.
"""

from __future__ import annotations

import logging
from typing import Protocol

import attrs
import trio

from eko_rtp.crm.errors import CrmError, CrmRemoteError, CrmTimeout, CrmUnavailable, RpcProtocolError
from eko_rtp.crm.records import CallbackRequest, TicketRequest
from eko_rtp.crm.server import ERROR_INTERNAL
from eko_rtp.service.logs import mask_phone

log = logging.getLogger(__name__)

# One attempt waits at most this long for an answer, so a stalled CRM still leaves
# time for retries before the deadline.
ATTEMPT_TIMEOUT = 2.0

Followup = TicketRequest | CallbackRequest


class FollowupCrm(Protocol):
    """What :func:`deliver` needs of the CRM (:class:`eko_rtp.crm.client.CrmClient` has it)."""

    async def create_ticket(self, request: TicketRequest, timeout: float) -> str: ...

    async def request_callback(self, request: CallbackRequest, timeout: float) -> str: ...


@attrs.define
class FollowupStats:
    """Counters for the metrics; read them, never reset them."""

    requests: int = 0  # calls of deliver()
    attempts: int = 0  # requests sent to the CRM (or tried without a connection)
    failures: int = 0  # attempts that did not deliver
    delivered: int = 0  # requests that got an id
    refused: int = 0  # requests the CRM refused for good (invalid params, unknown method, bad reply)
    gave_up: int = 0  # requests still undelivered at their deadline
    cancelled: int = 0  # requests whose call ended (cancelled) before they were delivered


def _retryable(error: CrmError) -> bool:
    """Whether asking again may succeed: the CRM was unreachable, slow, or failed inside."""
    if isinstance(error, (CrmUnavailable, CrmTimeout, RpcProtocolError)):
        return True
    return isinstance(error, CrmRemoteError) and error.code == ERROR_INTERNAL


def _describe(request: Followup) -> str:
    """What ``request`` asks for, for a log line (the number masked, the caller's words left out)."""
    phone = "an anonymous caller" if request.phone is None else mask_phone(request.phone)
    if isinstance(request, TicketRequest):
        return f"ticket ({request.category}) for call {request.call_id!r} from {phone}"
    when = "when the service opens" if request.not_before is None else f"not before {request.not_before.isoformat()}"
    return f"callback (queue {request.queue}, {when}) for call {request.call_id!r} to {phone}"


async def _attempt(crm: FollowupCrm, request: Followup, timeout: float) -> str:
    if isinstance(request, TicketRequest):
        return await crm.create_ticket(request, timeout)
    return await crm.request_callback(request, timeout)


async def deliver(
    crm: FollowupCrm,
    request: Followup,
    *,
    deadline: float,
    stats: FollowupStats,
    backoff_initial: float = 0.2,
    backoff_max: float = 2.0,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
) -> str | None:
    """Deliver ``request`` to the CRM by ``deadline`` (``trio.current_time()``); its id, or None if lost.

    Retries as the module docstring says. None means the request was refused or not
    delivered in time, and has been logged as an error line and counted. If the
    caller's scope is cancelled first, that is logged and counted too, and
    ``trio.Cancelled`` propagates.
    """
    if not 0 < backoff_initial <= backoff_max:
        raise ValueError(f"backoff must satisfy 0 < backoff_initial <= backoff_max, got {backoff_initial}, {backoff_max}")
    if attempt_timeout <= 0:
        raise ValueError(f"attempt_timeout must be positive, got {attempt_timeout}")
    stats.requests += 1
    delay = backoff_initial
    attempt = 0
    last_error: CrmError | None = None
    try:
        while (remaining := deadline - trio.current_time()) > 0:
            attempt += 1
            stats.attempts += 1
            try:
                created = await _attempt(crm, request, min(attempt_timeout, remaining))
            except CrmError as error:
                stats.failures += 1
                last_error = error
                if not _retryable(error):
                    stats.refused += 1
                    log.error("CRM refused the %s; it is lost: %s", _describe(request), error)
                    return None
                if trio.current_time() + delay >= deadline:
                    break
                if attempt & (attempt - 1) == 0:  # a power of two
                    log.warning("CRM did not take the %s (attempt %d): %s; retrying in %.1f s",
                                _describe(request), attempt, error, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, backoff_max)
                continue
            stats.delivered += 1
            if attempt > 1:
                log.info("CRM took the %s at attempt %d", _describe(request), attempt)
            return created
    except trio.Cancelled:
        stats.cancelled += 1
        log.error("CRM %s not confirmed before the call ended after %d attempts; it may be lost",
                  _describe(request), attempt)
        raise
    stats.gave_up += 1
    log.error("CRM gave up on the %s after %d attempts; it is lost: %s",
              _describe(request), attempt, last_error or "the deadline had passed")
    return None
