"""Caller numbers: from whatever the SIP trunk sends to E.164, and masked for logs.

Theory of operation: the CRM indexes callers by E.164 ("+33612345678"), while trunks
send the calling number in many spellings: national ("0612345678"), international
with "+" or the "00" prefix, with visual separators, inside a ``tel:`` or ``sip:``
URI, or not at all ("anonymous"). :func:`normalise_phone` maps every spelling of one
number to the same E.164 string and everything else to None, so an unusable number
simply means "unknown caller".

Rules, in order:

1. ``tel:`` / ``sip:`` / ``sips:`` prefixes are dropped, as is anything from ``@``
   (the host part) or ``;`` (URI parameters, RFC 3966 section 3 ``par``).
2. Visual separators are removed: space, ``.``, ``-``, ``(`` and ``)`` (RFC 3966
   section 5.1.1 lists "-", "." and parentheses; spaces appear in display forms).
3. What remains must be digits, optionally after one leading ``+``; anything else
   (``anonymous``, ``restricted``, letters, ``*``, ``#``) gives None.
4. ``+CC...`` and ``00CC...`` are international. ``0`` followed by the national
   significant number is national in the default country.
5. For France, the written form ``+33 (0)6 ...`` (a trunk prefix kept after the
   country code) is accepted and the ``0`` dropped; and ``33`` followed by nine
   digits without ``+`` is taken as international, because French trunks commonly
   send the calling number that way. A bare nine-digit number is ambiguous and
   gives None.
6. E.164 allows at most 15 digits (ITU-T E.164 section 6); fewer than 8 is not a
   subscriber number we can look up. Numbers of a known country must have a
   national significant number of that country's length.
7. France's overseas departments share the national ten-digit plan but not +33
   (ARCEP): 0262/0263 and 0692/0693 are Réunion, 0269 and 0639 Mayotte (+262 both),
   0590 and 0690/0691 Guadeloupe, Saint-Martin and Saint-Barthélemy (+590), 0596
   and 0696/0697 Martinique (+596), 0594 and 0694 French Guiana (+594): the nine
   digits after the 0 follow the department's code. Saint-Pierre-et-Miquelon's
   0508 NN NN NN is +508 NN NN NN. A "+33" in front of those prefixes (a trunk that
   converted the national form blindly) is read the same way, so one caller has
   one key whichever form arrives.
"""

from __future__ import annotations

import attrs

MIN_DIGITS = 8
MAX_DIGITS = 15  # ITU-T E.164: country code + national significant number


@attrs.frozen(kw_only=True)
class NumberingPlan:
    """What we need of one country's numbering plan."""

    country_code: str
    significant_lengths: tuple[int, ...]  # national significant number lengths
    # Whether "CC" + NSN without a "+" is common enough on trunks to accept.
    accept_bare_country_code: bool = False


PLANS: dict[str, NumberingPlan] = {
    "FR": NumberingPlan(country_code="33", significant_lengths=(9,), accept_bare_country_code=True),
    "BE": NumberingPlan(country_code="32", significant_lengths=(8, 9)),
    "CH": NumberingPlan(country_code="41", significant_lengths=(9,)),
}
# France's overseas departments and collectivities (rule 7): recognised in the
# international form, reached from the French national form; not default countries.
OVERSEAS_PLANS: tuple[NumberingPlan, ...] = (
    NumberingPlan(country_code="262", significant_lengths=(9,)),  # Réunion, Mayotte
    NumberingPlan(country_code="590", significant_lengths=(9,)),  # Guadeloupe, Saint-Martin, Saint-Barthélemy
    NumberingPlan(country_code="594", significant_lengths=(9,)),  # French Guiana
    NumberingPlan(country_code="596", significant_lengths=(9,)),  # Martinique
    NumberingPlan(country_code="508", significant_lengths=(6,)),  # Saint-Pierre-et-Miquelon
)

# French national significant numbers (the nine digits after the 0) of the overseas
# departments -> their country code (ARCEP numbering plan). The whole NSN follows it,
# prefix included ("0692 12 34 56" -> "+262 692 12 34 56").
OVERSEAS_PREFIXES: dict[str, str] = {
    "262": "262", "263": "262", "692": "262", "693": "262",  # Réunion
    "269": "262", "639": "262",  # Mayotte
    "590": "590", "690": "590", "691": "590",  # Guadeloupe, Saint-Martin, Saint-Barthélemy
    "594": "594", "694": "594",  # French Guiana
    "596": "596", "696": "596", "697": "596",  # Martinique
}
# Saint-Pierre-et-Miquelon: 0508 NN NN NN nationally, +508 NN NN NN abroad (six digits).
SAINT_PIERRE_PREFIX = "508"

_SEPARATORS = str.maketrans("", "", " .-()\t")
_URI_SCHEMES = ("tel:", "sip:", "sips:")


def _plan(country: str) -> NumberingPlan:
    try:
        return PLANS[country]
    except KeyError:
        raise ValueError(
            f"unsupported default country {country!r} (known: {', '.join(sorted(PLANS))})"
        ) from None


def _plan_for_international(digits: str) -> NumberingPlan | None:
    for plan in (*PLANS.values(), *OVERSEAS_PLANS):
        if digits.startswith(plan.country_code):
            return plan
    return None


def _e164(plan: NumberingPlan, significant: str) -> str:
    """E.164 for a valid national significant number of ``plan``'s country."""
    if plan.country_code == "33":
        if significant[:3] == SAINT_PIERRE_PREFIX:
            return f"+{SAINT_PIERRE_PREFIX}{significant[3:]}"
        overseas = OVERSEAS_PREFIXES.get(significant[:3])
        if overseas is not None:
            return f"+{overseas}{significant}"
    return f"+{plan.country_code}{significant}"


def _international(digits: str) -> str | None:
    """``digits`` is country code + rest; validate and return E.164 or None."""
    plan = _plan_for_international(digits)
    if plan is not None:
        significant = digits[len(plan.country_code):]
        # "+33 (0)6 12 34 56 78": a trunk prefix written after the country code.
        if significant.startswith("0") and len(significant) - 1 in plan.significant_lengths:
            significant = significant[1:]
        if len(significant) not in plan.significant_lengths or significant.startswith("0"):
            return None
        return _e164(plan, significant)
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS or digits.startswith("0"):
        return None
    return f"+{digits}"


def normalise_phone(raw: str | None, default_country: str = "FR") -> str | None:
    """The E.164 form of a calling number, or None when there is no usable number."""
    plan = _plan(default_country)
    if raw is None:
        return None
    text = raw.strip()
    lowered = text.lower()
    for scheme in _URI_SCHEMES:
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            break
    text = text.split("@", 1)[0].split(";", 1)[0]
    text = text.translate(_SEPARATORS)
    plus = text.startswith("+")
    digits = text[1:] if plus else text
    if not digits or not digits.isascii() or not digits.isdigit():
        return None
    if plus:
        return _international(digits)
    if digits.startswith("00"):
        return _international(digits[2:])
    if digits.startswith("0"):
        significant = digits[1:]
        if len(significant) in plan.significant_lengths and not significant.startswith("0"):
            return _e164(plan, significant)
        return None
    if plan.accept_bare_country_code and digits.startswith(plan.country_code):
        significant = digits[len(plan.country_code):]
        if len(significant) in plan.significant_lengths and not significant.startswith("0"):
            return _e164(plan, significant)
    return None

