"""The CRM client against a hostile fake CRM (a real trio server on loopback).

The fake reads real msgpack-RPC requests and misbehaves according to the phone
number asked for. After each misbehaviour the same client must still serve a
normal look-up (reconnecting where the connection had to go).
"""

from __future__ import annotations

import datetime
import functools
import time

import attrs
import msgpack
import pytest
import trio

from eko_rtp.crm.client import CrmClient, CrmClientSettings, open_crm_client
from eko_rtp.crm.errors import CrmRemoteError, CrmReplyError, CrmTimeout, CrmUnavailable, RpcProtocolError
from eko_rtp.crm.records import CallbackRequest, CallerRecord, CallLog, TicketRequest
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcNotification, RpcRequest

GOOD = "+33612345678"
# 1,001 bytes, a list 1001 deep: its repr ended the client's task, and the server (issue 17).
DEEP = b"\x91" * 1000 + b"\xc0"
FAST = CrmClientSettings(backoff_initial=0.01, backoff_max=0.05, connect_timeout=1.0)


class FakeCrm:
    def __init__(self) -> None:
        self.connections = 0
        self.notifications: list[RpcNotification] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        rpc = RpcConnection()
        async with stream:
            while data := await stream.receive_some(65536):
                rpc.receive_data(data)
                while (event := rpc.next_event()) is not NEED_DATA:
                    if isinstance(event, RpcNotification):
                        self.notifications.append(event)
                        continue
                    assert isinstance(event, RpcRequest)
                    if not await self.answer(stream, rpc, event):
                        return

    async def answer(self, stream: trio.SocketStream, rpc: RpcConnection, request: RpcRequest) -> bool:
        if request.method in ("crm.create_ticket", "crm.request_callback"):
            # The hand-overs misbehave according to the call_id asked for.
            reply = HANDOVER_REPLIES[request.params[0]["call_id"]]
            await stream.send_all(rpc.send_response(request.msgid, **reply))
            return True
        phone = request.params[0] if request.params else None
        if phone == GOOD:
            await stream.send_all(rpc.send_response(request.msgid, result={"client_id": "c1", "name": "Camille"}))
        elif phone == "error":
            await stream.send_all(rpc.send_response(request.msgid, error=[2, "phone refused"]))
        elif phone == "error-string":
            await stream.send_all(rpc.send_response(request.msgid, error="database is down"))
        elif phone == "garbage":
            await stream.send_all(b"\xc1\xc1\xc1 not msgpack")
        elif phone == "deep":
            await stream.send_all(DEEP)
        elif phone == "deep-result":
            await stream.send_all(b"\x94\x01" + msgpack.packb(request.msgid) + b"\xc0" + DEEP)
        elif phone == "wrong-types":
            await stream.send_all(rpc.send_response(request.msgid, result={"client_id": 5}))
        elif phone == "oversized-bin":
            await stream.send_all(rpc.send_response(request.msgid, result=b"\x00" * 100_000))
        elif phone == "close-mid-response":
            await stream.send_all(rpc.send_response(request.msgid, result={"client_id": "c1"})[:6])
            return False
        elif phone == "close":
            return False
        elif phone == "never":
            pass
        elif phone == "wrong-msgid":
            await stream.send_all(rpc.send_response((request.msgid + 1000) % 2**32, result=None))
        return True


HANDOVER_REPLIES = {
    "good": {"result": {"ticket_id": "T-1", "callback_id": "C-1"}},
    "nil": {"result": None},
    "number": {"result": {"ticket_id": 1, "callback_id": 1}},
    "empty": {"result": {"ticket_id": "", "callback_id": ""}},
    "error": {"error": [3, "database is locked"]},
}


async def start_fake(nursery: trio.Nursery) -> tuple[FakeCrm, str]:
    fake = FakeCrm()
    listeners = await nursery.start(functools.partial(trio.serve_tcp, fake.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return fake, f"127.0.0.1:{port}"


async def assert_still_usable(client: CrmClient) -> None:
    with trio.fail_after(5):
        await client.wait_connected()
    assert await client.lookup_caller(GOOD, 2.0) == CallerRecord(client_id="c1", name="Camille")


@pytest.mark.parametrize(
    ("phone", "error_type", "message", "reconnects"),
    [
        ("error", CrmRemoteError, "CRM error 2 for crm.lookup_caller: phone refused", False),
        ("error-string", CrmRemoteError, "CRM error for crm.lookup_caller: database is down", False),
        ("wrong-types", CrmReplyError, "bad crm.lookup_caller reply: client_id must be a string, got int", False),
        ("garbage", RpcProtocolError, "CRM at {address} broke the protocol: undecodable msgpack: ", True),
        ("deep", RpcProtocolError, "CRM at {address} broke the protocol: message nests deeper than 16 levels", True),
        ("deep-result", RpcProtocolError,
         "CRM at {address} broke the protocol: message nests deeper than 16 levels", True),
        ("oversized-bin", RpcProtocolError,
         "CRM at {address} broke the protocol: undecodable msgpack: 100000 exceeds max_bin_len(65536)", True),
        ("close-mid-response", CrmUnavailable, "CRM at {address} closed the connection mid-message", True),
        ("close", CrmUnavailable, "CRM at {address} closed the connection", True),
    ],
)
async def test_hostile_answer_gives_typed_error_and_client_stays_usable(phone, error_type, message, reconnects):
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            assert await client.lookup_caller(GOOD, 2.0) is not None
            with trio.fail_after(2):
                with pytest.raises(error_type) as caught:
                    await client.lookup_caller(phone, 1.0)
            expected = message.format(address=address)
            if expected.endswith(": "):
                assert str(caught.value).startswith(expected)
            else:
                assert str(caught.value) == expected
            await assert_still_usable(client)
            assert fake.connections == (2 if reconnects else 1)
            assert client.stats.errors == 1
            assert client.stats.timeouts == 0
            assert client.stats.lookups == 3
            assert client.stats.lookup_hits == 2
            assert len(client.stats.lookup_latencies) == 2
        nursery.cancel_scope.cancel()


async def test_never_answering_honours_the_deadline_and_late_answers_are_ignored():
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            began = time.monotonic()
            with pytest.raises(CrmTimeout) as caught:
                await client.lookup_caller("never", 0.2)
            elapsed = time.monotonic() - began
            assert 0.2 <= elapsed < 0.7
            assert str(caught.value) == f"CRM at {address} gave no answer to crm.lookup_caller within 200 ms"
            # An answer nobody waits for (unknown msgid) is counted and dropped.
            with pytest.raises(CrmTimeout):
                await client.lookup_caller("wrong-msgid", 0.2)
            assert client.stats.late_responses == 1
            await assert_still_usable(client)
            assert client.stats.timeouts == 2
            assert fake.connections == 1
        nursery.cancel_scope.cancel()


async def test_connection_drop_fails_every_pending_request_at_once():
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            failures: list[tuple[str, str]] = []

            async def lookup(phone: str) -> None:
                try:
                    await client.lookup_caller(phone, 10.0)
                except CrmUnavailable as error:
                    failures.append((phone, str(error)))

            began = time.monotonic()
            async with trio.open_nursery() as waiting:
                for _ in range(5):
                    waiting.start_soon(lookup, "never")
                await trio.sleep(0.05)
                waiting.start_soon(lookup, "close")
            assert time.monotonic() - began < 2.0  # not the 10 s deadline
            assert sorted(failures) == [("close", f"CRM at {address} closed the connection")] + [
                ("never", f"CRM at {address} closed the connection")
            ] * 5
            await assert_still_usable(client)
        nursery.cancel_scope.cancel()


async def test_concurrent_lookups_share_one_connection():
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            results = []

            async def lookup() -> None:
                results.append(await client.lookup_caller(GOOD, 2.0))

            async with trio.open_nursery() as lookups:
                for _ in range(50):
                    lookups.start_soon(lookup)
            assert results == [CallerRecord(client_id="c1", name="Camille")] * 50
            assert fake.connections == 1
        nursery.cancel_scope.cancel()


async def test_log_call_is_a_notification_and_never_blocks():
    call_log = CallLog(call_id="c@x", phone=GOOD, greeting=("greet", "welcome"), duration_ms=1500, outcome="completed")
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            client.log_call(call_log)
            await client.lookup_caller(GOOD, 2.0)  # the notification was queued first
            with trio.fail_after(2):
                # The fake may read it before the client's writer counts it as sent.
                while not fake.notifications or client.stats.notifications_sent < 1:
                    await trio.sleep(0.01)
            assert fake.notifications == [RpcNotification(method="crm.log_call", params=[call_log.to_wire()])]
            assert client.stats.notifications_sent == 1
        nursery.cancel_scope.cancel()


async def test_unreachable_crm_fails_fast_and_drops_notifications_beyond_the_queue():
    # A port with nothing listening: bind one, note it, close it.
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    settings = CrmClientSettings(backoff_initial=0.01, backoff_max=0.05, notification_queue_size=2)
    async with open_crm_client(f"127.0.0.1:{port}", settings=settings) as client:
        assert not client.connected
        with pytest.raises(CrmUnavailable, match=rf"^no connection to CRM at 127.0.0.1:{port}$"):
            await client.lookup_caller(GOOD, 1.0)
        log = CallLog(call_id="c", phone=None, greeting=("greet",), duration_ms=0, outcome="failed")
        for _ in range(3):
            client.log_call(log)
        assert client.stats.notifications_dropped == 1
        assert client.stats.errors == 1


ASKED = datetime.datetime(2026, 3, 6, 14, 5, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize(
    ("call_id", "error_type", "ticket_message", "callback_message"),
    [
        ("nil", CrmReplyError, "bad crm.create_ticket reply: result must be a map, got NoneType",
         "bad crm.request_callback reply: result must be a map, got NoneType"),
        ("number", CrmReplyError, "bad crm.create_ticket reply: ticket_id must be a string, got int",
         "bad crm.request_callback reply: callback_id must be a string, got int"),
        ("empty", CrmReplyError, "bad crm.create_ticket reply: ticket_id must not be empty",
         "bad crm.request_callback reply: callback_id must not be empty"),
        ("error", CrmRemoteError, "CRM error 3 for crm.create_ticket: database is locked",
         "CRM error 3 for crm.request_callback: database is locked"),
    ],
)
async def test_hostile_answers_to_hand_overs_give_typed_errors(call_id, error_type, ticket_message, callback_message):
    ticket = TicketRequest(call_id=call_id, phone=None, reason="", category="other", created_at=ASKED)
    callback = CallbackRequest(call_id=call_id, phone=GOOD, reason="", not_before=None, queue="technicians")
    async with trio.open_nursery() as nursery:
        fake, address = await start_fake(nursery)
        async with open_crm_client(address, settings=FAST) as client:
            with pytest.raises(error_type) as caught:
                await client.create_ticket(ticket, 1.0)
            assert str(caught.value) == ticket_message
            with pytest.raises(error_type) as caught:
                await client.request_callback(callback, 1.0)
            assert str(caught.value) == callback_message
            assert client.stats.errors == 2
            assert await client.create_ticket(attrs.evolve(ticket, call_id="good"), 1.0) == "T-1"
            assert await client.request_callback(attrs.evolve(callback, call_id="good"), 1.0) == "C-1"
            assert fake.connections == 1
        nursery.cancel_scope.cancel()
