"""Whether a technician can take this call now, and where to send it.

Theory of operation: when the script wants to hand a caller to a person, the call
asks :func:`decide` with the business hours, the server-wide :class:`LoadWindow` and
two clocks passed in by the shell: the wall clock (``time.time()``) for the hours, a
monotonic clock (``trio.current_time()``) for the load. Each clock serves the
question it is right for: hours are civil time, load is elapsed time. The answer is
a :class:`Decision`:

- CLOSED when no technician is on duty: checked first, and it takes no slot, so a
  caller at 21:00 does not use up the evening's first transfer;
- BUSY when the hours are open but the technicians had their ``limit`` of calls in
  the window;
- TRANSFER otherwise, and the transfer is then counted (``try_take``), so that two
  calls deciding one after the other cannot both take the last slot.

:class:`TransferTargets` holds the SIP URI of each technician queue (``internet``,
``mobile``) and the ``default`` one for a caller whose queue is not known; it is
read from config by :meth:`TransferTargets.from_settings`, which checks each URI
with the SIP parser so a typo fails at startup rather than on the first transfer.
No default target means transfers are not configured: the script never offers one.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs

from eko_rtp.sip.errors import SipParseError
from eko_rtp.sip.uri import parse_uri
from eko_rtp.transfer.hours import BusinessHours
from eko_rtp.transfer.load import LoadWindow

__all__ = ["Decision", "TransferTargets", "decide", "QUEUES"]

QUEUES = ("internet", "mobile")  # the technician queues a caller can be routed to, besides default


class Decision(enum.Enum):
    """What to do with a caller who asked for a technician."""

    TRANSFER = "transfer"  # hand the call over now (a load slot is taken)
    CLOSED = "closed"  # outside business hours: say when they open
    BUSY = "busy"  # open, but the technicians are at their limit: offer to call back


def decide(*, hours: BusinessHours, load: LoadWindow, wall_time: float, now: float) -> Decision:
    """Decide for a transfer at unix time ``wall_time`` and monotonic time ``now``; closed wins over busy."""
    if not hours.is_open(wall_time):
        return Decision.CLOSED
    if not load.try_take(now):
        return Decision.BUSY
    return Decision.TRANSFER


def _check_target(value: object, key: str) -> None:
    """Raise ValueError naming ``key`` unless ``value`` is '' or a sip: or sips: URI."""
    if not isinstance(value, str):
        raise ValueError(f"{key}: expected a sip: or sips: URI, got {type(value).__name__} {value!r}")
    if not value:
        return
    try:
        uri = parse_uri(value, "transfer target")
    except SipParseError as error:
        raise ValueError(f"{key}: {value!r} is not a sip: or sips: URI ({error.reason})") from None
    # A tel: URI parses, but REFER needs somewhere the proxy can route to.
    if uri.scheme not in ("sip", "sips"):
        raise ValueError(f"{key}: {value!r} is not a sip: or sips: URI (a {uri.scheme}: URI has no host)")


def _target_validator(instance: TransferTargets, attribute: attrs.Attribute, value: object) -> None:
    _check_target(value, attribute.name)


@attrs.frozen(kw_only=True)
class TransferTargets:
    """The SIP URI of each technician queue, '' where the queue falls back to ``default``."""

    internet: str = attrs.field(default="", validator=_target_validator)
    mobile: str = attrs.field(default="", validator=_target_validator)
    default: str = attrs.field(default="", validator=_target_validator)

    def __attrs_post_init__(self) -> None:
        if not self.default:
            for queue in QUEUES:
                if getattr(self, queue):
                    raise ValueError(f"default: needed when {queue} is set "
                                     f"(callers whose queue is not known are sent there)")

    @classmethod
    def from_settings(cls, mapping: Mapping[str, str], where: str) -> TransferTargets:
        """Build from a config table of queue name = URI; errors name ``{where}.{queue}``."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"{where}: expected a table of queue = 'sip:...', got {type(mapping).__name__}")
        known = (*QUEUES, "default")
        for queue, value in mapping.items():
            if queue not in known:
                raise ValueError(f"{where}.{queue}: unknown queue {queue!r} (expected {', '.join(known)})")
            _check_target(value, f"{where}.{queue}")
        if not mapping.get("default"):
            for queue in QUEUES:
                if mapping.get(queue):
                    raise ValueError(f"{where}.default: needed when {where}.{queue} is set "
                                     f"(callers whose queue is not known are sent there)")
        return cls(**mapping)

    @property
    def configured(self) -> bool:
        """Whether transfers can be made at all (there is a default target)."""
        return bool(self.default)

    def target_for(self, queue: str | None) -> str:
        """The URI for ``queue``: its own if set, else ``default`` (also for None or an unknown queue).

        Raises LookupError when transfers are not configured: check :attr:`configured`.
        """
        if not self.default:
            raise LookupError("no transfer target is configured")
        if queue in QUEUES:
            return getattr(self, queue) or self.default
        return self.default
