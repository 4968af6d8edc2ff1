"""Hypothesis strategies that write SDP (RFC 4566): offers and answers as peers send them, and worse.

As in ``sip_grammar``: every part has a good and a bad form, and a description takes
at most one part in its bad form, so that most of it parses and the code behind the
parser (offer/answer) is reached. Strategies are built once, at import.
"""

from __future__ import annotations

from hypothesis import strategies as st

GOOD_ADDRESSES = ["192.0.2.20", "198.51.100.7", "0.0.0.0", "2001:db8::1", "239.1.1.1/127/3", "example.org"]
BAD_ADDRESSES = ["::", "x", "é", "", "1.2.3.4 5"]
# Payload types as peers write them, and as they should not: a superscript two and an
# Arabic-Indic three are Unicode digits (str.isdigit) but not ASCII ones.
GOOD_FORMATS = ["0", "8", "18", "101", "96", "9", "13"]
BAD_FORMATS = ["127", "128", "x", "²", "٣", "-1", "0008", "1²"]


def parts(bad: bool, **choices: tuple[st.SearchStrategy, st.SearchStrategy]) -> st.SearchStrategy[dict]:
    """A dict of ``name: value`` from ``choices`` (``name=(good, bad)``): all good, or with ``bad``
    exactly one part bad, so that what follows the bad part is still reached."""
    if not bad:
        return st.fixed_dictionaries({name: good for name, (good, _) in choices.items()})

    @st.composite
    def one_bad(draw) -> dict:
        chosen = draw(st.sampled_from(sorted(choices)))
        return {name: draw(pair[1] if name == chosen else pair[0]) for name, pair in choices.items()}

    return one_bad()


def rtpmap_strategy(bad: bool) -> st.SearchStrategy[str]:
    return parts(
        bad,
        payload=(st.sampled_from(["0", "8", "101", "96"]), st.sampled_from(["127", "128", "x", "²", "", "٣"])),
        encoding=(st.sampled_from(["PCMU", "PCMA", "telephone-event", "pcma", "opus", "G729"]),
                  st.sampled_from(["", "PCMU/8000", "ＰＣＭＵ"])),
        rate=(st.sampled_from(["8000", "16000", "48000"]), st.sampled_from(["x", "", "1000001", "٨٠٠٠", "²"])),
        channels=(st.sampled_from(["", "/1", "/2"]), st.sampled_from(["/x", "/256", "/²", "/"])),
    ).map(lambda p: f"a=rtpmap:{p['payload']} {p['encoding']}/{p['rate']}{p['channels']}")


GOOD_ATTRIBUTES = ["a=sendrecv", "a=sendonly", "a=recvonly", "a=inactive", "a=ptime:20", "a=ptime:20.5",
                   "a=maxptime:150", "a=rtcp-mux", "a=rtcp:4001", "a=rtcp:4001 IN IP4 192.0.2.21", "a=fmtp:101 0-16",
                   "a=unknown", "a=ice-ufrag:abc", "a=setup:actpass", "a=rtcp:0"]
BAD_ATTRIBUTES = ["a=ptime:x", "a=ptime:²", "a=rtcp:x", "a=rtcp:1 2", "a=rtcp:70000", "a=rtcp:4001 IN IP4", "a=fmtp:x y",
                  "a=fmtp:", "a=fmtp:²", "a=", "a=:", "a=rtcp:²", "a=rtcp:4001 IN IP9 x"]


def attributes_strategy(bad: bool) -> st.SearchStrategy[list[str]]:
    good = st.lists(st.one_of(rtpmap_strategy(False), st.sampled_from(GOOD_ATTRIBUTES)), max_size=5)
    if not bad:
        return good
    return st.builds(lambda items, odd, where: items[:where] + [odd] + items[where:], good,
                     st.one_of(rtpmap_strategy(True), st.sampled_from(BAD_ATTRIBUTES)), st.integers(0, 5))


def audio_section_strategy(bad: bool) -> st.SearchStrategy[list[str]]:
    """The m=audio section we should answer: RTP/AVP, a port, formats, perhaps its own c= line."""
    good_connections = st.one_of(st.none(), st.sampled_from(GOOD_ADDRESSES).map("c=IN IP4 {}".format))
    return parts(
        bad,
        port=(st.sampled_from(["4000", "4002", "4000/2", "65535"]),
              st.sampled_from(["65536", "x", "-1", "", "٤٠٠٠", "²"])),
        formats=(st.lists(st.sampled_from(GOOD_FORMATS), min_size=1, max_size=4),
                 st.lists(st.sampled_from(GOOD_FORMATS + BAD_FORMATS), min_size=1, max_size=4).map(
                     lambda formats: formats + [BAD_FORMATS[len(formats) % len(BAD_FORMATS)]])),
        connection=(good_connections, st.one_of(st.sampled_from(BAD_ADDRESSES).map("c=IN IP4 {}".format),
                                                st.sampled_from(["c=IN", "c=XX IP4 h", "c=IN IP5 h"]))),
        attributes=(attributes_strategy(False), attributes_strategy(True)),
    ).map(lambda p: [f"m=audio {p['port']} RTP/AVP {' '.join(p['formats'])}"]
          + ([p["connection"]] if p["connection"] else []) + p["attributes"])


# Other sections an offer may hold before or after its audio: rejected with port 0 in the answer.
other_sections = st.builds(
    lambda media, port, protocol, formats, attributes: [f"m={media} {port} {protocol} {' '.join(formats)}",
                                                        *attributes],
    st.sampled_from(["audio", "video", "image", "application"]),
    st.sampled_from(["0", "4000", "5004"]),
    st.sampled_from(["RTP/SAVP", "RTP/AVP", "UDP/TLS/RTP/SAVPF", "udptl", "rtp/avp"]),
    st.lists(st.sampled_from(GOOD_FORMATS + ["t38", "webrtc-datachannel"]), min_size=1, max_size=3),
    st.lists(st.sampled_from(GOOD_ATTRIBUTES), max_size=2),
)
good_audio, any_audio = audio_section_strategy(False), audio_section_strategy(True)
good_origins = st.sampled_from(["o=- 1 1 IN IP4 192.0.2.20", "o=alice 2890844526 2890844527 IN IP4 192.0.2.20",
                                "o=- 1 1 IN IP6 ::1", "o=- 18446744073709551615 0 IN IP4 h", ""])
bad_origins = st.sampled_from(["o=- x 1 IN IP4 h", "o=- 18446744073709551616 1 IN IP4 h", "o=-", "o=- 1 1 XX IP4 h",
                               "o=- ² 1 IN IP4 h"])
good_session_lines = st.lists(st.sampled_from(["a=sendonly", "a=recvonly", "a=inactive", "a=sendrecv", "b=AS:64",
                                               "a=rtcp-mux", "a=group:BUNDLE 0"]), max_size=2)
bad_session_lines = st.lists(st.sampled_from(["=x", "x", "é=1", "a", "v=0"]), min_size=1, max_size=2)
PARTS = ["version", "origin", "connection", "session", "media", "ending"]
bad_parts = st.sampled_from([None] * len(PARTS) + PARTS)


@st.composite
def _descriptions(draw) -> bytes:
    bad = draw(bad_parts)
    lines = [draw(st.sampled_from(["v=1", "v=", "", "v=0 x", "v=²"])) if bad == "version" else "v=0"]
    lines.append(draw(bad_origins if bad == "origin" else good_origins))
    lines.append("s=-")
    connection = draw(st.one_of(st.sampled_from(GOOD_ADDRESSES), st.none()))
    if bad == "connection":
        lines.append(draw(st.sampled_from(["c=IN IP6", "c=IN", "c=XX IP4 h", "c=IN IP4 a b"])))
    elif connection is not None:
        lines.append(f"c=IN IP4 {connection}")
    lines.append("t=0 0")
    lines += draw(bad_session_lines if bad == "session" else good_session_lines)
    sections = [draw(any_audio if bad == "media" else good_audio)]
    for other in draw(st.lists(other_sections, max_size=2)):
        sections.insert(draw(st.integers(0, len(sections))), other)
    for section in sections:
        lines += section
    ending = draw(st.sampled_from(["\r", "\n\n", "\r\r\n"])) if bad == "ending" else draw(
        st.sampled_from(["\r\n", "\n"]))
    return (ending.join(line for line in lines if line) + ending).encode("utf-8")


sdp_bodies = _descriptions()
