"""SDES (RFC 4568) core: parsing offered a=crypto values, answering, offering, redacting."""

from __future__ import annotations

import base64

import pytest

from eko_rtp.media import sdes
from eko_rtp.media.sdes import (
    DEFAULT_PREFERENCE,
    CryptoAnswer,
    CryptoAttribute,
    CryptoSuite,
    Mki,
    SdesError,
    SrtpKeys,
    accept_answer_untrusted,
    choose_answer,
    format_crypto,
    make_offer,
    parse_crypto_untrusted,
    redact_keys,
)

CM80 = CryptoSuite.AES_CM_128_HMAC_SHA1_80
CM32 = CryptoSuite.AES_CM_128_HMAC_SHA1_32
GCM = CryptoSuite.AEAD_AES_128_GCM

# RFC 4568 §4's example key (30 octets), and 28 octets (100..127) for the AEAD suite.
KEY_30 = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"
KEY_28 = "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+fw=="
# What the counting key source below gives: bytes 0, 1, 2, ...
OUR_30 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd"
OUR_28 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGw=="


def counting(length: int) -> bytes:
    return bytes(range(length))


def test_the_suites_have_the_rfc_sizes():
    assert [(suite.key_length, suite.salt_length, suite.rtp_tag_length, suite.rtcp_tag_length) for suite in CryptoSuite] == [
        (16, 14, 10, 10),  # RFC 4568 §6.2.1
        (16, 14, 4, 10),  # §6.2.2: the SRTCP tag stays 80 bits
        (16, 12, 16, 16),  # RFC 7714 §12, §14.2
    ]


PARSED = [
    (
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}",
        dict(tag=1, suite=CM80, lifetime=None, mki=None, window_size_hint=None, optional_parameters=()),
    ),
    (
        # RFC 4568 §4's example: a lifetime and an MKI after the key.
        f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^20|1:4",
        dict(tag=1, suite=CM80, lifetime=1 << 20, mki=Mki(value=1, length=4), window_size_hint=None,
             optional_parameters=()),
    ),
    (
        f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}|1066",
        dict(tag=2, suite=CM32, lifetime=1066, mki=None, window_size_hint=None, optional_parameters=()),
    ),
    (
        f"3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|7:1",
        dict(tag=3, suite=CM80, lifetime=None, mki=Mki(value=7, length=1), window_size_hint=None,
             optional_parameters=()),
    ),
    (
        f"7 AEAD_AES_128_GCM inline:{KEY_28}",
        dict(tag=7, suite=GCM, lifetime=None, mki=None, window_size_hint=None, optional_parameters=()),
    ),
    (
        # The padding dropped, as some stacks write it; INLINE in capitals (ABNF literals).
        f"7 AEAD_AES_128_GCM INLINE:{KEY_28.rstrip('=')}",
        dict(tag=7, suite=GCM, lifetime=None, mki=None, window_size_hint=None, optional_parameters=()),
    ),
    (
        f"  4 AES_CM_128_HMAC_SHA1_80   inline:{KEY_30}  WSH=256 FEC_ORDER=FEC_SRTP -X_VENDOR=1 ",
        dict(tag=4, suite=CM80, lifetime=None, mki=None, window_size_hint=256, optional_parameters=("-X_VENDOR=1",)),
    ),
    (
        f"999999999 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}",
        dict(tag=999999999, suite=CM80, lifetime=None, mki=None, window_size_hint=None, optional_parameters=()),
    ),
]


@pytest.mark.parametrize("value, fields", PARSED, ids=[value.split()[0] + "-" + str(i) for i, (value, _) in enumerate(PARSED)])
def test_parse_accepts(value, fields):
    attribute = parse_crypto_untrusted(value)
    assert {name: getattr(attribute, name) for name in fields} == fields
    assert len(attribute.master) == attribute.suite.master_length


def test_the_parsed_key_is_the_decoded_inline_value():
    assert parse_crypto_untrusted(f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}").master == base64.b64decode(KEY_30)
    assert parse_crypto_untrusted(f"7 AEAD_AES_128_GCM inline:{KEY_28}").master == bytes(range(100, 128))


REFUSED = [
    ("", "crypto attribute '' is not <tag> <crypto-suite> <key-params>"),
    ("1 AES_CM_128_HMAC_SHA1_80", "crypto attribute '1 AES_CM_128_HMAC_SHA1_80' is not <tag> <crypto-suite> <key-params>"),
    (f"x AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", "crypto attribute tag 'x' is not 1 to 9 digits"),
    (f"1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", "crypto attribute tag '1234567890' is not 1 to 9 digits"),
    (f"1 F8_128_HMAC_SHA1_80 inline:{KEY_30}", "tag 1: crypto suite 'F8_128_HMAC_SHA1_80' is not supported"),
    (f"1 AEAD_AES_256_GCM inline:{KEY_28}", "tag 1: crypto suite 'AEAD_AES_256_GCM' is not supported"),
    (f"1 AES-CM inline:{KEY_30}", "tag 1: crypto suite 'AES-CM' is not a suite name"),
    ("1 AES_CM_128_HMAC_SHA1_80 mikey:AQAFgM0XflABAAAAAAAAAAAAAAsAyONQ6gAAAAAJAAAAAAAAAAA",
     "tag 1: key method 'mikey' is not supported (only inline:)"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^20|1:4;inline:{KEY_30}|2^20|2:4",
     "tag 1: 2 master keys in one attribute (switched by MKI) are not supported"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + ";inline:".join([KEY_30] * 20),
     "tag 1: more than 16 master keys in one attribute (switched by MKI) are not supported"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_28}",
     "tag 1: AES_CM_128_HMAC_SHA1_80 needs 30 octets of key and salt (16 + 14), the inline key has 28"),
    (f"1 AEAD_AES_128_GCM inline:{KEY_30}",
     "tag 1: AEAD_AES_128_GCM needs 28 octets of key and salt (16 + 12), the inline key has 30"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGV*", "tag 1: the inline key is not base64"),
    ("1 AES_CM_128_HMAC_SHA1_80 inline:" + "A" * 129, "tag 1: the inline key is 129 characters long, more than 128"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^20|1:4|x", "tag 1: an inline key has at most a lifetime and an MKI after it"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^x", "tag 1: key lifetime '2^x' is not a number or 2^number"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^65", "tag 1: key lifetime '2^65' exceeds 2^64"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|0", "tag 1: a key lifetime of 0 packets protects nothing"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|1:4|2^20", "tag 1: a key lifetime must come once, before the MKI"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|1:4|2:4", "tag 1: the inline key has two MKIs"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|1:0", "tag 1: MKI length 0 is outside 1..128 octets"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|1:129", "tag 1: MKI length 129 is outside 1..128 octets"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|256:1", "tag 1: MKI value 256 does not fit in 1 octet(s)"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|" + "9" * 400 + ":2", "tag 1: MKI value does not fit in 2 octet(s)"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|a:1", "tag 1: MKI 'a:1' is not <value>:<length>"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} KDR=20", "tag 1: session parameter KDR is not supported"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} UNENCRYPTED_SRTP", "tag 1: session parameter UNENCRYPTED_SRTP is not supported"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} UNENCRYPTED_SRTCP", "tag 1: session parameter UNENCRYPTED_SRTCP is not supported"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} UNAUTHENTICATED_SRTP",
     "tag 1: session parameter UNAUTHENTICATED_SRTP is not supported"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} WSH=32", "tag 1: window size hint 'WSH=32' is not a number of at least 64"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} SOMETHING_NEW", "tag 1: unknown session parameter 'SOMETHING_NEW'"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} " + " ".join(["-X"] * 17), "tag 1: more than 16 session parameters"),
    (f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} " + "-X" * 600, "crypto attribute of 1274 characters exceeds the 1024-character limit"),
]


@pytest.mark.parametrize("value, message", REFUSED, ids=[message[:40] for _, message in REFUSED])
def test_parse_refuses(value, message):
    with pytest.raises(SdesError) as caught:
        parse_crypto_untrusted(value)
    assert str(caught.value) == message
    assert caught.value.status == 488


def test_parse_refuses_what_is_not_text():
    with pytest.raises(SdesError, match="must be text, not bytes"):
        parse_crypto_untrusted(b"1 AES_CM_128_HMAC_SHA1_80 inline:x")


ANSWERS = [
    # (offered values, preference, expected answer line, our suite's received key)
    (
        [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"],
        DEFAULT_PREFERENCE,
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}",
    ),
    (
        # The offer's order is AES-CM first, ours AEAD first: our preference wins.
        [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", f"2 AEAD_AES_128_GCM inline:{KEY_28}"],
        DEFAULT_PREFERENCE,
        f"a=crypto:2 AEAD_AES_128_GCM inline:{OUR_28}",
    ),
    (
        [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", f"2 AEAD_AES_128_GCM inline:{KEY_28}"],
        (CM80,),
        f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}",
    ),
    (
        # Two lines of the suite we want: the offerer's first of them.
        [f"5 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}", f"9 AES_CM_128_HMAC_SHA1_32 inline:{OUR_30}"],
        DEFAULT_PREFERENCE,
        f"a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{OUR_30}",
    ),
    (
        # The usual trunk offer: 80 then 32, with a lifetime; and a refused F8 line first.
        [f"1 F8_128_HMAC_SHA1_80 inline:{KEY_30}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^31",
         f"3 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}|2^31"],
        DEFAULT_PREFERENCE,
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}",
    ),
    (
        # Several keys on the preferred line: that line is skipped, the next one taken.
        [f"1 AEAD_AES_128_GCM inline:{KEY_28}|1:1;inline:{KEY_28}|2:1", f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|1:1"],
        DEFAULT_PREFERENCE,
        f"a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}",
    ),
]


@pytest.mark.parametrize("offers, preference, line", ANSWERS, ids=[str(i) for i in range(len(ANSWERS))])
def test_choose_answer(offers, preference, line):
    answer = choose_answer(offers, preference=preference, rng=counting)
    assert answer.line == line
    assert answer.attribute_value == line.removeprefix("a=crypto:")
    assert answer.keys.send_master == bytes(range(answer.keys.suite.master_length))
    assert answer.keys.receive_master == answer.offered.master


def test_the_answer_carries_what_srtp_needs():
    answer = choose_answer([f"3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^31|1:4 WSH=512"], rng=counting)
    assert answer.tag == 3
    assert answer.keys == SrtpKeys(
        suite=CM80,
        send_master=bytes(range(30)),
        receive_master=base64.b64decode(KEY_30),
        receive_mki=Mki(value=1, length=4),
        replay_window=512,
    )


@pytest.mark.parametrize("hint, window", [(None, 128), (64, 128), (4096, 4096), (100000, 0x7FFF)])
def test_the_replay_window_follows_the_hint_within_libsrtp_bounds(hint, window):
    value = f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}" + (f" WSH={hint}" if hint else "")
    assert choose_answer([value], rng=counting).keys.replay_window == window


NO_ANSWER = [
    ([], "no offered crypto suite is supported: the offer has no a=crypto attribute"),
    (
        [f"1 F8_128_HMAC_SHA1_80 inline:{KEY_30}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30} KDR=10"],
        "no offered crypto suite is supported: tag 1: crypto suite 'F8_128_HMAC_SHA1_80' is not supported; "
        "tag 2: session parameter KDR is not supported",
    ),
    (
        [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", f"1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}"],
        "no offered crypto suite is supported: tag 1: offered twice",
    ),
]


@pytest.mark.parametrize("offers, message", NO_ANSWER, ids=["none", "unsupported", "duplicate tags"])
def test_choose_answer_refuses_with_488(offers, message):
    with pytest.raises(SdesError) as caught:
        choose_answer(offers, rng=counting)
    assert str(caught.value) == message
    assert caught.value.status == 488


def test_a_suite_left_out_of_our_preference_is_refused():
    with pytest.raises(SdesError) as caught:
        choose_answer([f"1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}"], preference=(GCM, CM80), rng=counting)
    assert str(caught.value) == (
        "no offered crypto suite is supported: tag 1: crypto suite AES_CM_128_HMAC_SHA1_32 is not in our preference")


def test_a_reinvite_that_keeps_the_crypto_line_keeps_the_answer():
    offer = [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}", f"2 AES_CM_128_HMAC_SHA1_32 inline:{KEY_30}"]
    first = choose_answer(offer, rng=counting)
    again = choose_answer(offer, rng=lambda n: b"\xee" * n, previous=first)
    assert again is first
    # Rekeyed by the offerer: a fresh key of ours too.
    rekeyed = choose_answer([f"1 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}"], rng=lambda n: b"\xee" * n, previous=first)
    assert rekeyed.keys.send_master == b"\xee" * 30
    assert rekeyed.keys.receive_master == bytes(range(30))


def test_the_default_key_source_is_fresh_each_time():
    offer = [f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"]
    keys = {choose_answer(offer).keys.send_master for _ in range(4)}
    assert len(keys) == 4
    assert all(len(key) == 30 for key in keys)


def test_a_key_source_of_the_wrong_length_is_a_bug():
    with pytest.raises(ValueError, match="instead of 30 octets"):
        choose_answer([f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"], rng=lambda n: b"short")


@pytest.mark.parametrize("preference, message", [
    ((), "must name at least one suite"),
    ((CM80, CM80), "names a suite twice"),
    (("AES_CM_128_HMAC_SHA1_80",), "is not a CryptoSuite"),
])
def test_a_bad_preference_is_a_bug(preference, message):
    with pytest.raises(ValueError, match=message):
        choose_answer([], preference=preference)


def test_an_unsupported_suite_is_never_offered_nor_accepted(monkeypatch):
    # The capability constant: what media/srtp.py cannot run does not exist here.
    monkeypatch.setattr(sdes, "SUPPORTED_SUITES", frozenset({CM80, CM32}))
    with pytest.raises(ValueError, match="AEAD_AES_128_GCM is not supported by the SRTP backend"):
        make_offer(rng=counting)
    with pytest.raises(SdesError, match="crypto suite 'AEAD_AES_128_GCM' is not supported"):
        parse_crypto_untrusted(f"1 AEAD_AES_128_GCM inline:{KEY_28}")
    answer = choose_answer([f"1 AEAD_AES_128_GCM inline:{KEY_28}", f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"],
                           preference=(CM80, CM32), rng=counting)
    assert answer.tag == 2


def test_format_crypto():
    assert format_crypto(tag=1, suite=CM80, master=bytes(range(30))) == f"1 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}"
    assert format_crypto(tag=12, suite=GCM, master=bytes(range(28))) == f"12 AEAD_AES_128_GCM inline:{OUR_28}"
    with pytest.raises(ValueError, match="needs 28 octets"):
        format_crypto(tag=1, suite=GCM, master=bytes(30))
    with pytest.raises(ValueError, match="tag must be"):
        format_crypto(tag=10**9, suite=CM80, master=bytes(30))


def test_our_lines_parse_back():
    for suite in CryptoSuite:
        value = format_crypto(tag=4, suite=suite, master=bytes(range(suite.master_length)))
        attribute = parse_crypto_untrusted(value)
        assert (attribute.tag, attribute.suite, attribute.master) == (4, suite, bytes(range(suite.master_length)))


def test_make_offer_and_accept_the_answer():
    keys = iter([b"\x01" * 28, b"\x02" * 30, b"\x03" * 30])
    offer = make_offer(rng=lambda n: next(keys))
    assert offer.lines == (
        "a=crypto:1 AEAD_AES_128_GCM inline:" + base64.b64encode(b"\x01" * 28).decode(),
        "a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:" + base64.b64encode(b"\x02" * 30).decode(),
        "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:" + base64.b64encode(b"\x03" * 30).decode(),
    )
    keys = accept_answer_untrusted(offer, [f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^31|3:1"])
    assert keys == SrtpKeys(suite=CM80, send_master=b"\x02" * 30, receive_master=base64.b64decode(KEY_30),
                            receive_mki=Mki(value=3, length=1))


@pytest.mark.parametrize("answers, message", [
    ([], "the answer must carry exactly one a=crypto attribute, it has 0"),
    ([f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"] * 2, "the answer must carry exactly one a=crypto attribute, it has 2"),
    ([f"9 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"], "tag 9: the answer's tag is not one we offered"),
    ([f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"], "tag 1: the answer chose AES_CM_128_HMAC_SHA1_80, we offered AEAD_AES_128_GCM"),
    ([f"2 AES_CM_128_HMAC_SHA1_80 inline:{KEY_28}"],
     "tag 2: AES_CM_128_HMAC_SHA1_80 needs 30 octets of key and salt (16 + 14), the inline key has 28"),
])
def test_accept_answer_refuses(answers, message):
    offer = make_offer(rng=counting)
    with pytest.raises(SdesError) as caught:
        accept_answer_untrusted(offer, answers)
    assert str(caught.value) == message


def test_an_answer_reusing_our_key_is_refused():
    # The peer echoing our own key back would make both directions share a keystream.
    offer = make_offer(preference=(CM80,), rng=counting)
    with pytest.raises(ValueError, match="must differ"):
        accept_answer_untrusted(offer, [f"1 AES_CM_128_HMAC_SHA1_80 inline:{OUR_30}"])


def test_keys_never_show_in_repr():
    answer = choose_answer([f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"], rng=counting)
    text = repr(answer) + repr(answer.keys) + repr(answer.offered) + repr(make_offer(rng=counting))
    for secret in (KEY_30, OUR_30, repr(bytes(range(30))), repr(base64.b64decode(KEY_30))):
        assert secret not in text


def test_redact_keys():
    body = (f"m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}|2^20|1:4\r\n"
            f"a=crypto:2 AEAD_AES_128_GCM INLINE:{KEY_28}\r\n")
    expected = ("m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:[redacted]|2^20|1:4\r\n"
                "a=crypto:2 AEAD_AES_128_GCM INLINE:[redacted]\r\n")
    assert redact_keys(body) == expected
    assert redact_keys(body.encode()) == expected.encode()


def test_values_validate():
    with pytest.raises(ValueError, match="must be 30 octets"):
        CryptoAttribute(tag=1, suite=CM80, master=bytes(28))
    with pytest.raises(ValueError, match="0..999999999"):
        CryptoAttribute(tag=-1, suite=CM80, master=bytes(30))
    with pytest.raises(ValueError, match="does not fit"):
        Mki(value=256, length=1)
    with pytest.raises(ValueError, match="replay_window"):
        SrtpKeys(suite=CM80, send_master=bytes(30), receive_master=b"\x01" * 30, replay_window=32)
    with pytest.raises(ValueError, match="unique"):
        sdes.CryptoOffer(attributes=(CryptoAttribute(tag=1, suite=CM80, master=bytes(30)),) * 2)
    with pytest.raises(ValueError, match="never write"):
        CryptoAttribute(tag=1, suite=CM80, master=bytes(30), lifetime=5).to_value()
    assert isinstance(choose_answer([f"1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_30}"], rng=counting), CryptoAnswer)


def test_the_sdes_core_does_no_io():
    # Like tests/test_core_purity.py (which should list media/sdes.py among its cores).
    import ast
    from pathlib import Path

    tree = ast.parse(Path(sdes.__file__).read_text(encoding="utf-8"))
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {node.module.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.module and node.level == 0}
    assert roots & {"trio", "socket", "asyncio", "select", "pylibsrtp"} == set()
