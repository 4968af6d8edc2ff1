"""Business hours: (schedule, instant as UTC) -> open or not, and when that next changes."""

from __future__ import annotations

import datetime
import zoneinfo

import pytest

from eko_rtp.transfer import hours as hours_module
from eko_rtp.transfer.hours import (
    DEFAULT_HOLIDAYS,
    DEFAULT_WEEKLY,
    LOOKAHEAD,
    BusinessHours,
    OpenSpan,
    easter_sunday,
    french_public_holidays,
)

WHERE = "transfer.hours"


def unix(text: str) -> float:
    """'2026-03-29T07:30:00Z' as a unix time."""
    return datetime.datetime.fromisoformat(text).timestamp()


def utc(unix_time: float) -> str:
    return datetime.datetime.fromtimestamp(unix_time, datetime.timezone.utc).isoformat().replace("+00:00", "Z")


def schedule(holidays=(), timezone="Europe/Paris", **weekly) -> BusinessHours:
    return BusinessHours.from_settings(weekly=weekly, holidays=holidays, timezone=timezone, where=WHERE)


DEFAULT = BusinessHours.default()
DAILY = schedule(**{day: "08:00-20:00" for day in hours_module.DAY_NAMES})
ROUND_THE_CLOCK = schedule(**{day: "00:00-24:00" for day in hours_module.DAY_NAMES})
CHRISTMAS_OFF = schedule(holidays=["2026-12-25"], **{day: "00:00-24:00" for day in hours_module.DAY_NAMES})
GAP_START = schedule(sunday="02:30-04:00")  # starts inside the spring-forward gap of 2026-03-29
GAP_ONLY = schedule(sunday="02:00-02:30")  # wholly inside the gap on 2026-03-29, repeated on 2026-10-25
SPLIT = schedule(monday="08:30-12:00, 13:30-18:00")
UNSORTED_SPLIT = schedule(monday="13:30-18:00,08:30-12:00")
PAST_MIDNIGHT = schedule(friday="20:00-24:00", saturday="00:00-02:00")
FRIDAY_NIGHT = schedule(friday="20:00-24:00")
CLOSED = schedule()

IS_OPEN = [
    # Default schedule, winter (CET, UTC+1): Monday 2026-01-05.
    ("winter Monday 07:59:59 CET", DEFAULT, "2026-01-05T06:59:59Z", False),
    ("winter Monday 08:00 CET opens", DEFAULT, "2026-01-05T07:00:00Z", True),
    ("winter Monday 19:59:59.999 CET", DEFAULT, "2026-01-05T18:59:59.999Z", True),
    ("winter Monday 20:00 CET closes", DEFAULT, "2026-01-05T19:00:00Z", False),
    # Summer (CEST, UTC+2): Wednesday 2026-07-15.
    ("summer Wednesday 07:59 CEST", DEFAULT, "2026-07-15T05:59:00Z", False),
    ("summer Wednesday 08:00 CEST opens", DEFAULT, "2026-07-15T06:00:00Z", True),
    ("summer Wednesday 19:59:59 CEST", DEFAULT, "2026-07-15T17:59:59Z", True),
    ("summer Wednesday 20:00 CEST closes", DEFAULT, "2026-07-15T18:00:00Z", False),
    # Saturday 09:00-18:00, Sunday closed.
    ("Saturday 08:59:59", DEFAULT, "2026-01-10T07:59:59Z", False),
    ("Saturday 09:00 opens", DEFAULT, "2026-01-10T08:00:00Z", True),
    ("Saturday 17:59:59", DEFAULT, "2026-01-10T16:59:59Z", True),
    ("Saturday 18:00 closes", DEFAULT, "2026-01-10T17:00:00Z", False),
    ("Sunday noon", DEFAULT, "2026-01-11T11:00:00Z", False),
    # Holidays, closed all (local) day.
    ("Christmas Eve, a Thursday", DEFAULT, "2026-12-24T10:00:00Z", True),
    ("Christmas, a Friday", DEFAULT, "2026-12-25T10:00:00Z", False),
    ("the Saturday after Christmas", DEFAULT, "2026-12-26T10:00:00Z", True),
    ("Easter Monday 2026", DEFAULT, "2026-04-06T10:00:00Z", False),
    ("the Tuesday after Easter 2026", DEFAULT, "2026-04-07T10:00:00Z", True),
    ("Bastille Day, a Tuesday", DEFAULT, "2026-07-14T10:00:00Z", False),
    ("Ascension 2027, a Thursday", DEFAULT, "2027-05-06T10:00:00Z", False),
    ("a holiday starts at local midnight: 23:59:59 on the 24th", CHRISTMAS_OFF, "2026-12-24T22:59:59Z", True),
    ("a holiday starts at local midnight: 00:00 on the 25th", CHRISTMAS_OFF, "2026-12-24T23:00:00Z", False),
    ("a holiday ends at local midnight: 23:59:59 on the 25th", CHRISTMAS_OFF, "2026-12-25T22:59:59Z", False),
    ("a holiday ends at local midnight: 00:00 on the 26th", CHRISTMAS_OFF, "2026-12-25T23:00:00Z", True),
    # Spring forward, Sunday 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC).
    ("the day before, 07:59:59 CET", DAILY, "2026-03-28T06:59:59Z", False),
    ("the day before, 08:00 CET", DAILY, "2026-03-28T07:00:00Z", True),
    ("spring forward, 07:59:59 CEST", DAILY, "2026-03-29T05:59:59Z", False),
    ("spring forward, 08:00 CEST", DAILY, "2026-03-29T06:00:00Z", True),
    ("spring forward, 09:30 CEST", DAILY, "2026-03-29T07:30:00Z", True),
    ("spring forward, 19:59:59 CEST", DAILY, "2026-03-29T17:59:59Z", True),
    ("spring forward, 20:00 CEST", DAILY, "2026-03-29T18:00:00Z", False),
    ("a span from 02:30 in the gap: 01:59:59 CET", GAP_START, "2026-03-29T00:59:59Z", False),
    ("a span from 02:30 in the gap opens at 03:00 CEST", GAP_START, "2026-03-29T01:00:00Z", True),
    ("a span from 02:30 in the gap: 03:59:59 CEST", GAP_START, "2026-03-29T01:59:59Z", True),
    ("a span from 02:30 in the gap closes at 04:00 CEST", GAP_START, "2026-03-29T02:00:00Z", False),
    ("the same span a week before: 02:29:59 CET", GAP_START, "2026-03-22T01:29:59Z", False),
    ("the same span a week before: 02:30 CET", GAP_START, "2026-03-22T01:30:00Z", True),
    ("a span wholly in the gap: 01:59:59 CET", GAP_ONLY, "2026-03-29T00:59:59Z", False),
    ("a span wholly in the gap: 03:00 CEST", GAP_ONLY, "2026-03-29T01:00:00Z", False),
    # Fall back, Sunday 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC).
    ("the day before, 08:00 CEST", DAILY, "2026-10-24T06:00:00Z", True),
    ("fall back, 07:30 CET", DAILY, "2026-10-25T06:30:00Z", False),
    ("fall back, 07:59:59 CET", DAILY, "2026-10-25T06:59:59Z", False),
    ("fall back, 08:00 CET", DAILY, "2026-10-25T07:00:00Z", True),
    ("fall back, 19:59:59 CET", DAILY, "2026-10-25T18:59:59Z", True),
    ("fall back, 20:00 CET", DAILY, "2026-10-25T19:00:00Z", False),
    ("02:00-02:30 twice: 01:59:59 CEST", GAP_ONLY, "2026-10-24T23:59:59Z", False),
    ("02:00-02:30 twice: first 02:00 CEST", GAP_ONLY, "2026-10-25T00:00:00Z", True),
    ("02:00-02:30 twice: first 02:29:59 CEST", GAP_ONLY, "2026-10-25T00:29:59Z", True),
    ("02:00-02:30 twice: first 02:30 CEST", GAP_ONLY, "2026-10-25T00:30:00Z", False),
    ("02:00-02:30 twice: 02:59:59 CEST", GAP_ONLY, "2026-10-25T00:59:59Z", False),
    ("02:00-02:30 twice: second 02:00 CET", GAP_ONLY, "2026-10-25T01:00:00Z", True),
    ("02:00-02:30 twice: second 02:29:59 CET", GAP_ONLY, "2026-10-25T01:29:59Z", True),
    ("02:00-02:30 twice: second 02:30 CET", GAP_ONLY, "2026-10-25T01:30:00Z", False),
    ("02:30-04:00 on fall back: first 02:30 CEST", GAP_START, "2026-10-25T00:30:00Z", True),
    ("02:30-04:00 on fall back: 02:59:59 CEST", GAP_START, "2026-10-25T00:59:59Z", True),
    ("02:30-04:00 on fall back: second 02:00 CET is before the start", GAP_START, "2026-10-25T01:00:00Z", False),
    ("02:30-04:00 on fall back: second 02:30 CET", GAP_START, "2026-10-25T01:30:00Z", True),
    ("02:30-04:00 on fall back: 04:00 CET", GAP_START, "2026-10-25T03:00:00Z", False),
    # Split spans (a lunch break), given in either order.
    ("split: 08:29:59", SPLIT, "2026-01-05T07:29:59Z", False),
    ("split: 08:30", SPLIT, "2026-01-05T07:30:00Z", True),
    ("split: 11:59:59", SPLIT, "2026-01-05T10:59:59Z", True),
    ("split: 12:00", SPLIT, "2026-01-05T11:00:00Z", False),
    ("split: 13:29:59", SPLIT, "2026-01-05T12:29:59Z", False),
    ("split: 13:30", SPLIT, "2026-01-05T12:30:00Z", True),
    ("split: 17:59:59", SPLIT, "2026-01-05T16:59:59Z", True),
    ("split: 18:00", SPLIT, "2026-01-05T17:00:00Z", False),
    ("split in the other order: 12:00", UNSORTED_SPLIT, "2026-01-05T11:00:00Z", False),
    ("split in the other order: 13:30", UNSORTED_SPLIT, "2026-01-05T12:30:00Z", True),
    # 24:00 ends a span at the next midnight.
    ("Friday 20:00-24:00: 19:59:59", PAST_MIDNIGHT, "2026-01-09T18:59:59Z", False),
    ("Friday 20:00-24:00: 23:59:59", PAST_MIDNIGHT, "2026-01-09T22:59:59Z", True),
    ("then Saturday 00:00-02:00: 00:00", PAST_MIDNIGHT, "2026-01-09T23:00:00Z", True),
    ("then Saturday 00:00-02:00: 01:59:59", PAST_MIDNIGHT, "2026-01-10T00:59:59Z", True),
    ("then Saturday 00:00-02:00: 02:00", PAST_MIDNIGHT, "2026-01-10T01:00:00Z", False),
    ("round the clock", ROUND_THE_CLOCK, "2026-03-29T01:00:00Z", True),
    ("closed every day", CLOSED, "2026-01-05T10:00:00Z", False),
]


@pytest.mark.parametrize("name, hours, instant, expected", IS_OPEN, ids=[case[0] for case in IS_OPEN])
def test_is_open(name, hours, instant, expected):
    assert hours.is_open(unix(instant)) is expected


NEXT_CHANGE = [
    ("open Monday closes at 20:00 CET", DEFAULT, "2026-01-05T10:00:00Z", "2026-01-05T19:00:00Z"),
    ("closed before opening", DEFAULT, "2026-01-05T06:59:59Z", "2026-01-05T07:00:00Z"),
    ("from the closing instant to the next morning", DEFAULT, "2026-01-05T19:00:00Z", "2026-01-06T07:00:00Z"),
    ("Friday evening to Saturday 09:00", DEFAULT, "2026-01-09T19:00:00Z", "2026-01-10T08:00:00Z"),
    ("Saturday evening to Monday 08:00", DEFAULT, "2026-01-10T17:00:00Z", "2026-01-12T07:00:00Z"),
    ("over Christmas to Saturday 09:00", DEFAULT, "2026-12-24T19:00:00Z", "2026-12-26T08:00:00Z"),
    ("over Easter 2026 to Tuesday 08:00 CEST", DEFAULT, "2026-04-04T16:00:00Z", "2026-04-07T06:00:00Z"),
    ("over spring forward: Saturday 18:00 CET to Monday 08:00 CEST", DEFAULT, "2026-03-28T17:00:00Z",
     "2026-03-30T06:00:00Z"),
    ("over fall back: Saturday 18:00 CEST to Monday 08:00 CET", DEFAULT, "2026-10-24T16:00:00Z",
     "2026-10-26T07:00:00Z"),
    ("over Easter 2027, which is spring forward: to Tuesday 08:00 CEST", DEFAULT, "2027-03-27T17:00:00Z",
     "2027-03-30T06:00:00Z"),
    ("from a half second", DEFAULT, "2026-01-05T06:59:59.500Z", "2026-01-05T07:00:00Z"),
    ("a span from 02:30 in the gap opens at 03:00 CEST", GAP_START, "2026-03-29T00:00:00Z", "2026-03-29T01:00:00Z"),
    ("and closes at 04:00 CEST", GAP_START, "2026-03-29T01:00:00Z", "2026-03-29T02:00:00Z"),
    ("a span wholly in the gap: open next Sunday", GAP_ONLY, "2026-03-29T00:00:00Z", "2026-04-05T00:00:00Z"),
    ("fall back: first 02:00 CEST", GAP_ONLY, "2026-10-24T23:00:00Z", "2026-10-25T00:00:00Z"),
    ("fall back: first 02:30 CEST", GAP_ONLY, "2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z"),
    ("fall back: second 02:00 CET", GAP_ONLY, "2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z"),
    ("fall back: second 02:30 CET", GAP_ONLY, "2026-10-25T01:00:00Z", "2026-10-25T01:30:00Z"),
    ("fall back: then next Sunday 02:00 CET", GAP_ONLY, "2026-10-25T01:30:00Z", "2026-11-01T01:00:00Z"),
    ("fall back: 02:30-04:00 pauses at the second 02:00", GAP_START, "2026-10-25T00:30:00Z",
     "2026-10-25T01:00:00Z"),
    ("fall back: 02:30-04:00 resumes at the second 02:30", GAP_START, "2026-10-25T01:00:00Z",
     "2026-10-25T01:30:00Z"),
    ("no break at midnight between 24:00 and 00:00", PAST_MIDNIGHT, "2026-01-09T19:00:00Z",
     "2026-01-10T01:00:00Z"),
    ("24:00 closes at midnight", FRIDAY_NIGHT, "2026-01-09T20:00:00Z", "2026-01-09T23:00:00Z"),
    ("round the clock but Christmas: closes at local midnight", CHRISTMAS_OFF, "2026-12-20T00:00:00Z",
     "2026-12-24T23:00:00Z"),
    ("round the clock but Christmas: opens at local midnight", CHRISTMAS_OFF, "2026-12-24T23:00:00Z",
     "2026-12-25T23:00:00Z"),
    ("round the clock: never", ROUND_THE_CLOCK, "2026-03-28T12:00:00Z", None),
    ("closed every day: never", CLOSED, "2026-03-28T12:00:00Z", None),
    ("exactly 14 days ahead is found", schedule(monday="08:00-20:00", holidays=["2026-01-05", "2026-01-12"]),
     "2026-01-05T07:00:00Z", "2026-01-19T07:00:00Z"),
    ("one second more is too far", schedule(monday="08:00-20:00", holidays=["2026-01-05", "2026-01-12"]),
     "2026-01-05T06:59:59Z", None),
]


@pytest.mark.parametrize("name, hours, instant, expected", NEXT_CHANGE, ids=[case[0] for case in NEXT_CHANGE])
def test_next_change(name, hours, instant, expected):
    change = hours.next_change(unix(instant))
    assert (None if change is None else utc(change)) == expected
    if change is not None:
        assert hours.is_open(change) is not hours.is_open(unix(instant))


@pytest.mark.parametrize("hours", [DEFAULT, GAP_START, GAP_ONLY, PAST_MIDNIGHT, SPLIT],
                         ids=["default", "gap start", "gap only", "past midnight", "split"])
@pytest.mark.parametrize("first_day", ["2026-03-28", "2026-10-24"])
def test_next_change_agrees_with_a_minute_by_minute_walk(hours, first_day):
    # Every boundary and every offset change is on a whole UTC minute here, so walking
    # minute by minute finds every change; next_change must name the first one after
    # each instant (sampled every 17 minutes, seconds off the minute).
    start = unix(f"{first_day}T00:00:00Z")
    minutes = 3 * 24 * 60
    states = [hours.is_open(start + 60 * minute) for minute in range(minutes + 1)]
    changes = [start + 60 * minute for minute in range(1, minutes + 1) if states[minute] != states[minute - 1]]
    for instant in (start + 60 * minute + 7.5 for minute in range(0, minutes - 60, 17)):
        later = [change for change in changes if change > instant]
        if later:
            assert hours.next_change(instant) == later[0], utc(instant)


def test_lookahead_is_fourteen_days():
    assert LOOKAHEAD == 14 * 24 * 3600


ERRORS = [
    ("hour out of range", {"monday": "08:00-25:00"}, [],
     "transfer.hours.monday: bad time '25:00' in span '08:00-25:00' (expected HH:MM from 00:00 to 24:00)"),
    ("minute out of range", {"tuesday": "08:60-20:00"}, [],
     "transfer.hours.tuesday: bad time '08:60' in span '08:60-20:00' (expected HH:MM from 00:00 to 24:00)"),
    ("one-digit hour", {"monday": "8:00-20:00"}, [],
     "transfer.hours.monday: bad time '8:00' in span '8:00-20:00' (expected HH:MM from 00:00 to 24:00)"),
    ("past 24:00", {"friday": "20:00-24:01"}, [],
     "transfer.hours.friday: bad time '24:01' in span '20:00-24:01' (expected HH:MM from 00:00 to 24:00)"),
    ("no end", {"monday": "08:00"}, [],
     "transfer.hours.monday: bad span '08:00' (expected HH:MM-HH:MM)"),
    ("three times", {"monday": "08:00-12:00-14:00"}, [],
     "transfer.hours.monday: bad span '08:00-12:00-14:00' (expected HH:MM-HH:MM)"),
    ("trailing comma", {"monday": "08:00-12:00,"}, [],
     "transfer.hours.monday: bad span '' (expected HH:MM-HH:MM)"),
    ("end before start", {"monday": "20:00-08:00"}, [],
     "transfer.hours.monday: span '20:00-08:00' ends before it starts "
     "(a span past midnight ends at 24:00 and goes on the next day)"),
    ("empty span", {"monday": "08:00-08:00"}, [],
     "transfer.hours.monday: span '08:00-08:00' is empty"),
    ("overlapping spans", {"wednesday": "08:00-12:00, 11:00-14:00"}, [],
     "transfer.hours.wednesday: spans '08:00-12:00' and '11:00-14:00' overlap"),
    ("overlapping spans in the other order", {"wednesday": "11:00-14:00, 08:00-12:00"}, [],
     "transfer.hours.wednesday: spans '08:00-12:00' and '11:00-14:00' overlap"),
    ("unknown day name", {"mondy": "08:00-20:00"}, [],
     "transfer.hours.mondy: unknown day name 'mondy' "
     "(expected monday, tuesday, wednesday, thursday, friday, saturday, sunday)"),
    ("capitalised day name", {"Monday": "08:00-20:00"}, [],
     "transfer.hours.Monday: unknown day name 'Monday' "
     "(expected monday, tuesday, wednesday, thursday, friday, saturday, sunday)"),
    ("not a string", {"monday": 8}, [],
     "transfer.hours.monday: expected spans like '08:00-20:00' ('' for closed), got int 8"),
    ("impossible holiday", {}, ["2026-01-01", "2026-05-01", "2026-02-30"],
     "transfer.hours.holidays[2]: bad date '2026-02-30' (day is out of range for month)"),
    ("holiday without zeros", {}, ["2026-1-1"],
     "transfer.hours.holidays[0]: bad date '2026-1-1' (expected YYYY-MM-DD)"),
    ("holiday in basic ISO form", {}, ["20261225"],
     "transfer.hours.holidays[0]: bad date '20261225' (expected YYYY-MM-DD)"),
    ("holiday as a number", {}, [20261225],
     "transfer.hours.holidays[0]: expected a 'YYYY-MM-DD' date, got int 20261225"),
    ("holidays as one string", {}, "2026-12-25",
     "transfer.hours.holidays: expected a list of 'YYYY-MM-DD' dates, got str '2026-12-25'"),
]


@pytest.mark.parametrize("name, weekly, holidays, message", ERRORS, ids=[case[0] for case in ERRORS])
def test_from_settings_errors(name, weekly, holidays, message):
    with pytest.raises(ValueError) as raised:
        BusinessHours.from_settings(weekly=weekly, holidays=holidays, timezone="Europe/Paris", where=WHERE)
    assert str(raised.value) == message


@pytest.mark.parametrize("timezone", ["Europe/Pariss", "europe/paris", "Europe", "../etc/passwd", ""])
def test_unknown_time_zone(timezone):
    with pytest.raises(ValueError) as raised:
        BusinessHours.from_settings(weekly={}, holidays=[], timezone=timezone, where=WHERE)
    assert str(raised.value) == (f"transfer.hours.timezone: unknown time zone {timezone!r} "
                                 f"(expected an IANA name like 'Europe/Paris')")


def test_missing_time_zone_data_is_named(monkeypatch):
    # A machine without /usr/share/zoneinfo nor the tzdata package: the message must
    # not send the operator hunting for a typo in 'Europe/Paris'.
    def no_data(key):
        raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {key}")

    monkeypatch.setattr(hours_module.zoneinfo, "ZoneInfo", no_data)
    with pytest.raises(ValueError) as raised:
        BusinessHours.from_settings(weekly={}, holidays=[], timezone="Europe/Paris", where=WHERE)
    assert str(raised.value) == ("transfer.hours.timezone: cannot load time zone 'Europe/Paris': "
                                 "no time zone data on this machine (install the tzdata package)")


def test_from_settings_builds_the_value():
    hours = BusinessHours.from_settings(
        weekly={"monday": " 08:30 - 12:00 ,13:30-18:00 ", "saturday": "09:00-18:00", "sunday": ""},
        # A TOML bare date (holidays = [2026-12-25]) arrives as a datetime.date.
        holidays=["2026-05-01", datetime.date(2026, 12, 25), "2026-05-01"],
        timezone="America/Martinique",
        where=WHERE,
    )
    split = (OpenSpan(start=510, end=720), OpenSpan(start=810, end=1080))
    assert hours == BusinessHours(
        weekly=(split, (), (), (), (), (OpenSpan(start=540, end=1080),), ()),
        holidays=frozenset({datetime.date(2026, 5, 1), datetime.date(2026, 12, 25)}),
        timezone="America/Martinique",
    )
    # Martinique is UTC-4 all year: 08:30 there is 12:30 UTC.
    assert hours.is_open(unix("2026-01-05T12:29:59Z")) is False
    assert hours.is_open(unix("2026-01-05T12:30:00Z")) is True


@pytest.mark.parametrize("arguments, message", [
    ({"weekly": ((),) * 6}, "weekly is a tuple of 7 days of spans, Monday first, not ((), (), (), (), (), ())"),
    ({"weekly": ((OpenSpan(start=600, end=720), OpenSpan(start=480, end=660)),) + ((),) * 6},
     "weekly monday: spans 10:00-12:00 and 08:00-11:00 overlap or are out of order"),
    ({"weekly": ((),) * 7, "holidays": frozenset({datetime.datetime(2026, 12, 25)})},
     "holidays are dates, not datetime.datetime(2026, 12, 25, 0, 0)"),
    ({"weekly": ((),) * 7, "timezone": "Mars/Olympus_Mons"},
     "unknown time zone 'Mars/Olympus_Mons' (expected an IANA name like 'Europe/Paris')"),
])
def test_constructor_validates(arguments, message):
    with pytest.raises(ValueError) as raised:
        BusinessHours(**arguments)
    assert str(raised.value) == message


@pytest.mark.parametrize("start, end, message", [
    (600, 600, "an open span needs 0 <= start < end <= 1440 minutes, not 600-600"),
    (-1, 60, "an open span needs 0 <= start < end <= 1440 minutes, not -1-60"),
    (0, 1441, "an open span needs 0 <= start < end <= 1440 minutes, not 0-1441"),
    (0.5, 60, "an open span's start is a whole number of minutes, not 0.5"),
])
def test_open_span_validates(start, end, message):
    with pytest.raises(ValueError) as raised:
        OpenSpan(start=start, end=end)
    assert str(raised.value) == message


@pytest.mark.parametrize("hours, line", [
    (DEFAULT, "mon-fri 08:00-20:00; sat 09:00-18:00; sun closed; 22 holidays 2026-01-01..2027-12-25 (Europe/Paris)"),
    (SPLIT, "mon 08:30-12:00, 13:30-18:00; tue-sun closed; no holidays (Europe/Paris)"),
    (CHRISTMAS_OFF, "mon-sun 00:00-24:00; 1 holiday 2026-12-25 (Europe/Paris)"),
    (PAST_MIDNIGHT, "mon-thu closed; fri 20:00-24:00; sat 00:00-02:00; sun closed; no holidays (Europe/Paris)"),
])
def test_describe(hours, line):
    assert hours.describe() == line


def test_default_schedule():
    assert dict(DEFAULT_WEEKLY) == {
        "monday": "08:00-20:00", "tuesday": "08:00-20:00", "wednesday": "08:00-20:00",
        "thursday": "08:00-20:00", "friday": "08:00-20:00", "saturday": "09:00-18:00", "sunday": "",
    }
    assert DEFAULT.timezone == "Europe/Paris"
    with pytest.raises(TypeError):
        DEFAULT_WEEKLY["sunday"] = "10:00-12:00"  # type: ignore[index]


def test_default_holidays():
    fixed = ["01-01", "05-01", "05-08", "07-14", "08-15", "11-01", "11-11", "12-25"]
    # Easter Sunday 2026-04-05: Easter Monday +1, Ascension +39, Whit Monday +50.
    movable_2026 = ["2026-04-06", "2026-05-14", "2026-05-25"]
    # Easter Sunday 2027-03-28.
    movable_2027 = ["2027-03-29", "2027-05-06", "2027-05-17"]
    assert DEFAULT_HOLIDAYS == tuple(sorted(
        [f"2026-{day}" for day in fixed] + movable_2026 + [f"2027-{day}" for day in fixed] + movable_2027
    ))
    assert DEFAULT.holidays == frozenset(datetime.date.fromisoformat(day) for day in DEFAULT_HOLIDAYS)
    # Ascension is a Thursday, Easter and Whit Monday Mondays.
    assert [datetime.date.fromisoformat(day).strftime("%A") for day in movable_2026 + movable_2027] == \
        ["Monday", "Thursday", "Monday"] * 2


@pytest.mark.parametrize("year, easter", [
    (1818, "1818-03-22"),  # the earliest possible date
    (1943, "1943-04-25"),  # the latest possible date
    (2019, "2019-04-21"),
    (2024, "2024-03-31"),
    (2025, "2025-04-20"),
    (2026, "2026-04-05"),
    (2027, "2027-03-28"),
    (2038, "2038-04-25"),
    (2285, "2285-03-22"),
])
def test_easter_sunday(year, easter):
    assert easter_sunday(year).isoformat() == easter


def test_french_public_holidays_of_2028():
    # Easter Sunday 2028 is 16 April.
    assert [day.isoformat() for day in french_public_holidays(2028)] == [
        "2028-01-01", "2028-04-17", "2028-05-01", "2028-05-08", "2028-05-25", "2028-06-05",
        "2028-07-14", "2028-08-15", "2028-11-01", "2028-11-11", "2028-12-25",
    ]
