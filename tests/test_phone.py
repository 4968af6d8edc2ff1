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
