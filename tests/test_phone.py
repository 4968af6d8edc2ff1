"""Phone normalisation and masking tables."""

from __future__ import annotations

import pytest

from eko_rtp.crm.phone import normalise_phone


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("06 12 34 56 78", "+33612345678"),
        ("0612345678", "+33612345678"),
        ("+33612345678", "+33612345678"),
        ("0033612345678", "+33612345678"),
        ("+33 6 12 34 56 78", "+33612345678"),
        ("33612345678", "+33612345678"),
        ("+33 (0)6 12 34 56 78", "+33612345678"),
        ("06.12.34.56.78", "+33612345678"),
        ("06-12-34-56-78", "+33612345678"),
        ("(01) 45 67 89 01", "+33145678901"),
        ("tel:+33-6-12-34-56-78", "+33612345678"),
        ("tel:0612345678;phone-context=+33", "+33612345678"),
        ("sip:+33612345678@trunk.example.net", "+33612345678"),
        ("SIP:0612345678@10.0.0.1;user=phone", "+33612345678"),
        ("sips:0033145678901@trunk.example.net", "+33145678901"),
        ("  +33612345678  ", "+33612345678"),
        ("+442079460000", "+442079460000"),
        ("00442079460000", "+442079460000"),
        ("+3225551234", "+3225551234"),
        ("+41446681800", "+41446681800"),
        # No usable number: anonymous, garbage, wrong lengths, ambiguous forms.
        (None, None),
        ("", None),
        ("anonymous", None),
        ("sip:anonymous@anonymous.invalid", None),
        ("Restricted", None),
        ("unavailable", None),
        ("+", None),
        ("*31#0612345678", None),
        ("06123456", None),
        ("061234567890", None),
        ("612345678", None),
        ("0012", None),
        ("+3361234567", None),
        ("+336123456789", None),
        ("+330012345678", None),
        ("+1234567", None),
        ("+1234567890123456", None),
        ("+0612345678", None),
        ("06 12 34 56 7８", None),  # a full-width digit
        ("0612345678x", None),
    ],
)
def test_normalise_phone(raw, expected):
    assert normalise_phone(raw) == expected


def test_normalise_phone_other_default_country():
    assert normalise_phone("02 555 12 34", default_country="BE") == "+3225551234"
    assert normalise_phone("0470 12 34 56", default_country="BE") == "+32470123456"
    assert normalise_phone("044 668 18 00", default_country="CH") == "+41446681800"
    # Bare "33..." is a French trunk habit, not accepted for other countries.
    assert normalise_phone("32470123456", default_country="BE") is None


def test_normalise_phone_unknown_country():
    with pytest.raises(ValueError, match=r"^unsupported default country 'XX' \(known: BE, CH, FR\)$"):
        normalise_phone("0612345678", default_country="XX")


# France's overseas departments (ARCEP numbering plan): the national form, the
# international form and the "+33" a trunk may put in front of the national digits
# are one caller, so one CRM key.
@pytest.mark.parametrize(
    ("national", "international", "expected"),
    [
        ("0692 12 34 56", "+262 692 12 34 56", "+262692123456"),  # Réunion, mobile
        ("0693 12 34 56", "00262693123456", "+262693123456"),  # Réunion, mobile
        ("0262 20 12 34", "+262262201234", "+262262201234"),  # Réunion, fixed
        ("0639 26 27 28", "+262 639 26 27 28", "+262639262728"),  # Mayotte, mobile
        ("0269 61 12 34", "+262 269 61 12 34", "+262269611234"),  # Mayotte, fixed
        ("0690 12 34 56", "+590 690 12 34 56", "+590690123456"),  # Guadeloupe, mobile
        ("0691 12 34 56", "tel:+590691123456", "+590691123456"),  # Guadeloupe, mobile
        ("0590 27 12 34", "+590 (0)590 27 12 34", "+590590271234"),  # Saint-Barthélemy, fixed
        ("0590 87 12 34", "+590590871234", "+590590871234"),  # Saint-Martin, fixed
        ("0696 12 34 56", "+596696123456", "+596696123456"),  # Martinique, mobile
        ("0697 12 34 56", "+596 697 12 34 56", "+596697123456"),  # Martinique, mobile
        ("0596 60 12 34", "00596596601234", "+596596601234"),  # Martinique, fixed
        ("0694 12 34 56", "+594 694 12 34 56", "+594694123456"),  # French Guiana, mobile
        ("0594 30 12 34", "+594594301234", "+594594301234"),  # French Guiana, fixed
        ("0508 41 23 45", "+508 41 23 45", "+508412345"),  # Saint-Pierre-et-Miquelon
    ],
)
def test_overseas_departments_have_one_key_whichever_form(national, international, expected):
    assert normalise_phone(national) == expected
    assert normalise_phone(international) == expected
    assert normalise_phone("+33" + national.replace(" ", "")[1:]) == expected
    assert normalise_phone("sip:" + national.replace(" ", "") + "@trunk.example.net") == expected


@pytest.mark.parametrize(
    "raw",
    ["+262 692 12 34 5", "+262 692 12 34 567", "+262 069 21 23 45", "+508 41 23 4", "+508 41 23 456", "0508 41 23 4"],
)
def test_overseas_numbers_of_the_wrong_length_are_refused(raw):
    assert normalise_phone(raw) is None
