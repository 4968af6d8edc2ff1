"""`eko-rtp crm bench`: look-up latency of a CRM at a fixed request rate.

Open loop: look-up n is due at ``start + n / rate`` on the trio clock, whatever the
CRM does, all over one :class:`CrmClient` connection (the way the server uses it).
Latency is measured per look-up from the moment its request is handed to the
client to the moment the parsed record is back. How late look-ups started against
their schedule is reported on its own ("schedule lag"): trio's timers wake on a
millisecond grid, so lag is a property of the load generator, not of the CRM.
Look-ups use the synthetic numbers of ``crm seed --synthetic`` in random order.
"""

from __future__ import annotations

import random
import time

import attrs
import trio

from eko_rtp.crm.address import CrmAddress
from eko_rtp.crm.client import open_crm_client
from eko_rtp.crm.errors import CrmError, CrmTimeout
from eko_rtp.crm.store import synthetic_phone
from eko_rtp.errors import UserError


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 for an empty one)."""
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(fraction * len(sorted_values) + 0.999999)))
    return sorted_values[rank - 1]


@attrs.frozen(kw_only=True)
class BenchReport:
    target: str
    rate: float
    duration: float
    sent: int
    hits: int
    misses: int
    errors: int
    timeouts: int
    elapsed: float
    latencies: tuple[float, ...]  # seconds, ascending
    lags: tuple[float, ...]  # seconds, ascending

    def lines(self) -> list[str]:
        ms = 1000.0
        lat, lag = list(self.latencies), list(self.lags)
        return [
            f"CRM lookup bench: target {self.target}, {self.rate:g} lookups/s for {self.duration:g} s over one connection",
            f"sent {self.sent}, answered {self.hits + self.misses} (hits {self.hits}, misses {self.misses}), "
            f"errors {self.errors}, timeouts {self.timeouts}, achieved {self.sent / self.elapsed:.1f}/s",
            f"latency ms: p50 {percentile(lat, 0.5) * ms:.3f} p90 {percentile(lat, 0.9) * ms:.3f} "
            f"p99 {percentile(lat, 0.99) * ms:.3f} max {(lat[-1] if lat else 0.0) * ms:.3f}",
            f"schedule lag ms: p50 {percentile(lag, 0.5) * ms:.3f} p99 {percentile(lag, 0.99) * ms:.3f} "
            f"max {(lag[-1] if lag else 0.0) * ms:.3f}",
        ]


async def run_lookup_bench(
    target: CrmAddress | str,
    *,
    rate: float,
    duration: float,
    phone_count: int,
    timeout: float = 1.0,
    seed: int = 1,
) -> BenchReport:
    """Send ``rate * duration`` look-ups on schedule and collect their latencies."""
    if rate <= 0 or duration <= 0 or phone_count < 1:
        raise UserError(f"bench needs rate > 0, duration > 0 and phones >= 1 (got {rate}, {duration}, {phone_count})")
    chooser = random.Random(seed)
    total = int(rate * duration)
    latencies: list[float] = []
    lags: list[float] = []
    counts = {"hits": 0, "misses": 0, "errors": 0, "timeouts": 0}

    async with open_crm_client(target) as client:
        if not client.connected:
            raise UserError(f"cannot connect to the CRM at {target}")
        await client.version(timeout=timeout)

        async def one(phone: str, due: float) -> None:
            begin = time.perf_counter()
            lags.append(trio.current_time() - due)
            try:
                record = await client.lookup_caller(phone, timeout)
            except CrmTimeout:
                counts["timeouts"] += 1
                return
            except CrmError:
                counts["errors"] += 1
                return
            latencies.append(time.perf_counter() - begin)
            counts["hits" if record is not None else "misses"] += 1

        start = trio.current_time() + 0.05
        async with trio.open_nursery() as nursery:
            for index in range(total):
                due = start + index / rate
                if trio.current_time() < due:
                    await trio.sleep_until(due)
                nursery.start_soon(one, synthetic_phone(chooser.randint(1, phone_count)), due)
        elapsed = trio.current_time() - start
    latencies.sort()
    lags.sort()
    return BenchReport(
        target=str(target), rate=rate, duration=duration, sent=total, elapsed=elapsed,
        latencies=tuple(latencies), lags=tuple(lags), **counts,
    )
