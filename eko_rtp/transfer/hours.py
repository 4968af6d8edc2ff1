"""Business hours of the support line: is a technician on duty at this instant, and until when.

Theory of operation: a :class:`BusinessHours` value is a weekly schedule (for each
day, Monday first, a few :class:`OpenSpan` of local wall-clock time) plus a set of
holidays (local dates closed all day), read in one IANA time zone (``Europe/Paris``
by default) through :mod:`zoneinfo`. Time comes in as a unix time argument; this
module never reads the clock, so the trio shell passes ``time.time()`` and the tests
pass instants written as UTC strings.

:meth:`BusinessHours.is_open` turns the unix time into the local civil date and
wall-clock time in that zone and asks whether the date is a working day and the wall
clock is inside one of its spans, each span including its start and excluding its
end. "08:00-20:00" therefore means 08:00 to 20:00 on the clocks of the office,
whatever the UTC offset that day: 07:00 to 19:00 UTC in winter (CET), 06:00 to
18:00 UTC in summer (CEST). "24:00" may end a span: it is the next midnight, so
"20:00-24:00" on Friday and "00:00-02:00" on Saturday form one stretch without a
break.

The two days a year when the wall clock jumps follow from reading the wall clock, and
nothing special is coded for them (Europe/Paris in 2026):

- spring forward, 2026-03-29: the clocks go from 02:00 CET straight to 03:00 CEST,
  so wall times 02:00 to 02:59 never happen. A span starting at 02:30 opens at
  03:00, the first wall time past its start; a span ending at 02:30 closes at 03:00
  for the same reason; a span lying wholly inside the gap (02:00-02:30) is never
  open that day.
- fall back, 2026-10-25: the clocks go from 03:00 CEST back to 02:00 CET, so wall
  times 02:00 to 02:59 happen twice. A span 02:00-02:30 is open during both
  occurrences (00:00-00:30 and 01:00-01:30 UTC). The same reading makes a span
  with an edge inside that hour flap: one ending at 02:30 closes at the first
  02:30 and opens again at the second 02:00 for half an hour; one starting at
  02:30 closes when the clocks go back to 02:00 and opens again at the second
  02:30. We keep the plain reading (the answer is a function of the office
  clock, which an operator can check by looking at it) because the support
  line's hours are far from 02:00-03:00; it is written down so that nobody is
  surprised by a night shift.

:meth:`BusinessHours.next_change` says when :meth:`~BusinessHours.is_open` next gives
the other answer (for "nos conseillers sont disponibles à partir de…" and for a
timer), looking :data:`LOOKAHEAD` ahead. Its value can change only at an instant
where the wall clock reaches a span boundary or midnight (each wall time converted
with both folds, which gives both occurrences in the fall-back hour) or where the
zone changes its UTC offset (the wall clock jumps over or back across a boundary).
It collects those instants, sorted, and returns the first at which the answer
differs: between two of them the answer cannot change. Offset changes are found by
bisection over whole seconds, assuming at most one per day, which holds for every
zone of the tz database in this century.

:func:`french_public_holidays` computes the French public holidays of a year (Easter
by the anonymous Gregorian algorithm); :data:`DEFAULT_WEEKLY`,
:data:`DEFAULT_HOLIDAYS` and :meth:`BusinessHours.default` are the support line's
schedule when the config says nothing.
"""

from __future__ import annotations

import datetime
import math
import re
import types
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence

import attrs

__all__ = [
    "BusinessHours",
    "OpenSpan",
    "DAY_NAMES",
    "DEFAULT_HOLIDAYS",
    "DEFAULT_TIMEZONE",
    "DEFAULT_WEEKLY",
    "LOOKAHEAD",
    "easter_sunday",
    "french_public_holidays",
]

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_DAY_ABBREVIATIONS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
_SECONDS_PER_DAY = 24 * 60 * 60
LOOKAHEAD = 14 * _SECONDS_PER_DAY  # next_change looks this far ahead (seconds), then answers None
DEFAULT_TIMEZONE = "Europe/Paris"

# Only ASCII digits: a \d would also take Arabic-Indic or full-width digits.
_TIME = re.compile(r"([0-9]{2}):([0-9]{2})\Z")
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def _format_minute(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


@attrs.frozen(kw_only=True)
class OpenSpan:
    """Open from ``start`` (included) to ``end`` (excluded), in minutes after local midnight."""

    start: int
    end: int

    def __attrs_post_init__(self) -> None:
        for name, value in (("start", self.start), ("end", self.end)):
            if type(value) is not int:
                raise ValueError(f"an open span's {name} is a whole number of minutes, not {value!r}")
        if not 0 <= self.start < self.end <= MINUTES_PER_DAY:
            raise ValueError(f"an open span needs 0 <= start < end <= {MINUTES_PER_DAY} minutes, "
                             f"not {self.start}-{self.end}")

    def __str__(self) -> str:
        return f"{_format_minute(self.start)}-{_format_minute(self.end)}"


def _zone_named(name: str) -> zoneinfo.ZoneInfo:
    """The zone called ``name``, or ValueError saying what is missing: the name or the tz data."""
    if not isinstance(name, str):
        raise ValueError(f"expected a time zone name like 'Europe/Paris', got {type(name).__name__} {name!r}")
    try:
        return zoneinfo.ZoneInfo(name)
    # ZoneInfoNotFoundError is a KeyError; a malformed key ('../x', '') is a ValueError,
    # and a directory of the database ('Europe') an OSError.
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        pass
    try:
        zoneinfo.ZoneInfo("UTC")
    except zoneinfo.ZoneInfoNotFoundError:
        # Without /usr/share/zoneinfo nor the tzdata package every name is "unknown":
        # say so, or an operator hunts for a typo in 'Europe/Paris'.
        raise ValueError(f"cannot load time zone {name!r}: no time zone data on this machine "
                         f"(install the tzdata package)") from None
    raise ValueError(f"unknown time zone {name!r} (expected an IANA name like 'Europe/Paris')")


def _check_weekly(instance: BusinessHours, attribute: attrs.Attribute, weekly: object) -> None:
    if not isinstance(weekly, tuple) or len(weekly) != len(DAY_NAMES):
        raise ValueError(f"weekly is a tuple of {len(DAY_NAMES)} days of spans, Monday first, not {weekly!r}")
    for day_name, spans in zip(DAY_NAMES, weekly):
        if not isinstance(spans, tuple) or not all(isinstance(span, OpenSpan) for span in spans):
            raise ValueError(f"weekly {day_name} is a tuple of OpenSpan, not {spans!r}")
        for before, after in zip(spans, spans[1:]):
            if after.start < before.end:
                raise ValueError(f"weekly {day_name}: spans {before} and {after} overlap or are out of order")


def _check_holidays(instance: BusinessHours, attribute: attrs.Attribute, holidays: object) -> None:
    if not isinstance(holidays, frozenset):
        raise ValueError(f"holidays is a frozenset of dates, not {holidays!r}")
    for holiday in holidays:
        # A datetime is a date too, but it would never equal the local date looked up.
        if type(holiday) is not datetime.date:
            raise ValueError(f"holidays are dates, not {holiday!r}")


@attrs.frozen(kw_only=True)
class BusinessHours:
    """A weekly schedule and holidays in local wall-clock time of one IANA time zone."""

    weekly: tuple[tuple[OpenSpan, ...], ...] = attrs.field(validator=_check_weekly)
    holidays: frozenset[datetime.date] = attrs.field(default=frozenset(), validator=_check_holidays)
    timezone: str = DEFAULT_TIMEZONE
    # Loaded once here so that a bad name fails when the config is read, not on a call.
    _zone: zoneinfo.ZoneInfo = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_zone", _zone_named(self.timezone))

    @classmethod
    def from_settings(cls, *, weekly: Mapping[str, str], holidays: Sequence[str], timezone: str,
                      where: str) -> BusinessHours:
        """Build from config values, raising ValueError that names the key at fault under ``where``.

        ``weekly`` maps day names ("monday".."sunday") to spans such as
        "08:00-20:00" or "08:30-12:00, 13:30-18:00"; "" or a missing day is closed
        all day. ``holidays`` are local dates "YYYY-MM-DD" (a TOML bare date, which
        parses as a ``datetime.date``, is taken too). Errors name ``{where}.monday``,
        ``{where}.holidays[2]`` or ``{where}.timezone``.
        """
        if not isinstance(weekly, Mapping):
            raise ValueError(f"{where}: expected a table of day name = spans, got {type(weekly).__name__}")
        days: dict[str, tuple[OpenSpan, ...]] = {}
        for day_name, text in weekly.items():
            key = f"{where}.{day_name}"
            if day_name not in DAY_NAMES:
                raise ValueError(f"{key}: unknown day name {day_name!r} (expected {', '.join(DAY_NAMES)})")
            days[day_name] = _parse_spans(text, key)
        try:
            zone_name = _zone_named(timezone).key
        except ValueError as error:
            raise ValueError(f"{where}.timezone: {error}") from None
        return cls(
            weekly=tuple(days.get(day_name, ()) for day_name in DAY_NAMES),
            holidays=_parse_holidays(holidays, f"{where}.holidays"),
            timezone=zone_name,
        )

    @classmethod
    def default(cls) -> BusinessHours:
        """The support line's schedule: :data:`DEFAULT_WEEKLY`, :data:`DEFAULT_HOLIDAYS`, Europe/Paris."""
        return cls.from_settings(weekly=DEFAULT_WEEKLY, holidays=DEFAULT_HOLIDAYS, timezone=DEFAULT_TIMEZONE,
                                 where="transfer.hours")

    def is_open(self, unix_time: float) -> bool:
        """Whether ``unix_time`` falls in an open span of its local date (never on a holiday)."""
        return self._open_at(datetime.datetime.fromtimestamp(unix_time, self._zone))

    def _open_at(self, local: datetime.datetime) -> bool:
        if local.date() in self.holidays:
            return False
        # In seconds, not minutes: 19:59:59.5 is still open, 20:00:00 is not.
        second = local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6
        return any(span.start * 60 <= second < span.end * 60 for span in self.weekly[local.weekday()])

    def next_change(self, unix_time: float) -> float | None:
        """The first unix time after ``unix_time`` when :meth:`is_open` answers otherwise.

        None when the answer stays the same for :data:`LOOKAHEAD` (open around the
        clock, or closed for two weeks).
        """
        currently_open = self.is_open(unix_time)
        for instant in self._candidates(unix_time, unix_time + LOOKAHEAD):
            if self.is_open(instant) != currently_open:
                return instant
        return None

    def _candidates(self, start: float, end: float) -> list[float]:
        """The instants in (start, end] where the answer may change, sorted (see the module docstring)."""
        zone = self._zone
        instants: set[float] = set(self._offset_changes(start, end))
        # From the day before: where an offset change crosses midnight, the local date
        # can step back to a day earlier than the start's.
        day = datetime.datetime.fromtimestamp(start, zone).date() - datetime.timedelta(days=1)
        last_day = datetime.datetime.fromtimestamp(end, zone).date()
        while day <= last_day:
            minutes = {0}  # midnight: a holiday starts or ends there
            if day not in self.holidays:
                minutes.update(minute for span in self.weekly[day.weekday()] for minute in (span.start, span.end))
            # 24:00 is the next day's midnight, which that day adds.
            minutes.discard(MINUTES_PER_DAY)
            for minute in minutes:
                wall = datetime.datetime.combine(day, datetime.time(minute // 60, minute % 60), tzinfo=zone)
                # Both folds: both occurrences of a wall time in the fall-back hour. A wall
                # time in the spring-forward gap gives two instants around the gap, where
                # nothing changes, and the offset change itself is already in the set.
                instants.add(wall.timestamp())
                instants.add(wall.replace(fold=1).timestamp())
            day += datetime.timedelta(days=1)
        return sorted(instant for instant in instants if start < instant <= end)

    def _offset_changes(self, start: float, end: float) -> Iterator[int]:
        """The unix seconds in [start, end] at which the zone takes a new UTC offset."""
        low = math.floor(start)
        stop = math.ceil(end)
        while low < stop:
            high = min(low + _SECONDS_PER_DAY, stop)
            before = self._offset(low)
            if self._offset(high) != before:
                # Bisect for the first second with the new offset (at most one change a day).
                unchanged, changed = low, high
                while changed - unchanged > 1:
                    middle = (unchanged + changed) // 2
                    if self._offset(middle) == before:
                        unchanged = middle
                    else:
                        changed = middle
                yield changed
            low = high

    def _offset(self, unix_second: int) -> datetime.timedelta | None:
        return datetime.datetime.fromtimestamp(unix_second, self._zone).utcoffset()

    def describe(self) -> str:
        """One line for the log: days with the same spans grouped, holidays counted, the zone."""
        parts = []
        first = 0
        for index in range(1, len(DAY_NAMES) + 1):
            if index < len(DAY_NAMES) and self.weekly[index] == self.weekly[first]:
                continue
            last = index - 1
            days = _DAY_ABBREVIATIONS[first] if first == last else \
                f"{_DAY_ABBREVIATIONS[first]}-{_DAY_ABBREVIATIONS[last]}"
            parts.append(f"{days} {', '.join(map(str, self.weekly[first])) or 'closed'}")
            first = index
        if not self.holidays:
            parts.append("no holidays")
        elif len(self.holidays) == 1:
            parts.append(f"1 holiday {min(self.holidays)}")
        else:
            parts.append(f"{len(self.holidays)} holidays {min(self.holidays)}..{max(self.holidays)}")
        return "; ".join(parts) + f" ({self.timezone})"


def _parse_minute(text: str, span_text: str, key: str) -> int:
    match = _TIME.match(text)
    if match:
        hour, minute = int(match[1]), int(match[2])
        if (hour < 24 and minute < 60) or (hour, minute) == (24, 0):
            return hour * 60 + minute
    raise ValueError(f"{key}: bad time {text!r} in span {span_text!r} (expected HH:MM from 00:00 to 24:00)")


def _parse_spans(text: object, key: str) -> tuple[OpenSpan, ...]:
    """Spans like '08:30-12:00, 13:30-18:00', sorted; '' is closed all day."""
    if not isinstance(text, str):
        raise ValueError(f"{key}: expected spans like '08:00-20:00' ('' for closed), "
                         f"got {type(text).__name__} {text!r}")
    if not text.strip():
        return ()
    parsed = []
    for piece in text.split(","):
        piece = piece.strip()
        start_text, dash, end_text = piece.partition("-")
        if not dash or "-" in end_text:
            raise ValueError(f"{key}: bad span {piece!r} (expected HH:MM-HH:MM)")
        start = _parse_minute(start_text.strip(), piece, key)
        end = _parse_minute(end_text.strip(), piece, key)
        if end == start:
            raise ValueError(f"{key}: span {piece!r} is empty")
        if end < start:
            # A night span crossing midnight is two spans, one on each day.
            raise ValueError(f"{key}: span {piece!r} ends before it starts "
                             f"(a span past midnight ends at 24:00 and goes on the next day)")
        parsed.append((OpenSpan(start=start, end=end), piece))
    parsed.sort(key=lambda item: item[0].start)
    for (before, before_text), (after, after_text) in zip(parsed, parsed[1:]):
        if after.start < before.end:
            raise ValueError(f"{key}: spans {before_text!r} and {after_text!r} overlap")
    return tuple(span for span, _ in parsed)


def _parse_holidays(holidays: object, key: str) -> frozenset[datetime.date]:
    # A lone string is a Sequence too: "2026-12-25" would read as ten bad dates.
    if isinstance(holidays, (str, bytes)) or not isinstance(holidays, Sequence):
        raise ValueError(f"{key}: expected a list of 'YYYY-MM-DD' dates, got {type(holidays).__name__} {holidays!r}")
    dates = set()
    for index, item in enumerate(holidays):
        item_key = f"{key}[{index}]"
        if type(item) is datetime.date:  # a TOML bare date: holidays = [2026-12-25]
            dates.add(item)
            continue
        if not isinstance(item, str):
            raise ValueError(f"{item_key}: expected a 'YYYY-MM-DD' date, got {type(item).__name__} {item!r}")
        # The pattern first: date.fromisoformat also takes '20261225' and '2026-W52-5'.
        if not _DATE.match(item):
            raise ValueError(f"{item_key}: bad date {item!r} (expected YYYY-MM-DD)")
        try:
            dates.add(datetime.date.fromisoformat(item))
        except ValueError as error:
            raise ValueError(f"{item_key}: bad date {item!r} ({error})") from None
    return frozenset(dates)


def easter_sunday(year: int) -> datetime.date:
    """Easter Sunday of ``year`` in the Gregorian calendar (the anonymous algorithm, Meeus 1991)."""
    golden = year % 19
    century, year_of_century = divmod(year, 100)
    leap_centuries, century_remainder = divmod(century, 4)
    lunar_correction = (century - (century + 8) // 25 + 1) // 3
    epact = (19 * golden + century - leap_centuries - lunar_correction + 15) % 30
    leap_years, year_remainder = divmod(year_of_century, 4)
    weekday_offset = (32 + 2 * century_remainder + 2 * leap_years - epact - year_remainder) % 7
    correction = (golden + 11 * epact + 22 * weekday_offset) // 451
    month, day = divmod(epact + weekday_offset - 7 * correction + 114, 31)
    return datetime.date(year, month, day + 1)


def french_public_holidays(year: int) -> tuple[datetime.date, ...]:
    """The eleven national public holidays (jours fériés) of France in ``year``, sorted.

    Not the two more of Alsace-Moselle (Good Friday, 26 December), and Whit Monday
    is included though many employers work it as the « journée de solidarité ».
    """
    easter = easter_sunday(year)
    fixed = [datetime.date(year, month, day)
             for month, day in ((1, 1), (5, 1), (5, 8), (7, 14), (8, 15), (11, 1), (11, 11), (12, 25))]
    movable = [easter + datetime.timedelta(days=days) for days in (1, 39, 50)]  # Easter Monday, Ascension, Whit Monday
    return tuple(sorted(fixed + movable))


# The support line's hours when the config says nothing; a MappingProxyType so that no
# caller edits the default of everyone else.
DEFAULT_WEEKLY: Mapping[str, str] = types.MappingProxyType({
    "monday": "08:00-20:00",
    "tuesday": "08:00-20:00",
    "wednesday": "08:00-20:00",
    "thursday": "08:00-20:00",
    "friday": "08:00-20:00",
    "saturday": "09:00-18:00",
    "sunday": "",
})
# 2026: Easter Sunday 5 April, so Easter Monday 6 April, Ascension 14 May, Whit Monday
# 25 May. 2027: Easter Sunday 28 March, so 29 March, 6 May, 17 May. Add 2028 before it
# comes: describe() logs the range of holidays, so a stale list shows at startup.
DEFAULT_HOLIDAYS: tuple[str, ...] = tuple(
    day.isoformat() for year in (2026, 2027) for day in french_public_holidays(year)
)
