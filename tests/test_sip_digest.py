"""Digest authentication as a UAC: (challenge header values, request) -> exact header tables.

The expected responses of the RFC examples are the ones printed in RFC 7616 §3.9.1 and
RFC 2617 §3.5; the SIP cases were computed independently with hashlib.
"""

from __future__ import annotations

import pytest

from eko_rtp.sip.digest import (
    Challenge,
    DigestClient,
    DigestCredentials,
    DigestError,
    parse_challenges_untrusted,
)

MUFASA = DigestCredentials(username="Mufasa", password="Circle of Life")
BOB = DigestCredentials(username="bob", password="zanzibar")
ALICE = DigestCredentials(username="alice", password="wonderland")

RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"


def rfc7616_challenge(algorithm: str) -> str:
    return (f'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')


def client(credentials: DigestCredentials, *cnonces: str) -> DigestClient:
    supply = iter(cnonces)
    return DigestClient(credentials, cnonce=lambda: next(supply))


def challenge(**fields) -> Challenge:
    return Challenge(**{"realm": "r", "nonce": "n", "algorithm": "MD5", "qop": ("auth",), "opaque": None,
                        "stale": False, "userhash": False, "proxy": False, **fields})


@pytest.mark.parametrize("algorithm, response", [
    # RFC 7616 §3.9.1, both the MD5 and the SHA-256 answer.
    ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
])
def test_rfc7616_example(algorithm, response):
    challenges = parse_challenges_untrusted([rfc7616_challenge(algorithm)], proxy=False)
    assert challenges == [Challenge(realm="http-auth@example.org", nonce=RFC7616_NONCE, algorithm=algorithm,
                                    qop=("auth", "auth-int"), opaque=RFC7616_OPAQUE, stale=False,
                                    userhash=False, proxy=False)]
    answer = client(MUFASA, RFC7616_CNONCE).answer(challenges, method="GET", uri="/dir/index.html")
    assert answer == ("Authorization", (
        f'Digest username="Mufasa", realm="http-auth@example.org", nonce="{RFC7616_NONCE}", '
        f'uri="/dir/index.html", response="{response}", algorithm={algorithm}, cnonce="{RFC7616_CNONCE}", '
        f'opaque="{RFC7616_OPAQUE}", qop=auth, nc=00000001'))


def test_rfc2617_example():
    value = ('Digest realm="testrealm@host.com", qop="auth,auth-int", '
             'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    challenges = parse_challenges_untrusted([value], proxy=False)
    credentials = DigestCredentials(username="Mufasa", password="Circle Of Life")
    answer = client(credentials, "0a4f113b").answer(challenges, method="GET", uri="/dir/index.html")
    assert answer == ("Authorization", (
        'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'uri="/dir/index.html", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, '
        'cnonce="0a4f113b", opaque="5ccc069c403ebaf9f0171e9517f40e41", qop=auth, nc=00000001'))


@pytest.mark.parametrize("credentials, values, proxy, method, uri, expected", [
    # A REGISTER challenged as in RFC 3261 §22.4: empty opaque goes back, stale=FALSE is false.
    (BOB, ['Digest realm="atlanta.com", domain="sip:boxesbybob.com", qop="auth", '
           'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=FALSE, algorithm=MD5'],
     False, "REGISTER", "sip:atlanta.com",
     ("Authorization", 'Digest username="bob", realm="atlanta.com", nonce="f84f1cec41e6cbe5aea9c8e88d359", '
                       'uri="sip:atlanta.com", response="94cfddb011de8a10a73d58632f0bf960", algorithm=MD5, '
                       'cnonce="0a4f113b", opaque="", qop=auth, nc=00000001')),
    # A REFER through a proxy (407) asking for SHA-256-sess and a hashed username (RFC 7616 §3.4.4).
    (ALICE, ['Digest realm="biloxi.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", qop="auth", '
             'algorithm=SHA-256-sess, userhash=true'],
     True, "REFER", "sip:bob@biloxi.com",
     ("Proxy-Authorization",
      'Digest username="7773f6fa30ec8486a4e0815ab13dd10d67b5c823945eb40ee1477c365f38fcaa", realm="biloxi.com", '
      'nonce="ea9c8e88df84f1cec4341ae6cbe5a359", uri="sip:bob@biloxi.com", '
      'response="5cc13a9851d616f4af893d4b22e2b3e21c0c604afff5c95f85cc5d1a8432bc96", algorithm=SHA-256-sess, '
      'cnonce="c0ffee42", qop=auth, nc=00000001, userhash=true')),
    # An old registrar without qop: the RFC 2069 answer, no cnonce and no nc.
    (BOB, ['Digest realm="example.net", nonce="5f3c2a"'], False, "REGISTER", "sip:example.net",
     ("Authorization", 'Digest username="bob", realm="example.net", nonce="5f3c2a", uri="sip:example.net", '
                       'response="5307afbc430201b9b812129259efe840", algorithm=MD5')),
])
def test_sip_answers(credentials, values, proxy, method, uri, expected):
    challenges = parse_challenges_untrusted(values, proxy=proxy)
    cnonce = "c0ffee42" if proxy else "0a4f113b"
    assert client(credentials, cnonce).answer(challenges, method=method, uri=uri) == expected


@pytest.mark.parametrize("values, expected", [
    ([], []),
    # Several challenges in one value, among other schemes; scheme and names are case-insensitive.
    (['Digest realm="a", nonce="1", Basic realm="b", DIGEST Realm="c", NONCE="2", algorithm=sha-256'],
     [challenge(realm="a", nonce="1", qop=()), challenge(realm="c", nonce="2", algorithm="SHA-256", qop=())]),
    # Commas and escaped quotes inside quoted strings.
    (['Digest realm="a, b", nonce="x,y", qop="auth,auth-int", opaque="say \\"hi\\" \\\\o/"'],
     [challenge(realm="a, b", nonce="x,y", qop=("auth", "auth-int"), opaque='say "hi" \\o/')]),
    # A token68 scheme, a bare scheme, and unknown parameters are skipped.
    (['Negotiate abc==', 'Kerberos, Digest realm="r", nonce="n", qop=AUTH, charset=UTF-8, future="x"'],
     [challenge()]),
    # An algorithm we do not implement still parses; answer() skips it. Flags are case-insensitive.
    (['Digest realm="r", nonce="n", algorithm="SHA-512-256", stale=TRUE, userhash=True, qop="auth"'],
     [challenge(algorithm="SHA-512-256", stale=True, userhash=True)]),
])
def test_parse(values, expected):
    assert parse_challenges_untrusted(values, proxy=False) == expected


def test_parse_marks_proxy_challenges():
    assert parse_challenges_untrusted(['Digest realm="r", nonce="n", qop="auth"'], proxy=True) == [
        challenge(proxy=True)]


@pytest.mark.parametrize("values, message", [
    (['Digest nonce="n"'], "Digest challenge without realm in WWW-Authenticate"),
    (['Digest realm="r"'], "Digest challenge without nonce in WWW-Authenticate"),
    (['Digest realm="r", nonce=""'], "empty nonce in WWW-Authenticate"),
    (['Digest realm="r", nonce="n", realm="s"'], "realm twice in a Digest challenge in WWW-Authenticate"),
    (['Digest realm="r, nonce="n"'], "malformed 'Digest realm=\"r, nonce=\"n\"' in WWW-Authenticate"),
    (['Digest realm="r" nonce="n"'], "malformed 'Digest realm=\"r\" nonce=\"n\"' in WWW-Authenticate"),
    (['Digest abc=='], "malformed 'Digest abc==' in WWW-Authenticate"),
    (['realm="r", Digest nonce="n"'], "WWW-Authenticate starts with a parameter, not a scheme: 'realm=\"r\"'"),
    (['Digest realm="r", nonce="n\r\nX: y"'],
     "control character in WWW-Authenticate 'Digest realm=\"r\", nonce=\"n\\r\\nX: y\"'"),
    (['Digest realm="r", nonce="n", algorithm="MD5 x"'], "bad algorithm 'MD5 x' in WWW-Authenticate"),
    (['Digest realm="r", nonce="n", qop=""'], "bad qop '' in WWW-Authenticate"),
    (['Digest realm="r", nonce="n", qop="auth,,auth-int"'], "bad qop 'auth,,auth-int' in WWW-Authenticate"),
    (['Digest realm="r", nonce="' + "n" * 1025 + '"'],
     "nonce of 1025 characters is longer than 1024 in WWW-Authenticate"),
    (['Digest realm="' + "r" * 1025 + '", nonce="n"'],
     "realm of 1025 characters is longer than 1024 in WWW-Authenticate"),
    (['Digest realm="r", nonce="n", opaque="' + "o" * 1025 + '"'],
     "opaque of 1025 characters is longer than 1024 in WWW-Authenticate"),
    (['Digest realm="r", nonce="n", future="' + "x" * (4097 - 38) + '"'],
     "WWW-Authenticate value of 4097 characters is longer than 4096"),
    (['Digest realm="r", nonce="n"'] * 9, "more than 8 challenges in WWW-Authenticate"),
    (['Basic realm="b", Digest realm="r", nonce="n"'] * 4 + ["Bearer"],
     "more than 8 challenges in WWW-Authenticate"),
])
def test_parse_errors(values, message):
    with pytest.raises(DigestError) as raised:
        parse_challenges_untrusted(values, proxy=False)
    assert str(raised.value) == message


def test_parse_bounds_are_inclusive():
    longest = 'Digest realm="r", nonce="' + "n" * 1024 + '", future="' + "x" * (4096 - 1061) + '"'
    assert len(longest) == 4096
    assert parse_challenges_untrusted([longest], proxy=False) == [challenge(nonce="n" * 1024, qop=())]
    assert len(parse_challenges_untrusted(['Digest realm="r", nonce="n"'] * 8, proxy=False)) == 8


def test_parse_errors_name_the_proxy_header():
    with pytest.raises(DigestError, match="^Digest challenge without realm in Proxy-Authenticate$"):
        parse_challenges_untrusted(['Digest nonce="n"'], proxy=True)


@pytest.mark.parametrize("challenges, chosen", [
    # RFC 8760 §2.4 order is the server's, but our policy puts SHA-256 first.
    ([challenge(nonce="m"), challenge(nonce="s", algorithm="SHA-256")], "s"),
    ([challenge(nonce="m"), challenge(nonce="s", algorithm="SHA-256-SESS")], "s"),
    # SHA-512-256 is not implemented: the next one the server offers.
    ([challenge(nonce="x", algorithm="SHA-512-256"), challenge(nonce="m")], "m"),
    # Among equals, the first.
    ([challenge(nonce="first"), challenge(nonce="second", algorithm="MD5-SESS")], "first"),
    # auth-int alone is not implemented; no qop is the RFC 2069 answer.
    ([challenge(nonce="i", qop=("auth-int",)), challenge(nonce="none", qop=())], "none"),
    ([challenge(nonce="i", qop=("auth-int",))], None),
    # -sess needs a cnonce, which only travels with qop.
    ([challenge(algorithm="MD5-SESS", qop=())], None),
    ([challenge(algorithm="FOO")], None),
    ([], None),
])
def test_choice(challenges, chosen):
    answer = client(BOB, "c").answer(challenges, method="INVITE", uri="sip:bob@biloxi.com")
    assert (answer and answer[1].split('nonce="')[1].split('"')[0]) == chosen


def test_realm_of_the_credentials():
    bound = DigestCredentials(username="bob", password="zanzibar", realm="biloxi.com")
    offered = [challenge(realm="atlanta.com"), challenge(realm="biloxi.com", nonce="b")]
    answer = client(bound, "c").answer(offered, method="INVITE", uri="sip:bob@biloxi.com")
    assert answer is not None and 'realm="biloxi.com", nonce="b"' in answer[1]
    assert client(bound, "c").answer(offered[:1], method="INVITE", uri="sip:bob@biloxi.com") is None


def test_refused_credentials_do_not_loop_but_a_stale_nonce_is_answered():
    ours = client(MUFASA, "c1", "c2", "c3")
    offered = [challenge(realm="r", nonce="a", algorithm="SHA-256"), challenge(realm="r", nonce="b")]
    first = ours.answer(offered, method="INVITE", uri="sip:x")
    assert first is not None and 'nonce="a"' in first[1]
    # The same challenges again: our answer was refused. Not the MD5 one either, or
    # we would alternate between the two.
    assert ours.answer(offered, method="INVITE", uri="sip:x") is None
    # stale=true: the nonce expired, the credentials were good: answer the new nonce.
    stale = ours.answer([challenge(realm="r", nonce="c", stale=True)], method="INVITE", uri="sip:x")
    assert stale is not None and 'nonce="c"' in stale[1] and 'cnonce="c2"' in stale[1] and "nc=00000001" in stale[1]
    # The same challenge from the proxy is a different protection space.
    proxied = ours.answer([challenge(realm="r", nonce="c", proxy=True)], method="INVITE", uri="sip:x")
    assert proxied is not None and proxied[0] == "Proxy-Authorization"


def test_preauthorize_reuses_the_nonce_with_the_next_count():
    ours = client(MUFASA, RFC7616_CNONCE, "second", "third")
    assert ours.preauthorize(method="GET", uri="/dir/other.html") == []
    challenges = parse_challenges_untrusted([rfc7616_challenge("SHA-256")], proxy=False)
    assert ours.answer(challenges, method="GET", uri="/dir/index.html") is not None
    expected = [
        ("00000002", "second", "efff5edd5d2b957f9e72ac735e6e2c5387c3c143b307a00808faa1a440c01072"),
        ("00000003", "third", "48a2019544e56c8b01d1f886c6f9784ddfcf5dff32d4cd740e7eae5e7e6ce651"),
    ]
    for nonce_count, cnonce, response in expected:
        assert ours.preauthorize(method="GET", uri="/dir/other.html") == [("Authorization", (
            f'Digest username="Mufasa", realm="http-auth@example.org", nonce="{RFC7616_NONCE}", '
            f'uri="/dir/other.html", response="{response}", algorithm=SHA-256, cnonce="{cnonce}", '
            f'opaque="{RFC7616_OPAQUE}", qop=auth, nc={nonce_count}'))]


def test_preauthorize_keeps_the_session_cnonce_of_a_sess_algorithm():
    ours = client(ALICE, "c0ffee42", "unused")
    values = ['Digest realm="biloxi.com", nonce="ea9c8e88df84f1cec4341ae6cbe5a359", qop="auth", '
              'algorithm=SHA-256-sess, userhash=true']
    ours.answer(parse_challenges_untrusted(values, proxy=True), method="REFER", uri="sip:bob@biloxi.com")
    [(name, value)] = ours.preauthorize(method="OPTIONS", uri="sip:bob@biloxi.com")
    assert name == "Proxy-Authorization"
    assert 'response="eba7157d56285515e888e52a322f4f320cc83e979c0c3cbb5f76df63c0e370d7"' in value
    assert 'cnonce="c0ffee42", qop=auth, nc=00000002, userhash=true' in value


def test_preauthorize_skips_challenges_without_qop_and_forget_drops_them():
    ours = client(BOB, *"abcdefgh")
    ours.answer([challenge(realm="old", qop=())], method="REGISTER", uri="sip:old")
    assert ours.preauthorize(method="REGISTER", uri="sip:old") == []
    ours.answer([challenge(realm="registrar")], method="REGISTER", uri="sip:x")
    ours.answer([challenge(realm="proxy", proxy=True)], method="INVITE", uri="sip:x")
    names = [name for name, _ in ours.preauthorize(method="INVITE", uri="sip:x")]
    assert names == ["Authorization", "Proxy-Authorization"]
    ours.forget("registrar")
    assert [name for name, _ in ours.preauthorize(method="INVITE", uri="sip:x")] == ["Proxy-Authorization"]
    ours.forget()
    assert ours.preauthorize(method="INVITE", uri="sip:x") == []
    # Forgotten, a challenge with the same nonce is answered again.
    assert ours.answer([challenge(realm="proxy", proxy=True)], method="INVITE", uri="sip:x") is not None


def test_quoted_strings_are_escaped():
    odd = DigestCredentials(username='a"b\\c', password="p")
    answer = client(odd, 'x"y').answer([challenge(realm='r"s')], method="MESSAGE", uri="sip:x")
    assert answer is not None
    assert answer[1].startswith('Digest username="a\\"b\\\\c", realm="r\\"s", nonce="n", uri="sip:x"')
    assert 'cnonce="x\\"y"' in answer[1]


def test_credentials_keep_the_password_out_of_sight():
    assert repr(MUFASA) == "DigestCredentials(username='Mufasa', realm=None)"
    assert "Circle" not in repr(MUFASA) and "Circle" not in str(MUFASA)
    with pytest.raises(ValueError, match="^DigestCredentials username is empty$"):
        DigestCredentials(username="", password="p")
    with pytest.raises(ValueError, match="^DigestCredentials password contains CR, LF or NUL$"):
        DigestCredentials(username="u", password="secret\r\nX")
    with pytest.raises(ValueError, match="^DigestCredentials realm contains CR, LF or NUL$"):
        DigestCredentials(username="u", password="p", realm="r\0")


def test_request_is_checked():
    ours = client(BOB, "c")
    with pytest.raises(ValueError, match="bad method"):
        ours.answer([challenge()], method="IN VITE", uri="sip:x")
    with pytest.raises(ValueError, match="bad request URI"):
        ours.preauthorize(method="INVITE", uri="sip:x\r\nX: y")
