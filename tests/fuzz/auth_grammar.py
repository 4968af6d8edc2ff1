"""Hypothesis strategies that write WWW-Authenticate / Proxy-Authenticate values (RFC 7235 §4.1, RFC 7616 §3.3)."""

from __future__ import annotations

from hypothesis import strategies as st

# Quoted-string contents: plain, with escapes, with commas and separators inside, non-ASCII.
quoted_contents = st.one_of(
    st.sampled_from(["sip.example.org", "", "a,b", 'a\\"b', "a\\\\", "a=b", "é", "realm with spaces", "\\", "a;b"]),
    st.text(alphabet="abcXYZ09 ,=;\\\"'é\t", max_size=20),
)


def _quoted(text: str) -> str:
    return f'"{text}"'


parameter_values = st.one_of(
    quoted_contents.map(_quoted),
    st.sampled_from(["MD5", "SHA-256", "md5-sess", "SHA-256-SESS", "SHA-512-256", "auth", "true", "FALSE", "x", "",
                     '"unterminated', "a b"]),
)
PARAMETER_NAMES = ["realm", "nonce", "algorithm", "qop", "opaque", "stale", "userhash", "domain", "charset", "x"]
parameters = st.builds(
    lambda name, separator, value: f"{name}{separator}{value}",
    st.sampled_from(PARAMETER_NAMES + ["Realm", "NONCE", ""]),
    st.sampled_from(["=", "=", " = ", "\t=", "=="]),
    parameter_values,
)
good_digest = st.builds(
    lambda realm, nonce, extra: ", ".join([f'realm="{realm}"', f'nonce="{nonce}"', *extra]),
    st.sampled_from(["sip.example.org", "r", "é"]),
    st.sampled_from(["n1", "dcd98b7102dd2f0e8b11d0f600bfb0c093", "n2"]),
    st.lists(st.sampled_from(['qop="auth"', 'qop="auth,auth-int"', "qop=auth-int", "algorithm=SHA-256",
                              "algorithm=MD5-sess", "algorithm=SHA-256-sess", "algorithm=SHA-512-256", 'opaque="o"',
                              "stale=true", "stale=FALSE", "userhash=true", 'domain="sip:x"']), max_size=3, unique=True),
)
schemes = st.sampled_from(["Digest", "Digest", "Digest", "digest", "DIGEST", "Basic", "Bearer", "Negotiate", ""])
challenges = st.one_of(
    st.builds("{} {}".format, schemes, good_digest),
    st.builds(lambda scheme, items: f"{scheme} {', '.join(items)}".rstrip(), schemes,
              st.lists(parameters, max_size=5)),
    st.sampled_from(["Basic realm=\"x\"", "Negotiate abc==", "Digest", "Digest ,", ", Digest realm=\"r\", nonce=\"n\"",
                     "Digest realm=\"r\" nonce=\"n\"", 'Digest realm="r", nonce="n",', "Bearer token68=="]),
)
# One header value may hold several challenges (RFC 7235 §4.1).
challenge_values = st.lists(challenges, min_size=1, max_size=3).map(", ".join)
