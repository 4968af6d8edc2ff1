"""`eko-rtp crm ...`: run, seed, query and benchmark the embedded CRM.

- ``crm serve --listen ADDRESS --db PATH``: the msgpack-RPC server until SIGINT/SIGTERM.
- ``crm seed --db PATH [--synthetic N]``: the sample customers (docs/crm-rpc.md), and
  optionally synthetic clients 1..N; upserts, so running it twice changes nothing.
- ``crm lookup --target ADDRESS PHONE``: one look-up, printed (for demos).
- ``crm bench --target ADDRESS --rate R --duration S [--mode wire|client|version] [--json]``:
  look-up latency percentiles (written -> parsed) and the bench's own schedule lag.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time

import trio

from eko_rtp.crm.address import parse_crm_address
from eko_rtp.crm.bench import MODES, run_lookup_bench
from eko_rtp.crm.client import open_crm_client
from eko_rtp.crm.errors import CrmError
from eko_rtp.crm.phone import normalise_phone
from eko_rtp.crm.server import serve_crm
from eko_rtp.crm.store import DEFAULT_DB_PATH, SAMPLE_CLIENTS, CrmStore, synthetic_clients
from eko_rtp.errors import UserError, first_leaf

log = logging.getLogger("eko_rtp.crm")

DEFAULT_LISTEN = "127.0.0.1:7070"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("crm", help="the embedded CRM (msgpack-RPC over SQLite)")
    commands = parser.add_subparsers(dest="crm_command", required=True, metavar="ACTION")

    serve = commands.add_parser("serve", help="serve the CRM until SIGINT/SIGTERM")
    serve.add_argument("--listen", default=DEFAULT_LISTEN, help=f"HOST:PORT, [IPv6]:PORT or socket path (default {DEFAULT_LISTEN})")
    serve.add_argument("--db", default=DEFAULT_DB_PATH, help=f"SQLite file (default {DEFAULT_DB_PATH})")
    serve.set_defaults(func=_serve)

    seed = commands.add_parser("seed", help="load the sample customers (idempotent)")
    seed.add_argument("--db", default=DEFAULT_DB_PATH, help=f"SQLite file (default {DEFAULT_DB_PATH})")
    seed.add_argument("--synthetic", type=_positive_int, metavar="N", help="also upsert synthetic clients 1..N")
    seed.set_defaults(func=_seed)

    lookup = commands.add_parser("lookup", help="look one number up and print the record")
    lookup.add_argument("--target", default=DEFAULT_LISTEN, help=f"CRM address (default {DEFAULT_LISTEN})")
    lookup.add_argument("--timeout", type=_positive_float, default=1.0, help="seconds (default 1)")
    lookup.add_argument("phone")
    lookup.set_defaults(func=_lookup)

    bench = commands.add_parser("bench", help="measure look-up latency at a fixed rate")
    bench.add_argument("--target", default=DEFAULT_LISTEN, help=f"CRM address (default {DEFAULT_LISTEN})")
    bench.add_argument("--rate", type=_positive_float, default=2000.0, help="look-ups per second (default 2000)")
    bench.add_argument("--duration", type=_positive_float, default=10.0, help="seconds (default 10)")
    bench.add_argument("--phones", type=_positive_int, default=1_000_000,
                       help="pick numbers among synthetic clients 1..N (default 1000000)")
    bench.add_argument("--timeout", type=_positive_float, default=1.0, help="per look-up deadline in seconds (default 1)")
    bench.add_argument("--mode", choices=MODES, default="wire",
                       help="wire: the CRM's latency on a raw connection (default); "
                            "client: through CrmClient, one task per look-up, as the call path sees it; "
                            "version: wire mode asking crm.version, the floor without the database")
    bench.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    bench.set_defaults(func=_bench)


def _serve(args: argparse.Namespace) -> int:
    address = parse_crm_address(args.listen)

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(lambda task_status: serve_crm(address, args.db, task_status=task_status))
                async for signum in signals:
                    log.info("CRM stopping on %s", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()

    try:
        trio.run(main)
    except BaseExceptionGroup as group:
        # Opening the listeners says what is wrong (a port taken, a path not writable) as a
        # UserError; the nursery wraps it in a group, which would print as a traceback.
        if group.subgroup(lambda error: not isinstance(error, (BaseExceptionGroup, UserError))):
            raise
        raise first_leaf(group) from None
    return 0


def _seed(args: argparse.Namespace) -> int:
    store = CrmStore(args.db)
    try:
        started = time.monotonic()
        samples = store.upsert(SAMPLE_CLIENTS)
        synthetic = store.upsert(synthetic_clients(args.synthetic)) if args.synthetic else 0
        counts = store.counts()
    finally:
        store.close()
    print(
        f"seeded {samples} sample and {synthetic} synthetic clients into {args.db} in "
        f"{time.monotonic() - started:.1f} s; now {counts['clients']} clients, {counts['tickets']} tickets"
    )
    return 0


def _lookup(args: argparse.Namespace) -> int:
    phone = normalise_phone(args.phone)
    if phone is None:
        raise UserError(f"{args.phone!r} is not a phone number")

    async def main() -> int:
        async with open_crm_client(args.target) as client:
            try:
                record = await client.lookup_caller(phone, args.timeout)
            except CrmError as error:
                print(f"lookup failed: {error}")
                return 1
        print("null" if record is None else json.dumps(record.to_wire(), ensure_ascii=False))
        return 0

    return trio.run(main)


def _bench(args: argparse.Namespace) -> int:
    report = trio.run(
        lambda: run_lookup_bench(
            args.target, rate=args.rate, duration=args.duration, phone_count=args.phones, timeout=args.timeout,
            mode=args.mode,
        )
    )
    if args.json:
        print(json.dumps(report.summary()))
    else:
        for line in report.lines():
            print(line)
    return 0 if report.errors == 0 and report.timeouts == 0 else 1
