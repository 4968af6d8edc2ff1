"""The Deepgram live API as data: URLs, replies (real-shaped and hostile), handshakes, closes, keywords."""

from __future__ import annotations

import json

import pytest

from eko_rtp.asr.deepgram_api import (
    CLOSE_STREAM,
    FINALIZE,
    KEEPALIVE,
    AsrSettings,
    Ignored,
    Metadata,
    SpeechStarted,
    Transcript,
    UtteranceEnd,
    ListenTarget,
    audio_seconds,
    auth_headers,
    close_error,
    handshake_error_untrusted,
    listen_target,
    listen_url,
    parse_message_untrusted,
)
from eko_rtp.asr.errors import (
    AsrDropped,
    AsrNoKey,
    AsrProtocolError,
    AsrRequestRejected,
    AsrUnauthorized,
    AsrUnavailable,
)
from eko_rtp.asr.keywords import load_keywords, parse_keywords
from eko_rtp.errors import UserError

DEFAULT_QUERY = ("model=nova-2&language=fr&encoding=mulaw&sample_rate=8000&channels=1&interim_results=true"
                 "&endpointing=500&vad_events=true")


@pytest.mark.parametrize(
    ("settings", "url"),
    [
        (AsrSettings(), f"wss://api.deepgram.com/v1/listen?{DEFAULT_QUERY}"),
        (AsrSettings(encoding="alaw", interim_results=False, endpointing_ms=None, vad_events=False,
                     model="nova-2-phonecall", language="fr-CA"),
         "wss://api.deepgram.com/v1/listen?model=nova-2-phonecall&language=fr-CA&encoding=alaw&sample_rate=8000"
         "&channels=1&interim_results=false&endpointing=false&vad_events=false"),
        (AsrSettings(utterance_end_ms=1000, endpointing_ms=300),
         "wss://api.deepgram.com/v1/listen?model=nova-2&language=fr&encoding=mulaw&sample_rate=8000&channels=1"
         "&interim_results=true&endpointing=300&vad_events=true&utterance_end_ms=1000"),
        (AsrSettings(keywords=[("Eko", 2), ("résiliation", 1.5), ("carte vitale", -0.25), ("RIB", 1.23456)]),
         f"wss://api.deepgram.com/v1/listen?{DEFAULT_QUERY}"
         "&keywords=Eko:2&keywords=r%C3%A9siliation:1.5&keywords=carte%20vitale:-0.25&keywords=RIB:1.235"),
        (AsrSettings(keywords=[("l'échéance&co", 1)]),
         f"wss://api.deepgram.com/v1/listen?{DEFAULT_QUERY}&keywords=l%27%C3%A9ch%C3%A9ance%26co:1"),
        (AsrSettings(base_url="http://127.0.0.1:8080"), f"ws://127.0.0.1:8080/v1/listen?{DEFAULT_QUERY}"),
        (AsrSettings(base_url="https://proxy.example/deepgram/"),
         f"wss://proxy.example/deepgram/v1/listen?{DEFAULT_QUERY}"),
        (AsrSettings(base_url="ws://[::1]:9000/a/b"), f"ws://[::1]:9000/a/b/v1/listen?{DEFAULT_QUERY}"),
    ],
    ids=["defaults", "alaw-no-interim", "utterance-end", "keywords", "keyword-quoting", "http", "https-prefix",
         "ipv6-prefix"],
)
def test_listen_url(settings, url):
    assert listen_url(settings) == url


@pytest.mark.parametrize(
    ("base_url", "target"),
    [
        ("wss://api.deepgram.com", ListenTarget(host="api.deepgram.com", port=443, tls=True,
                                                host_header="api.deepgram.com",
                                                resource=f"/v1/listen?{DEFAULT_QUERY}")),
        ("http://127.0.0.1:8080/dg", ListenTarget(host="127.0.0.1", port=8080, tls=False,
                                                  host_header="127.0.0.1:8080",
                                                  resource=f"/dg/v1/listen?{DEFAULT_QUERY}")),
        ("ws://[::1]:9000", ListenTarget(host="::1", port=9000, tls=False, host_header="[::1]:9000",
                                         resource=f"/v1/listen?{DEFAULT_QUERY}")),
        ("ws://asr.internal", ListenTarget(host="asr.internal", port=80, tls=False, host_header="asr.internal",
                                           resource=f"/v1/listen?{DEFAULT_QUERY}")),
    ],
)
def test_listen_target_is_the_url_taken_apart(base_url, target):
    assert listen_target(AsrSettings(base_url=base_url)) == target


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"encoding": "pcmu"}, "AsrSettings.encoding must be mulaw (PCMU) or alaw (PCMA), got 'pcmu'"),
        ({"sample_rate": 16000},
         "AsrSettings.sample_rate must be 8000: G.711 from RTP samples at 8000 Hz (RFC 3551 §4.5.14), got 16000"),
        ({"base_url": "ftp://api.deepgram.com"},
         "AsrSettings.base_url must be ws://, wss://, http:// or https:// and a host, got 'ftp://api.deepgram.com'"),
        ({"base_url": "wss://api.deepgram.com?x=1"},
         "AsrSettings.base_url must have no query or fragment, got 'wss://api.deepgram.com?x=1'"),
        ({"base_url": "wss://api.deepgram.com:99999"},
         "AsrSettings.base_url has a bad port, got 'wss://api.deepgram.com:99999'"),
        ({"base_url": "wss://user:secret@api.deepgram.com"},
         "AsrSettings.base_url must carry no credentials (the key is given apart)"),
        ({"model": "nova 2"}, "AsrSettings.model must be a non-empty word without spaces, got 'nova 2'"),
        ({"language": ""}, "AsrSettings.language must be a non-empty word without spaces, got ''"),
        ({"endpointing_ms": 0}, "AsrSettings.endpointing_ms must be whole milliseconds in 10..10000 or None, got 0"),
        ({"endpointing_ms": 2.5},
         "AsrSettings.endpointing_ms must be whole milliseconds in 10..10000 or None, got 2.5"),
        ({"utterance_end_ms": 500},
         "AsrSettings.utterance_end_ms must be whole milliseconds in 1000..10000 or None, got 500"),
        ({"utterance_end_ms": 1000, "interim_results": False},
         "AsrSettings.utterance_end_ms needs interim_results: Deepgram finds utterance ends in its interim results"),
        ({"keepalive_seconds": 10},
         "AsrSettings.keepalive_seconds must be over 0 and under Deepgram's 10 s idle timeout, got 10"),
        ({"keepalive_seconds": 0},
         "AsrSettings.keepalive_seconds must be over 0 and under Deepgram's 10 s idle timeout, got 0"),
        ({"keywords": ["Eko:2"]}, "AsrSettings.keywords: each keyword is a (word, boost) pair, got 'Eko:2'"),
        ({"keywords": [("Eko", 11)]}, "AsrSettings.keywords: boost of 'Eko' must be in -10..10, got 11"),
        ({"keywords": [("Eko", float("nan"))]}, "AsrSettings.keywords: boost of 'Eko' must be in -10..10, got nan"),
        ({"keywords": [("a:b", 1)]},
         "AsrSettings.keywords: keyword 'a:b' must not contain ':' (it separates the word from its boost)"),
        ({"keywords": [("Eko", 1), ("eko", 2)]}, "AsrSettings.keywords: 'eko' is listed twice"),
        ({"keywords": [(f"w{index}", 1) for index in range(101)]},
         "AsrSettings.keywords: 101 keywords, over Deepgram's 100"),
    ],
)
def test_settings_refuse_what_deepgram_or_g711_would_not_take(fields, message):
    with pytest.raises(ValueError) as raised:
        AsrSettings(**fields)
    assert str(raised.value) == message


def test_control_messages_are_the_documented_json():
    assert [json.loads(message) for message in (KEEPALIVE, CLOSE_STREAM, FINALIZE)] == [
        {"type": "KeepAlive"}, {"type": "CloseStream"}, {"type": "Finalize"}]


def test_auth_header_carries_the_key_as_a_token():
    assert auth_headers("0123abcd") == [("Authorization", "Token 0123abcd")]


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("", "Deepgram: no API key (set DEEPGRAM_API_KEY)"),
        ("   ", "Deepgram: no API key (set DEEPGRAM_API_KEY)"),
        ("abc\r\nX-Evil: 1", "Deepgram: the API key must be printable ASCII without spaces"),
        ("clé", "Deepgram: the API key must be printable ASCII without spaces"),
    ],
)
def test_an_unusable_key_is_no_key(key, message):
    with pytest.raises(AsrNoKey) as raised:
        auth_headers(key)
    assert str(raised.value) == message


def test_audio_seconds_counts_one_byte_a_sample():
    assert [audio_seconds(count) for count in (0, 160, 8000, 12_345)] == [0.0, 0.02, 1.0, 1.543125]


# Captured-shape replies, as documented for the live API (nova-2, one channel).
FINAL_RESULTS = {
    "type": "Results",
    "channel_index": [0, 1],
    "duration": 1.02,
    "start": 3.5,
    "is_final": True,
    "speech_final": True,
    "channel": {"alternatives": [{
        "transcript": "oui je voudrais résilier",
        "confidence": 0.9873047,
        "words": [
            {"word": "oui", "start": 3.52, "end": 3.76, "confidence": 0.99, "punctuated_word": "Oui"},
            {"word": "je", "start": 3.76, "end": 3.9, "confidence": 0.98, "punctuated_word": "je"},
            {"word": "voudrais", "start": 3.9, "end": 4.2, "confidence": 0.97, "punctuated_word": "voudrais"},
            {"word": "résilier", "start": 4.2, "end": 4.52, "confidence": 0.95, "punctuated_word": "résilier"},
        ],
    }]},
    "metadata": {"request_id": "8c8ebea9-dbec-45fa-a035-e4632cb05b5f",
                 "model_info": {"name": "2-general-nova", "version": "2024-01-09.29447", "arch": "nova-2"},
                 "model_uuid": "c0d1a568-ce81-4fea-97e7-bd45cb1fdf3c"},
    "from_finalize": False,
}
INTERIM_RESULTS = {**FINAL_RESULTS, "is_final": False, "speech_final": False, "duration": 0.5,
                   "channel": {"alternatives": [{"transcript": "", "confidence": 0, "words": []}]}}
CLOSE_METADATA = {"type": "Metadata", "transaction_key": "deprecated", "request_id": "8c8ebea9-dbec-45fa-a035-e4632cb05b5f",
                  "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                  "created": "2024-08-29T22:37:55.202Z", "duration": 12.5, "channels": 1}


@pytest.mark.parametrize(
    ("reply", "event"),
    [
        (FINAL_RESULTS, Transcript(text="oui je voudrais résilier", is_final=True, speech_final=True,
                                   confidence=0.9873047, start=3.5, duration=1.02)),
        (INTERIM_RESULTS, Transcript(text="", is_final=False, speech_final=False, confidence=0.0, start=3.5,
                                     duration=0.5)),
        ({**FINAL_RESULTS, "speech_final": False, "from_finalize": True},
         Transcript(text="oui je voudrais résilier", is_final=True, speech_final=False, confidence=0.9873047,
                    start=3.5, duration=1.02, from_finalize=True)),
        ({key: value for key, value in FINAL_RESULTS.items() if key != "from_finalize"},
         Transcript(text="oui je voudrais résilier", is_final=True, speech_final=True, confidence=0.9873047,
                    start=3.5, duration=1.02)),
        ({"type": "SpeechStarted", "channel": [0, 1], "timestamp": 9.54}, SpeechStarted(timestamp=9.54)),
        ({"type": "UtteranceEnd", "channel": [0, 1], "last_word_end": 2.395}, UtteranceEnd(last_word_end=2.395)),
        (CLOSE_METADATA, Metadata(request_id="8c8ebea9-dbec-45fa-a035-e4632cb05b5f", duration=12.5)),
        ({"type": "Error", "description": "anything"}, Ignored(type="Error")),
    ],
    ids=["final", "interim-silence", "from-finalize", "no-from-finalize", "speech-started", "utterance-end",
         "metadata", "unknown-type"],
)
def test_replies_become_typed_events(reply, event):
    text = json.dumps(reply, ensure_ascii=False)
    assert parse_message_untrusted(text) == event
    assert parse_message_untrusted(text.encode("utf-8")) == event  # a binary frame holding the same JSON


def _results(**changes):
    reply = json.loads(json.dumps(FINAL_RESULTS))
    reply.update(changes)
    return json.dumps(reply)


def _best(**changes):
    reply = json.loads(json.dumps(FINAL_RESULTS))
    reply["channel"]["alternatives"][0].update(changes)
    return json.dumps(reply)


HOSTILE = [
    ("x" * 65_537, "Deepgram reply of 65537 characters, over 65536"),
    (b"x" * 65_537, "Deepgram reply of 65537 bytes, over 65536"),
    (b'{"type": "Results\xff"}', "Deepgram reply is not UTF-8 (byte 17)"),
    ("not json", "Deepgram reply is not JSON: Expecting value: line 1 column 1 (char 0)"),
    ('{"type": "Results"', "Deepgram reply is not JSON: Expecting ',' delimiter: line 1 column 19 (char 18)"),
    ("[1, 2]", "Deepgram reply must be a JSON object, got array"),
    ('"Results"', "Deepgram reply must be a JSON object, got string"),
    ("{}", "Deepgram reply: type is missing"),
    ('{"type": 3}', "Deepgram reply: type must be a string, got number"),
    (json.dumps({"type": "R" * 129}), "Deepgram reply: type is 129 characters, over 128"),
    ('{"type": "x", "a": ' + "[" * 16 + "]" * 16 + "}", "Deepgram reply nests deeper than 16"),
    ('{"type": "x", "a": ' + "[" * 30_000 + "]" * 30_000 + "}", "Deepgram reply nests deeper than 16"),
    ('{"type": "x", "n": ' + "9" * 21 + "}", "Deepgram reply holds an integer of 21 digits, over 20"),
    ('{"type": "x", "n": NaN}', "Deepgram reply holds NaN, which is not a JSON number"),
    ('{"type": "x", "n": -Infinity}', "Deepgram reply holds -Infinity, which is not a JSON number"),
    ('{"type": "x", "n": 1e999}', "Deepgram reply holds the number 1e999, too large for a float"),
    ('{"type": "Results"}', "Deepgram Results: channel is missing"),
    (_results(channel=[]), "Deepgram Results: channel must be an object, got array"),
    (_results(channel={}), "Deepgram Results: channel.alternatives is missing"),
    (_results(channel={"alternatives": {}}), "Deepgram Results: channel.alternatives must be an array, got object"),
    (_results(channel={"alternatives": []}), "Deepgram Results: channel.alternatives is empty"),
    (_results(channel={"alternatives": ["oui"]}),
     "Deepgram Results: channel.alternatives[0] must be an object, got string"),
    (_best(transcript=None), "Deepgram Results: channel.alternatives[0].transcript must be a string, got null"),
    (_best(transcript="a" * 4097), "Deepgram Results: channel.alternatives[0].transcript is 4097 characters, over 4096"),
    (_best(confidence="0.9"), "Deepgram Results: channel.alternatives[0].confidence must be a number, got string"),
    (_best(confidence=True), "Deepgram Results: channel.alternatives[0].confidence must be a number, got boolean"),
    (_best(confidence=1.5), "Deepgram Results: channel.alternatives[0].confidence must be in 0..1, got 1.5"),
    (_results(is_final="true"), "Deepgram Results: is_final must be a boolean, got string"),
    (_results(is_final=1), "Deepgram Results: is_final must be a boolean, got number"),
    (json.dumps({key: value for key, value in FINAL_RESULTS.items() if key != "speech_final"}),
     "Deepgram Results: speech_final is missing"),
    (_results(from_finalize=None), "Deepgram Results: from_finalize must be a boolean, got null"),
    (_results(start=-0.5), "Deepgram Results: start must be in 0..86400, got -0.5"),
    (_results(duration=1e12), "Deepgram Results: duration must be in 0..86400, got 1e+12"),
    ('{"type": "SpeechStarted"}', "Deepgram SpeechStarted: timestamp is missing"),
    ('{"type": "UtteranceEnd", "last_word_end": null}',
     "Deepgram UtteranceEnd: last_word_end must be a number, got null"),
    ('{"type": "Metadata", "request_id": "a\\nb", "duration": 1}', "Deepgram Metadata: request_id must be printable"),
    ('{"type": "Metadata", "request_id": 7, "duration": 1}',
     "Deepgram Metadata: request_id must be a string, got number"),
    (json.dumps({"type": "Metadata", "request_id": "r" * 129, "duration": 1}),
     "Deepgram Metadata: request_id is 129 characters, over 128"),
]


@pytest.mark.parametrize(("reply", "message"), HOSTILE, ids=[f"hostile-{index}" for index in range(len(HOSTILE))])
def test_a_hostile_reply_raises_only_the_protocol_error_saying_what_was_wrong(reply, message):
    with pytest.raises(AsrProtocolError) as raised:
        parse_message_untrusted(reply)
    assert str(raised.value) == message


def _headers(**values):
    return tuple((name.replace("_", "-").encode(), value.encode()) for name, value in values.items())


@pytest.mark.parametrize(
    ("status", "headers", "body", "kind", "message"),
    [
        (401, _headers(dg_error="Invalid credentials.", dg_request_id="req-1"), None, AsrUnauthorized,
         "Deepgram refused the API key (401: Invalid credentials.)"),
        (403, (), b'{"err_code": "ACCESS_DENIED", "err_msg": "Project lacks access.", "request_id": "r"}',
         AsrUnauthorized, "Deepgram refused the API key (403: Project lacks access.)"),
        (400, _headers(dg_error="No such model/language/tier combination found."), None, AsrRequestRejected,
         "Deepgram refused the stream's settings (400: No such model/language/tier combination found.)"),
        (429, (), b"Too many requests", AsrUnavailable, "Deepgram is unavailable (429: Too many requests)"),
        (503, (), None, AsrUnavailable, "Deepgram is unavailable (503)"),
        (302, _headers(location="https://elsewhere"), b"", AsrProtocolError,
         "Deepgram answered the handshake with 302"),
        (500, _headers(dg_error="bad\r\nthing" + "x" * 300), None, AsrUnavailable,
         "Deepgram is unavailable (500: bad\\x0d\\x0athing" + "x" * 190 + "...)"),
    ],
    ids=["401-header", "403-body", "400", "429", "503-bare", "302", "hostile-words"],
)
def test_a_refused_handshake_says_who_is_at_fault(status, headers, body, kind, message):
    error = handshake_error_untrusted(status, headers, body)
    assert type(error) is kind
    assert (str(error), error.status) == (message, status)
    assert error.request_id == ("req-1" if status == 401 else None)


@pytest.mark.parametrize(
    ("code", "reason", "kind", "message"),
    [
        (1006, None, AsrDropped, "Deepgram: connection lost after 16000 bytes (2.00 s) of audio"),
        (1011, "NET-0001", AsrDropped, "Deepgram closed the stream after 16000 bytes (2.00 s) of audio: 1011 NET-0001"),
        (1000, None, AsrDropped, "Deepgram closed the stream after 16000 bytes (2.00 s) of audio: 1000"),
        (1009, "Exceeded maximum message size: 65536 bytes", AsrProtocolError,
         "Deepgram stream closed after 16000 bytes (2.00 s) of audio: 1009 Exceeded maximum message size: 65536 bytes"),
    ],
)
def test_a_close_before_the_hang_up_is_a_failure(code, reason, kind, message):
    error = close_error(code, reason, audio_bytes=16_000)
    assert type(error) is kind
    assert (str(error), error.close_code) == (message, code)
    assert error.retryable == (kind is AsrDropped)


KEYWORDS_FILE = """\
# Keywords for the Eko voicebot.
Eko:2
résiliation : 1.5   # spaces around the colon are fine

prélèvement          # no boost: Deepgram's default, 1
carte vitale:-0.5
"""


def test_keywords_file():
    assert parse_keywords(KEYWORDS_FILE, path="keywords.txt") == (
        ("Eko", 2.0), ("résiliation", 1.5), ("prélèvement", 1.0), ("carte vitale", -0.5))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Eko:2\nRIB:beaucoup\n", "kw.txt:2: boost 'beaucoup' of 'RIB' is not a number"),
        ("Eko:12\n", "kw.txt:1: boost of 'Eko' must be in -10..10, got 12.0"),
        ("Eko:inf\n", "kw.txt:1: boost of 'Eko' must be in -10..10, got inf"),
        ("\n\n:2\n", "kw.txt:3: keyword '' must be non-empty without surrounding spaces"),
        ("a:b:2\n", "kw.txt:1: boost 'b:2' of 'a' is not a number"),
        ("Eko\tRIB\n", "kw.txt:1: keyword 'Eko\\tRIB' must not contain control characters"),
        ("x" * 51 + "\n", "kw.txt:1: keyword 'xxxxxxxxxxxxxxxxxxxx'... is 51 characters, over 50"),
        ("Eko:2\n# note\neko:3\n", "kw.txt:3: keyword 'eko' is already on line 1"),
        ("".join(f"mot{index}\n" for index in range(101)), "kw.txt:101: more than 100 keywords (Deepgram's limit)"),
    ],
    ids=["boost-not-number", "boost-too-big", "boost-infinite", "empty-word", "second-colon", "control-character",
         "too-long", "duplicate", "too-many"],
)
def test_keywords_file_mistakes_name_the_file_and_line(text, message):
    with pytest.raises(UserError) as raised:
        parse_keywords(text, path="kw.txt")
    assert str(raised.value) == message


def test_keywords_file_on_disk(tmp_path):
    good = tmp_path / "keywords.txt"
    good.write_bytes(b"\xef\xbb\xbf" + KEYWORDS_FILE.encode("utf-8"))  # a BOM, as some editors save
    assert load_keywords(good)[:2] == (("Eko", 2.0), ("résiliation", 1.5))
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Eko:2\nrésiliation\n".encode("latin-1"))
    with pytest.raises(UserError) as raised:
        load_keywords(latin)
    assert str(raised.value) == f"{latin}:2: not UTF-8 (byte 0xe9)"
    with pytest.raises(UserError) as raised:
        load_keywords(tmp_path / "missing.txt")
    assert str(raised.value) == f"{tmp_path / 'missing.txt'}: cannot read keywords file: No such file or directory"


def test_keywords_from_the_file_are_what_the_settings_take(tmp_path):
    settings = AsrSettings(keywords=parse_keywords(KEYWORDS_FILE, path="keywords.txt"))
    assert listen_url(settings).endswith(
        "&keywords=Eko:2&keywords=r%C3%A9siliation:1.5&keywords=pr%C3%A9l%C3%A8vement:1&keywords=carte%20vitale:-0.5")
