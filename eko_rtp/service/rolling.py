"""A rolling restart: the workers of a box restarted one at a time, none dropping a call.

Theory of operation: restarting a worker is SIGTERM (it drains: new INVITEs and
OPTIONS get 503, so the front's next probe takes it out of the rotation, and an
INVITE that reaches it meanwhile fails over; calls in progress finish), its exit,
then a new process that answers OPTIONS 200 again. The one rule is never to take a
worker out while it is the last one taking calls, so before each worker:

1. every other worker must answer OPTIONS 200, and, when the front can be asked,
   at least one other must be in its rotation; otherwise stop, naming which;
2. restart the worker (``systemctl restart`` returns once the new one is ready,
   having waited for the drain);
3. wait until it answers OPTIONS 200 ...
4. ... and until the front routes to it again (its flags say active), or, with no
   front to ask, ``settle`` seconds (two of its probe intervals).

Each wait is bounded; one that runs out stops the restart with the rest untouched.
The procedure does no I/O itself: the restart, the probe, the front query, the
clock and the sleep are given to it (:class:`Operations`), so its rules are tested
with fakes and the CLI (eko_rtp/cli/rolling_cmd.py) wires systemctl, OPTIONS over
UDP and kamcmd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs

from eko_rtp.errors import UserError
from eko_rtp.service.workers import Worker


@attrs.frozen(kw_only=True)
class Operations:
    """The I/O a rolling restart needs."""

    restart: Callable[[Worker], None]  # blocks until the worker is stopped (drained) and started again
    probe: Callable[[Worker], int | None]  # status of its answer to OPTIONS, None: no answer
    in_rotation: Callable[[Worker], bool] | None  # does the front route new calls to it (None: no front to ask)
    now: Callable[[], float]
    sleep: Callable[[float], None]
    report: Callable[[str], None] = lambda line: None


@attrs.frozen(kw_only=True)
class RollingSettings:
    healthy_timeout: float = 60.0  # restart done -> OPTIONS 200
    rotation_timeout: float = 30.0  # OPTIONS 200 -> active at the front
    settle: float = 2.0  # without a front to ask: wait this long after OPTIONS 200
    poll_interval: float = 0.2

    def __attrs_post_init__(self) -> None:
        for name in ("healthy_timeout", "rotation_timeout", "poll_interval"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.settle < 0:
            raise ValueError(f"settle must not be negative, got {self.settle}")


@attrs.frozen(kw_only=True)
class WorkerRestarted:
    """How long each phase took for one worker, in seconds."""

    index: int
    restart: float  # drain, exit and start
    healthy: float  # until OPTIONS 200
    in_rotation: float  # until the front routes to it (or the settle time)


def rolling_restart(workers: Sequence[Worker], operations: Operations,
                    settings: RollingSettings = RollingSettings()) -> list[WorkerRestarted]:
    """Restart ``workers`` in order, one at a time; :class:`UserError` when going on could refuse calls."""
    done = []
    for worker in workers:
        others = [other for other in workers if other is not worker]
        _check_others(worker, others, operations)
        if not others:
            operations.report(f"worker {worker.index} is the only one: new calls get 503 until it is back")
        operations.report(f"worker {worker.index}: restarting {worker.unit} (it drains its calls first)")
        started = operations.now()
        operations.restart(worker)
        restarted = operations.now()
        _wait_until(lambda: operations.probe(worker) == 200, settings.healthy_timeout, settings, operations,
                    f"worker {worker.index} ({worker.sip}) did not answer OPTIONS with 200 within"
                    f" {settings.healthy_timeout:g} s of its restart (systemctl status {worker.unit})")
        healthy = operations.now()
        if operations.in_rotation is None:
            operations.sleep(settings.settle)
        else:
            in_rotation = operations.in_rotation
            _wait_until(lambda: in_rotation(worker), settings.rotation_timeout, settings, operations,
                        f"the front did not take worker {worker.index} ({worker.sip_uri}) back into its rotation"
                        f" within {settings.rotation_timeout:g} s of its OPTIONS 200 (kamcmd dispatcher.list)")
        back = operations.now()
        done.append(WorkerRestarted(index=worker.index, restart=restarted - started, healthy=healthy - restarted,
                                    in_rotation=back - healthy))
        operations.report(f"worker {worker.index}: back in {back - started:.1f} s (drain and restart"
                          f" {restarted - started:.1f} s, OPTIONS 200 after {healthy - restarted:.1f} s,"
                          f" in rotation after {back - healthy:.1f} s)")
    return done


def _check_others(worker: Worker, others: list[Worker], operations: Operations) -> None:
    """Refuse to take ``worker`` out unless the others take calls."""
    for other in others:
        status = operations.probe(other)
        if status != 200:
            answer = "no answer" if status is None else f"{status}"
            raise UserError(f"worker {other.index} ({other.sip}) gets {answer} to OPTIONS: restarting worker"
                            f" {worker.index} now could leave no worker taking calls; bring it back first"
                            f" (systemctl status {other.unit}), then run the rolling restart again")
    if others and operations.in_rotation is not None and not any(operations.in_rotation(o) for o in others):
        raise UserError(f"the front routes to none of the workers but {worker.index}: restarting it now would"
                        " refuse calls; check kamcmd dispatcher.list")


def _wait_until(condition: Callable[[], bool], timeout: float, settings: RollingSettings, operations: Operations,
                failure: str) -> None:
    deadline = operations.now() + timeout
    while not condition():
        if operations.now() >= deadline:
            raise UserError(failure + "; the workers after it were not restarted")
        operations.sleep(settings.poll_interval)
