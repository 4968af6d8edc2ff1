"""Fuzzing the CRM's wire: msgpack-RPC framing (RpcConnection) and the records parsed from it.

RpcConnection may raise only RpcProtocolError, stays broken once broken, and cuts
the same messages out of a stream however it is read; the ``parse_*_untrusted``
functions of ``crm/records.py`` may raise only CrmReplyError, and what they accept
can be written back (``to_wire``) and parsed again to the same value.
"""

from __future__ import annotations

import hypothesis
import msgpack
from hypothesis import strategies as st

from eko_rtp.crm import records
from eko_rtp.crm.errors import CrmReplyError, RpcProtocolError
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcLimits

from fuzzing import FUZZ, only_raises
from sip_grammar import mutate, mutations

# What msgpack can carry to us (extension types are refused by the limits).
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                    st.text(max_size=20), st.binary(max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                      max_leaves=20)
messages = st.one_of(
    st.tuples(st.just(0), st.integers(0, 2**32 - 1), st.text(max_size=20), st.lists(values, max_size=3)).map(list),
    st.tuples(st.just(1), st.integers(0, 2**32 - 1), values, values).map(list),
    st.tuples(st.just(2), st.text(max_size=20), st.lists(values, max_size=3)).map(list),
    values,  # not a message shape at all
    st.lists(values, max_size=5),
)


def pack(value: object) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@st.composite
def streams(draw) -> list[bytes]:
    """Several encoded messages (or values, or nesting deeper than allowed), cut into reads."""
    parts = [pack(draw(messages)) for _ in range(draw(st.integers(1, 4)))]
    if draw(st.integers(0, 7)) == 0:
        parts.insert(0, b"\x91" * draw(st.integers(1, 2000)) + b"\xc0")  # deep nesting
    stream = b"".join(parts)
    if draw(st.integers(0, 3)) == 0:
        stream = mutate(stream, draw(mutations))
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    return [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)])]


def read(chunks: list[bytes], limits: RpcLimits) -> tuple[list[object], RpcProtocolError | None, RpcConnection]:
    connection = RpcConnection(limits=limits)
    events: list[object] = []
    try:
        for chunk in chunks:
            connection.receive_data(chunk)
            while (event := connection.next_event()) is not NEED_DATA:
                events.append(event)
    except RpcProtocolError as error:
        assert connection.broken is not None
        # Broken for good: every later call says so again.
        with only_raises(RpcProtocolError):
            connection.next_event()
            raise AssertionError("a broken connection gave another event")
        with only_raises(RpcProtocolError):
            connection.receive_data(b"\xc0")
            raise AssertionError("a broken connection took more data")
        return events, error, connection
    return events, None, connection


limits = st.sampled_from([RpcLimits(), RpcLimits(max_message_bytes=64, max_str_len=8, max_array_len=4, max_map_len=2,
                                                 max_depth=3)])


@FUZZ
@hypothesis.given(streams(), limits)
def test_rpc_stream_whatever_the_reads(chunks, limits):
    events, error, connection = read(chunks, limits)
    at_once, error_at_once, _ = read([b"".join(chunks)], limits)
    # What the peer said does not depend on how TCP cut it.
    assert (error is None) == (error_at_once is None), (error, error_at_once)
    # (repr: a NaN in a message is not equal to itself)
    assert repr(events) == repr(at_once) or error is not None and repr(events[:len(at_once)]) == repr(at_once)
    if error is None:
        assert connection.buffered_bytes >= 0


@FUZZ
@hypothesis.given(st.lists(st.binary(max_size=60), max_size=6))
def test_rpc_random_bytes(chunks):
    read(chunks, RpcLimits())


@FUZZ
@hypothesis.given(st.lists(st.one_of(
    st.tuples(st.just("request"), st.text(max_size=20), st.lists(values, max_size=3)),
    st.tuples(st.just("response"), values, values),
    st.tuples(st.just("notification"), st.text(max_size=20), st.lists(values, max_size=3))), max_size=5))
def test_what_we_send_is_read_back(sent):
    ours, theirs = RpcConnection(), RpcConnection()
    expected = []
    for kind, first, second in sent:
        if kind == "request":
            msgid, data = ours.send_request(first, second)
            expected.append(("request", msgid, first, second))
        elif kind == "response":
            data = ours.send_response(7, error=first, result=second)
            expected.append(("response", 7, first, second))
        else:
            data = ours.send_notification(first, second)
            expected.append(("notification", first, second))
        theirs.receive_data(data)
    got = []
    while (event := theirs.next_event()) is not NEED_DATA:
        if type(event).__name__ == "RpcRequest":
            got.append(("request", event.msgid, event.method, event.params))
        elif type(event).__name__ == "RpcResponse":
            got.append(("response", event.msgid, event.error, event.result))
        else:
            got.append(("notification", event.method, event.params))
    # NaN is not equal to itself: compare the encodings.
    assert pack(got) == pack(expected)
    assert theirs.buffered_bytes == 0


# ---- records --------------------------------------------------------------------------

def one_bad(required: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]],
            optional: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]] = {}) -> st.SearchStrategy[dict]:
    """A map of ``name: (good, bad)`` fields: all good, or one bad, missing, or an extra key.

    One fault at a time, so that the checks after the first one are reached too.
    """
    names = sorted(required) + sorted(optional)

    @st.composite
    def build(draw) -> dict:
        fault = draw(st.sampled_from([None, None, None, "missing", "extra"] + names))
        fields = {}
        for name in names:
            good, bad = required.get(name) or optional[name]
            if name in optional and draw(st.booleans()):
                continue
            fields[name] = draw(bad if name == fault else good)
        if fault == "missing" and fields:
            del fields[draw(st.sampled_from(sorted(fields)))]
        elif fault == "extra":
            fields[draw(st.text(max_size=8))] = draw(values)
        return fields

    return build()


good_phones = st.sampled_from(["+33612345678", "+1555123456", "+999999999999999"])
bad_phones = st.one_of(st.sampled_from(["0612345678", "+0123456789", "+" + "9" * 16, "+33 6", "", "+١٢٣٤٥٦٧٨٩",
                                        "+3361234567\n"]), values)
good_timestamps = st.one_of(
    st.sampled_from(["2026-03-01T10:00:00+01:00", "2026-03-01T10:00:00", "2026-03-01", "2026-03-01T10:00:00Z",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-05:00", "0001-01-01T00:30:00+00:31",
                     "9999-12-31T23:59:59.999999-23:59", "0001-01-01T00:00:00", "9999-12-31T23:59:59+00:00"]),
    st.datetimes(timezones=st.one_of(st.none(), st.timezones())).map(lambda moment: moment.isoformat()),
)
bad_timestamps = st.one_of(st.sampled_from(["2026-02-30T00:00:00", "x", "", "2026-03-01T25:00:00", "+002026-03-01",
                                            "2026-W09-7", "20260301T100000", "2026-03-01T10:00:00+24:00",
                                            "x" * 300]), values)
good_words = st.sampled_from(["internet", "mobile", "technicians", "no_input", "a" * 32])
bad_words = st.one_of(st.sampled_from(["a" * 33, "Internet", "", "_x", "é", "a-b"]), values)
good_texts = st.text(max_size=40)
bad_texts = st.one_of(st.just("x" * 257), values)
good_ids = st.text(min_size=1, max_size=40)
bad_ids = st.one_of(st.just(""), bad_texts)
counts = (st.integers(0, 2**64 - 1), st.one_of(st.integers(-5, -1), st.just(2**64), st.booleans(), values))
measures = (st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10**6)),
            st.one_of(st.floats(), st.integers(-1, 2**70), st.booleans(), values))

tickets = one_bad({"id": (good_ids, bad_ids), "problem_type": (good_texts, bad_texts),
                   "opened_at": (good_timestamps, bad_timestamps)}, {"status": (good_texts, bad_texts)})
callers = one_bad({"client_id": (good_ids, bad_ids)},
                  {"name": (good_texts, bad_texts), "calls_count": counts,
                   "open_tickets": (st.lists(tickets, max_size=3),
                                    st.one_of(st.lists(tickets, min_size=101, max_size=101), values))})
call_logs = one_bad({"call_id": (good_texts, bad_texts), "phone": (st.one_of(st.none(), good_phones, good_texts),
                                                                   bad_texts),
                     "greeting": (st.sampled_from(["", "a+b", "hello"]), st.one_of(st.sampled_from(["a++b", "+"]),
                                                                                    bad_texts)),
                     "duration_ms": counts, "outcome": (good_texts, bad_texts)},
                    {name: measures for name in records.QUALITY_KEYS}
                    | {"script_outcome": (st.one_of(st.none(), good_words), bad_words)})
ticket_requests = one_bad({"call_id": (good_ids, bad_ids), "phone": (st.one_of(st.none(), good_phones), bad_phones),
                           "reason": (good_texts, st.one_of(st.just("x" * 2001), values)),
                           "category": (good_words, bad_words), "created_at": (good_timestamps, bad_timestamps)})
callback_requests = one_bad({"call_id": (good_ids, bad_ids), "phone": (good_phones, bad_phones),
                             "reason": (good_texts, st.one_of(st.just("x" * 2001), values)),
                             "not_before": (st.one_of(st.none(), good_timestamps), bad_timestamps),
                             "queue": (good_words, bad_words)})


@FUZZ
@hypothesis.given(st.one_of(callers, values))
def test_caller_records(obj):
    with only_raises(CrmReplyError):
        record = records.parse_caller_untrusted(obj)
        if record is not None:
            assert records.parse_caller_untrusted(record.to_wire()) == record


@FUZZ
@hypothesis.given(st.one_of(call_logs, values))
def test_call_logs(obj):
    with only_raises(CrmReplyError):
        log = records.parse_call_log_untrusted(obj)
        assert records.parse_call_log_untrusted(log.to_wire()) == log


@FUZZ
@hypothesis.given(st.one_of(ticket_requests, values))
def test_ticket_requests(obj):
    with only_raises(CrmReplyError):
        request = records.parse_ticket_request_untrusted(obj)
        # The embedded CRM stores to_wire()'s text (crm/store.py): it must be writable.
        assert records.parse_ticket_request_untrusted(request.to_wire()) == request


@FUZZ
@hypothesis.given(st.one_of(callback_requests, values))
def test_callback_requests(obj):
    with only_raises(CrmReplyError):
        request = records.parse_callback_request_untrusted(obj)
        assert records.parse_callback_request_untrusted(request.to_wire()) == request


@FUZZ
@hypothesis.given(st.one_of(one_bad({"ticket_id": (good_ids, bad_ids)}), values))
def test_created_ids(obj):
    with only_raises(CrmReplyError):
        records.parse_created_id_untrusted(obj, "crm.create_ticket", "ticket_id")
