"""msgpack-RPC framing: exact bytes both ways, limits, and every bad shape."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import pytest

from eko_rtp.crm.errors import RpcProtocolError
from eko_rtp.crm.rpc import (
    NEED_DATA,
    RpcConnection,
    RpcLimits,
    RpcNotification,
    RpcRequest,
    RpcResponse,
    describe_untrusted,
    nests_deeper_than,
)

VERSION_REQUEST = b"\x94\x00\x00\xabcrm.version\x90"
LOOKUP_REQUEST = b"\x94\x00\x07\xb1crm.lookup_caller\x91\xac+33612345678"
NIL_RESPONSE = b"\x94\x01\x07\xc0\xc0"
ERROR_RESPONSE = b"\x94\x01\x07\x92\x01\xa3bad\xc0"
LOG_NOTIFICATION = b"\x93\x02\xaccrm.log_call\x91\x81\xa8duration\x05"


def test_send_request_allocates_msgids_and_encodes_exact_bytes():
    connection = RpcConnection()
    assert connection.send_request("crm.version", []) == (0, VERSION_REQUEST)
    msgid, data = connection.send_request("crm.version", ())
    assert msgid == 1
    assert data == b"\x94\x00\x01\xabcrm.version\x90"


def test_msgid_wraps_at_2_to_the_32():
    connection = RpcConnection()
    connection._next_msgid = 2**32 - 1
    assert connection.send_request("m", [])[0] == 2**32 - 1
    assert connection.send_request("m", [])[0] == 0


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"result": None}, NIL_RESPONSE),
        ({"error": [1, "bad"]}, ERROR_RESPONSE),
        ({"result": {"a": b"\x00"}}, b"\x94\x01\x07\xc0\x81\xa1a\xc4\x01\x00"),
    ],
)
def test_send_response_exact_bytes(kwargs, expected):
    assert RpcConnection().send_response(7, **kwargs) == expected


def test_send_notification_exact_bytes():
    assert RpcConnection().send_notification("crm.log_call", [{"duration": 5}]) == LOG_NOTIFICATION


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (VERSION_REQUEST, RpcRequest(msgid=0, method="crm.version", params=[])),
        (LOOKUP_REQUEST, RpcRequest(msgid=7, method="crm.lookup_caller", params=["+33612345678"])),
        (NIL_RESPONSE, RpcResponse(msgid=7, error=None, result=None)),
        (ERROR_RESPONSE, RpcResponse(msgid=7, error=[1, "bad"], result=None)),
        (LOG_NOTIFICATION, RpcNotification(method="crm.log_call", params=[{"duration": 5}])),
    ],
)
def test_receive_whole_message(data, expected):
    connection = RpcConnection()
    connection.receive_data(data)
    assert connection.next_event() == expected
    assert connection.next_event() is NEED_DATA
    assert connection.buffered_bytes == 0


def test_receive_byte_by_byte_then_two_in_one_chunk():
    connection = RpcConnection()
    for index, byte in enumerate(LOOKUP_REQUEST):
        assert connection.next_event() is NEED_DATA
        connection.receive_data(bytes([byte]))
        assert connection.buffered_bytes == (index + 1 if index + 1 < len(LOOKUP_REQUEST) else len(LOOKUP_REQUEST))
    assert connection.next_event() == RpcRequest(msgid=7, method="crm.lookup_caller", params=["+33612345678"])
    connection.receive_data(NIL_RESPONSE + ERROR_RESPONSE[:3])
    assert connection.next_event() == RpcResponse(msgid=7, error=None, result=None)
    assert connection.next_event() is NEED_DATA
    assert connection.buffered_bytes == 3
    connection.receive_data(ERROR_RESPONSE[3:])
    assert connection.next_event() == RpcResponse(msgid=7, error=[1, "bad"], result=None)


def test_round_trip_between_two_connections():
    client, server = RpcConnection(), RpcConnection()
    msgid, data = client.send_request("crm.lookup_caller", ["+33612345678"])
    server.receive_data(data)
    request = server.next_event()
    assert request == RpcRequest(msgid=msgid, method="crm.lookup_caller", params=["+33612345678"])
    client.receive_data(server.send_response(request.msgid, result={"client_id": "c1"}))
    assert client.next_event() == RpcResponse(msgid=msgid, error=None, result={"client_id": "c1"})


BAD_MESSAGES = [
    (b"\xc1", "undecodable msgpack: "),  # 0xc1 is never used in msgpack
    (msgpack.packb(5), "message is not a non-empty array: 5"),
    (msgpack.packb([]), "message is not a non-empty array: []"),
    (msgpack.packb([3, 1, "m", []]), "unknown message type 3 (expected 0, 1 or 2)"),
    (msgpack.packb([True, 1, "m", []]), "unknown message type True (expected 0, 1 or 2)"),
    (msgpack.packb([0, 1, "m"]), "request must have 4 elements, got 3"),
    (msgpack.packb([0, -1, "m", []]), "request msgid must be an int in [0, 2**32), got -1"),
    (msgpack.packb([0, 2**32, "m", []]), "request msgid must be an int in [0, 2**32), got 4294967296"),
    (msgpack.packb([0, 1, b"m", []]), "request method must be a str, got bytes"),
    (msgpack.packb([0, 1, "m", {}]), "request params must be an array, got dict"),
    (msgpack.packb([1, "x", None, None]), "response msgid must be an int in [0, 2**32), got 'x'"),
    (msgpack.packb([1, 1, None]), "response must have 4 elements, got 3"),
    (msgpack.packb([2, "m", [], 1]), "notification must have 3 elements, got 4"),
    (msgpack.packb([2, 5, []]), "notification method must be a str, got int"),
    (msgpack.packb([1, 1, None, msgpack.ExtType(1, b"x")]), "undecodable msgpack: 2 exceeds max_ext_len(0)"),
    (b"\x94\x01\x01\xc0\xa2\xff\xfe", "undecodable msgpack: 'utf-8' codec can't decode byte 0xff"),
    (msgpack.packb([1, 1, None, {1: 2}]), "undecodable msgpack: int is not allowed for map key"),
    # Containers are described, never repr'd (a repr of a deep one recursed out of the process).
    (msgpack.packb([[1, 2], 1, "m", []]), "unknown message type an array of 2 (expected 0, 1 or 2)"),
    (msgpack.packb({"a": 1}), "message is not a non-empty array: a map of 1"),
    (msgpack.packb(["x" * 100, 1]), "unknown message type '" + "x" * 56 + "... (expected 0, 1 or 2)"),
]

# 1,001 bytes: a list 1001 deep, within the C decoder's own stack (1024); its repr
# used to raise RecursionError out of next_event and end `crm serve` (issue 17).
DEEP_ARRAYS = b"\x91" * 1000 + b"\xc0"
DEEP_MAPS = b"\x81\xa1k" * 1000 + b"\xc0"
DEEPER_THAN_THE_DECODER = b"\x91" * 5000 + b"\xc0"  # msgpack's StackError


def nested(depth: int) -> list:
    value: list = [None]
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "data",
    [
        DEEP_ARRAYS,
        DEEP_MAPS,
        DEEPER_THAN_THE_DECODER,
        msgpack.packb([1, 1, None, nested(16)]),  # 17 levels: the message itself is level 1
        msgpack.packb([1, 1, {"a": [{"b": nested(13)}]}, None]),
    ],
)
def test_nesting_deeper_than_the_limit_breaks_the_connection(data):
    connection = RpcConnection()
    connection.receive_data(data)
    with pytest.raises(RpcProtocolError, match=r"^message nests deeper than 16 levels$"):
        connection.next_event()
    assert connection.broken is not None


def test_nesting_at_the_limit_is_a_message():
    connection = RpcConnection()
    connection.receive_data(msgpack.packb([1, 1, None, nested(15)]) + msgpack.packb([1, 2, None, [{"a": nested(13)}]]))
    assert connection.next_event() == RpcResponse(msgid=1, error=None, result=nested(15))
    assert connection.next_event() == RpcResponse(msgid=2, error=None, result=[{"a": nested(13)}])
    shallow = RpcConnection(limits=RpcLimits(max_depth=2))
    shallow.receive_data(msgpack.packb([1, 3, None, []]) + msgpack.packb([1, 4, None, [[]]]))
    assert shallow.next_event() == RpcResponse(msgid=3, error=None, result=[])
    with pytest.raises(RpcProtocolError, match=r"^message nests deeper than 2 levels$"):
        shallow.next_event()


def test_the_pure_python_decoder_recursing_is_a_protocol_error_too(monkeypatch):
    # msgpack's fallback decoder recurses where the C one has a stack: RecursionError.
    import msgpack.fallback

    monkeypatch.setattr(msgpack, "Unpacker", msgpack.fallback.Unpacker)
    connection = RpcConnection()
    connection.receive_data(b"\x91" * 3000 + b"\xc0")
    with pytest.raises(RpcProtocolError, match=r"^message nests deeper than 16 levels$"):
        connection.next_event()
    connection = RpcConnection()
    connection.receive_data(DEEP_ARRAYS[-40:])
    with pytest.raises(RpcProtocolError, match=r"^message nests deeper than 16 levels$"):
        connection.next_event()


@pytest.mark.parametrize(
    ("value", "limit", "expected"),
    [
        (None, 0, False),
        ("x", 0, False),
        ([], 0, True),
        ([], 1, False),
        ([1, {"a": "b"}], 1, True),
        ([1, {"a": "b"}], 2, False),
        ({"a": [1, [2]]}, 2, True),
        ({"a": [1, [2]]}, 3, False),
        ([[0] * 10_000] * 100, 2, False),
    ],
)
def test_nests_deeper_than(value, limit, expected):
    assert nests_deeper_than(value, limit) is expected


def test_nests_deeper_than_does_not_recurse():
    # Deeper than Python's recursion limit, so any recursive walk would raise.
    value = nested(50_000)
    assert nests_deeper_than(value, 49_999) is True
    assert nests_deeper_than(value, 50_000) is False


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "None"),
        (True, "True"),
        (-3, "-3"),
        (1.5, "1.5"),
        ("crm.lookup", "'crm.lookup'"),
        (b"\x00\xff", "b'\\x00\\xff'"),
        ("é" * 100, "'" + "é" * 56 + "..."),
        (b"\xff" * 100, "b'" + "\\xff" * 13 + "\\xf..."),
        ([], "[]"),
        ({}, "{}"),
        (nested(50_000), "an array of 1"),
        ({"a": nested(50_000), "b": 2}, "a map of 2"),
    ],
)
def test_describe_untrusted_is_short_and_never_looks_inside(value, text):
    assert describe_untrusted(value) == text


@pytest.mark.parametrize(("data", "message"), BAD_MESSAGES)
def test_bad_messages_raise_and_break_the_connection(data, message):
    connection = RpcConnection()
    connection.receive_data(data)
    with pytest.raises(RpcProtocolError) as caught:
        connection.next_event()
    assert str(caught.value).startswith(message)
    # Out of sync for good: a valid message afterwards is refused too.
    assert connection.broken is not None
    with pytest.raises(RpcProtocolError):
        connection.receive_data(NIL_RESPONSE)
    with pytest.raises(RpcProtocolError):
        connection.next_event()


LIMITS = RpcLimits(max_message_bytes=64, max_str_len=8, max_bin_len=8, max_array_len=4, max_map_len=2)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([1, 1, None, "x" * 9], "undecodable msgpack: 9 exceeds max_str_len(8)"),
        ([1, 1, None, b"x" * 9], "undecodable msgpack: 9 exceeds max_bin_len(8)"),
        ([1, 1, None, [0] * 5], "undecodable msgpack: 5 exceeds max_array_len(4)"),
        ([1, 1, None, {"a": 1, "b": 2, "c": 3}], "undecodable msgpack: 3 exceeds max_map_len(2)"),
    ],
)
def test_limits_refuse_oversized_elements(value, message):
    connection = RpcConnection(limits=LIMITS)
    connection.receive_data(msgpack.packb(value))
    with pytest.raises(RpcProtocolError, match=r"^" + message.replace("(", r"\(").replace(")", r"\)") + "$"):
        connection.next_event()


def test_incomplete_message_over_the_buffer_cap_is_refused():
    connection = RpcConnection(limits=LIMITS)
    connection.receive_data(b"\x94\x01\x01\xc0")
    assert connection.next_event() is NEED_DATA
    connection.receive_data(b"\xc5\x00\x80" + b"\x00" * 70)  # a 128-byte bin, 70 of it so far
    with pytest.raises(RpcProtocolError, match=r"^incomplete message exceeds 64 bytes$"):
        connection.next_event()
    assert connection.buffered_bytes == 77
    with pytest.raises(RpcProtocolError, match=r"^incomplete message exceeds 64 bytes$"):
        connection.receive_data(b"\x00")  # a broken stream stays broken


def test_limits_validate():
    with pytest.raises(ValueError, match=r"^RpcLimits.max_bin_len must be a non-negative int, got -1$"):
        RpcLimits(max_bin_len=-1)
    with pytest.raises(ValueError, match=r"^RpcLimits.max_depth must be from 1 to 256, got 0$"):
        RpcLimits(max_depth=0)
    with pytest.raises(ValueError, match=r"^RpcLimits.max_depth must be from 1 to 256, got 1000$"):
        RpcLimits(max_depth=1000)


def test_core_modules_import_neither_trio_nor_socket():
    code = (
        "import sys\n"
        "import eko_rtp.crm.rpc, eko_rtp.crm.records, eko_rtp.crm.phone, eko_rtp.crm.errors, eko_rtp.call.greeting\n"
        "print(sorted(m for m in ('trio', 'socket') if m in sys.modules))\n"
    )
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert output.strip() == "[]"
