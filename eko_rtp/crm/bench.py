"""`eko-rtp crm bench`: look-up latency of a CRM at a fixed request rate.

Open loop: look-up n is due at ``start + n / rate`` on the trio clock, whatever the
CRM does, all over one connection. Two measurements are kept apart:

- **latency**, per look-up, from the moment its request is written to the socket to
  the moment its response is parsed into a record. This is what the CRM (server,
  kernel, loopback) costs.
- **schedule lag**, per look-up, how late its request was written against its due
  time. Trio wakes sleeping tasks on a millisecond grid (epoll's timeout unit), and
  this process shares two busy cores, so lag belongs to the load generator. It is
  reported, never added to latency; a late request is written at once, so lag never
  turns into a queue of requests waiting inside the bench.

Two modes. ``wire`` (the default) measures the CRM: one sender task writes requests
on schedule with the sans-I/O :class:`RpcConnection`, one reader task parses the
responses and stamps each one, nothing else runs in between. ``client`` measures what
the call path sees: each look-up is its own task calling :meth:`CrmClient.lookup_caller`
on a shared client, timed from the call to the returned record, so it adds the
client's lock, event and task wake-ups to the CRM's latency. ``version`` is ``wire``
asking ``crm.version`` instead: the same loopback, framing and both event loops but
no database, so it shows the floor the machine sets under any look-up (a hit is an
answer ``"1"``).

Look-ups use the synthetic numbers of ``crm seed --synthetic`` in random order.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from typing import Any

import attrs
import trio

from eko_rtp.crm.address import CrmAddress, parse_crm_address
from eko_rtp.crm.client import open_crm_client
from eko_rtp.crm.errors import CrmError, CrmReplyError, CrmTimeout, RpcProtocolError
from eko_rtp.crm.records import parse_caller_untrusted
from eko_rtp.crm.rpc import NEED_DATA, RpcConnection, RpcResponse
from eko_rtp.crm.store import synthetic_phone
from eko_rtp.errors import UserError

MODES = ("wire", "client", "version")
# Time between opening the connection and the first look-up's due time.
START_DELAY = 0.05
RECEIVE_SIZE = 65536


def percentile(sorted_values: list[float] | tuple[float, ...], fraction: float) -> float:
    """Nearest-rank percentile of an ascending sequence (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(fraction * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


def _milliseconds(sorted_values: tuple[float, ...], fractions: dict[str, float]) -> dict[str, float]:
    summary = {name: round(percentile(sorted_values, fraction) * 1000.0, 3) for name, fraction in fractions.items()}
    summary["max"] = round((sorted_values[-1] if sorted_values else 0.0) * 1000.0, 3)
    return summary


@attrs.frozen(kw_only=True)
class BenchReport:
    """What one bench run measured; latencies and lags in seconds, ascending."""

    target: str
    mode: str
    rate: float
    duration: float
    sent: int
    hits: int
    misses: int
    errors: int
    timeouts: int
    elapsed: float
    latencies: tuple[float, ...]
    lags: tuple[float, ...]

    def summary(self) -> dict[str, Any]:
        """The figures as a JSON-ready map (``--json``)."""
        return {
            "target": self.target,
            "mode": self.mode,
            "rate": self.rate,
            "duration": self.duration,
            "sent": self.sent,
            "answered": self.hits + self.misses,
            "hits": self.hits,
            "misses": self.misses,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "achieved_rate": round(self.sent / self.elapsed, 1) if self.elapsed > 0 else 0.0,
            "latency_ms": _milliseconds(self.latencies, {"p50": 0.5, "p90": 0.9, "p99": 0.99, "p999": 0.999}),
            "schedule_lag_ms": _milliseconds(self.lags, {"p50": 0.5, "p99": 0.99}),
        }

    def lines(self) -> list[str]:
        """The figures as text for a terminal."""
        s = self.summary()
        lat, lag = s["latency_ms"], s["schedule_lag_ms"]
        return [
            f"CRM lookup bench ({self.mode} mode): target {self.target}, {self.rate:g} lookups/s "
            f"for {self.duration:g} s over one connection",
            f"sent {s['sent']}, answered {s['answered']} (hits {s['hits']}, misses {s['misses']}), "
            f"errors {s['errors']}, timeouts {s['timeouts']}, achieved {s['achieved_rate']:.1f}/s",
            f"latency ms ({'lookup_caller call -> return' if self.mode == 'client' else 'written -> parsed'}): "
            f"p50 {lat['p50']:.3f} p90 {lat['p90']:.3f} p99 {lat['p99']:.3f} "
            f"p99.9 {lat['p999']:.3f} max {lat['max']:.3f}",
            f"schedule lag ms (bench lateness, not in latency): p50 {lag['p50']:.3f} p99 {lag['p99']:.3f} "
            f"max {lag['max']:.3f}",
        ]


@attrs.define
class _Tally:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: list[float] = attrs.Factory(list)
    lags: list[float] = attrs.Factory(list)


async def _connect(address: CrmAddress) -> trio.abc.Stream:
    try:
        if address.path is not None:
            return await trio.open_unix_socket(address.path)
        assert address.host is not None and address.port is not None
        return await trio.open_tcp_stream(address.host, address.port)
    except OSError as error:
        raise UserError(f"cannot connect to the CRM at {address}: {error.strerror or error}") from None


async def _bench_wire(
    address: CrmAddress, phones: Iterator[str], *, rate: float, timeout: float, tally: _Tally, version_only: bool = False
) -> float:
    """Run the look-ups (or ``crm.version`` requests) over a raw connection; returns the schedule's elapsed time."""
    stream = await _connect(address)
    rpc = RpcConnection()
    written: dict[int, float] = {}  # msgid -> perf_counter() when its request was written
    sending_done = False
    drained = trio.Event()

    def answered(response: RpcResponse) -> None:
        sent_at = written.pop(response.msgid, None)
        if sent_at is None:
            tally.errors += 1  # an answer to nothing we asked: the CRM mixed up msgids
            return
        if response.error is not None:
            tally.errors += 1
            return
        if version_only:
            record = response.result if response.result == "1" else None
        else:
            try:
                record = parse_caller_untrusted(response.result)
            except CrmReplyError:
                tally.errors += 1
                return
        latency = time.perf_counter() - sent_at
        if latency > timeout:
            tally.timeouts += 1
        else:
            tally.latencies.append(latency)
            if record is None:
                tally.misses += 1
            else:
                tally.hits += 1

    failure: list[str] = []  # why the connection ended early, if it did

    async def read(cancel_scope: trio.CancelScope) -> None:
        try:
            while True:
                data = await stream.receive_some(RECEIVE_SIZE)
                if not data:
                    failure.append(f"the CRM at {address} closed the connection ({len(written)} look-ups unanswered)")
                    break
                rpc.receive_data(data)
                while (event := rpc.next_event()) is not NEED_DATA:
                    if not isinstance(event, RpcResponse):
                        raise RpcProtocolError(f"the CRM sent a {type(event).__name__}, expected only responses")
                    answered(event)
                if sending_done and not written:
                    drained.set()
        except trio.BrokenResourceError as error:
            failure.append(f"the connection to the CRM at {address} failed: {error}")
        except RpcProtocolError as error:
            failure.append(f"the CRM at {address} broke the protocol: {error}")
        cancel_scope.cancel()

    elapsed = 0.0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, nursery.cancel_scope)
            start = trio.current_time() + START_DELAY
            for index, phone in enumerate(phones):
                due = start + index / rate
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                msgid, data = rpc.send_request(*(("crm.version", []) if version_only else ("crm.lookup_caller", [phone])))
                written[msgid] = time.perf_counter()
                tally.lags.append(trio.current_time() - due)
                try:
                    await stream.send_all(data)
                except trio.BrokenResourceError as error:
                    failure.append(f"writing to the CRM at {address} failed: {error}")
                    break
            elapsed = trio.current_time() - start
            sending_done = True
            if written and not failure:
                with trio.move_on_after(timeout):
                    await drained.wait()
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
    if failure:
        raise UserError(failure[0])
    tally.timeouts += len(written)  # never answered
    return elapsed


async def _bench_client(address: CrmAddress, phones: Iterator[str], *, rate: float, timeout: float, tally: _Tally) -> float:
    """Run the look-ups through :class:`CrmClient`, one task each (the call path's way)."""
    async with open_crm_client(address) as client:
        if not client.connected:
            raise UserError(f"cannot connect to the CRM at {address}")
        await client.version(timeout=timeout)

        async def one(phone: str, due: float) -> None:
            tally.lags.append(trio.current_time() - due)
            begin = time.perf_counter()
            try:
                record = await client.lookup_caller(phone, timeout)
            except CrmTimeout:
                tally.timeouts += 1
                return
            except CrmError:
                tally.errors += 1
                return
            tally.latencies.append(time.perf_counter() - begin)
            if record is None:
                tally.misses += 1
            else:
                tally.hits += 1

        start = trio.current_time() + START_DELAY
        async with trio.open_nursery() as nursery:
            for index, phone in enumerate(phones):
                due = start + index / rate
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                nursery.start_soon(one, phone, due)
            elapsed = trio.current_time() - start
    return elapsed


async def run_lookup_bench(
    target: CrmAddress | str,
    *,
    rate: float,
    duration: float,
    phone_count: int,
    timeout: float = 1.0,
    seed: int = 1,
    mode: str = "wire",
) -> BenchReport:
    """Send ``rate * duration`` look-ups on schedule and collect their latencies."""
    if rate <= 0 or duration <= 0 or phone_count < 1 or timeout <= 0:
        raise UserError(
            f"bench needs rate > 0, duration > 0, phones >= 1 and timeout > 0 "
            f"(got {rate}, {duration}, {phone_count}, {timeout})"
        )
    if mode not in MODES:
        raise UserError(f"bench mode must be one of {', '.join(MODES)}, got {mode!r}")
    address = parse_crm_address(target) if isinstance(target, str) else target
    total = int(rate * duration)
    chooser = random.Random(seed)
    phones = (synthetic_phone(chooser.randint(1, phone_count)) for _ in range(total))
    tally = _Tally()
    if mode == "client":
        elapsed = await _bench_client(address, phones, rate=rate, timeout=timeout, tally=tally)
    else:
        elapsed = await _bench_wire(address, phones, rate=rate, timeout=timeout, tally=tally, version_only=mode == "version")
    return BenchReport(
        target=str(address), mode=mode, rate=rate, duration=duration, sent=total, elapsed=elapsed,
        hits=tally.hits, misses=tally.misses, errors=tally.errors, timeouts=tally.timeouts,
        latencies=tuple(sorted(tally.latencies)), lags=tuple(sorted(tally.lags)),
    )
