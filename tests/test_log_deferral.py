"""Log lines held until the trio loop idles (service/log_deferral.py), through the service's real handler."""

from __future__ import annotations

import contextlib
import io
import logging
import re
import time

import pytest
import trio

from eko_rtp.service.log_deferral import DeferringHandler, hold_logs_until_idle, installed
from eko_rtp.service.logs import call_context, configure_logging

LOGGER = logging.getLogger("eko_rtp.test.deferral")


@contextlib.asynccontextmanager
async def holding():
    """A trio loop whose INFO and DEBUG lines the service handler holds until it idles."""
    async with trio.open_nursery() as nursery:
        await nursery.start(hold_logs_until_idle)
        yield
        nursery.cancel_scope.cancel()


async def settle():
    """Let the loop idle: the holding task writes what it holds."""
    await trio.sleep(0.01)


@pytest.fixture
def service_log():
    """The service's handler on the root logger, writing to a string: (handler, text of the lines so far)."""
    stream = io.StringIO()
    handler = configure_logging(level="DEBUG", stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    try:
        yield handler, lambda: [re.sub(r"^\S+ \S+ (?=[A-Z]+ )", "", line) for line in stream.getvalue().splitlines()]
    finally:
        logging.getLogger().removeHandler(handler)


def test_configure_logging_installs_a_deferring_handler(service_log):
    handler, _ = service_log
    assert isinstance(handler, DeferringHandler)
    assert installed() is handler


def test_without_a_loop_holding_them_lines_are_written_at_once(service_log):
    handler, lines = service_log
    LOGGER.info("one")
    assert lines() == ["INFO eko_rtp.test.deferral: one"]
    assert handler.held == 0


async def test_info_waits_for_the_loop_to_idle_and_keeps_its_call_and_time(service_log):
    handler, lines = service_log
    async with holding():
        with call_context("a84b4c76e66710@pc33"):
            LOGGER.info("INVITE from %s", "127.0.0.1")
        LOGGER.debug("after it")
        assert lines() == []  # this task has not yielded: nothing written yet
        assert handler.held == 2
        await trio.sleep(0)
        assert lines() == []  # the holding task runs only once nothing else can
        await settle()
        assert lines() == [
            "INFO eko_rtp.test.deferral [call=a84b4c76e66710@pc33]: INVITE from 127.0.0.1",
            "DEBUG eko_rtp.test.deferral: after it",
        ]


async def test_held_lines_carry_the_time_they_were_logged(service_log):
    handler, _ = service_log
    written = []
    handler.target.emit = lambda record: written.append((record.created, time.time()))
    async with holding():
        logged = time.time()
        LOGGER.info("now")
        time.sleep(0.05)  # this step goes on: the line is written after it
        await settle()
    [(created, written_at)] = written
    assert logged <= created < logged + 0.04 <= written_at


async def test_the_message_is_formatted_when_logged_not_when_written(service_log):
    _, lines = service_log
    items = ["first"]
    async with holding():
        LOGGER.info("items %s", items)
        items.append("second")
        await settle()
    assert lines() == ["INFO eko_rtp.test.deferral: items ['first']"]


async def test_a_warning_writes_what_is_held_then_itself(service_log):
    handler, lines = service_log
    async with holding():
        LOGGER.info("held")
        LOGGER.warning("at once")
        assert lines() == ["INFO eko_rtp.test.deferral: held", "WARNING eko_rtp.test.deferral: at once"]
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            LOGGER.info("with a traceback", exc_info=True)
        assert lines()[2] == "INFO eko_rtp.test.deferral: with a traceback"
        assert handler.held == 0


async def test_lines_from_another_thread_are_written_at_once_in_order(service_log):
    handler, lines = service_log
    async with holding():
        LOGGER.info("loop")
        await trio.to_thread.run_sync(lambda: (LOGGER.info("thread"), lines()))
    assert lines() == ["INFO eko_rtp.test.deferral: loop", "INFO eko_rtp.test.deferral: thread"]
    assert handler.held == 0


async def test_the_limit_writes_everything_held(service_log):
    handler, lines = service_log
    handler.limit = 3
    async with holding():
        LOGGER.info("1")
        LOGGER.info("2")
        assert lines() == []
        LOGGER.info("3")
        assert [line[-1] for line in lines()] == ["1", "2", "3"]
        assert handler.held == 0


async def test_a_loop_that_never_idles_still_gets_its_lines_within_max_hold(service_log):
    handler, lines = service_log
    handler.max_hold = 0.02
    stop = trio.Event()

    async def busy():
        for _ in range(1_000_000):  # bounded; the loop below stops it long before
            if stop.is_set():
                return
            await trio.sleep(0)  # always runnable: the loop never idles

    async with trio.open_nursery() as nursery:
        await nursery.start(hold_logs_until_idle)
        nursery.start_soon(busy)
        LOGGER.info("busy loop")
        start = trio.current_time()
        while not lines() and trio.current_time() - start < 2:
            await trio.sleep(0)
        waited = trio.current_time() - start
        stop.set()
        nursery.cancel_scope.cancel()
    assert lines() == ["INFO eko_rtp.test.deferral: busy loop"]
    assert 0.015 <= waited < 1


async def test_cancelling_the_holder_writes_what_is_held(service_log):
    handler, lines = service_log
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(hold_logs_until_idle)
            LOGGER.info("last words")
            scope.cancel()
    assert lines() == ["INFO eko_rtp.test.deferral: last words"]
    LOGGER.info("after")  # no loop holds them any more: at once
    assert lines()[-1] == "INFO eko_rtp.test.deferral: after"


async def test_flush_writes_what_is_held(service_log):
    handler, lines = service_log
    async with holding():
        LOGGER.info("at exit")
        handler.flush()  # what logging.shutdown does at exit
        assert lines() == ["INFO eko_rtp.test.deferral: at exit"]


async def test_bad_arguments_are_written_at_once_as_an_error_and_raise_nothing(service_log):
    handler, lines = service_log
    async with holding():
        LOGGER.info("held")
        LOGGER.info("%d calls from %s", "not a number", "+33612345678")
        assert lines() == [
            "INFO eko_rtp.test.deferral: held",
            "INFO eko_rtp.test.deferral: unformattable log message '%d calls from %s' with 2 argument(s):"
            " TypeError: %d format: a real number is required, not str",
        ]
        assert handler.held == 0


async def test_one_loop_at_a_time(service_log):
    handler, _ = service_log
    async with trio.open_nursery() as nursery:
        await nursery.start(handler.hold_until_idle)
        with pytest.raises(RuntimeError, match="already held"):
            await handler.hold_until_idle()
        nursery.cancel_scope.cancel()


async def test_without_the_service_handler_the_holder_returns_at_once():
    assert installed() is None
    with trio.fail_after(1):
        await hold_logs_until_idle()


@pytest.mark.parametrize(("limit", "max_hold", "message"), [(0, 0.05, "limit"), (10, 0, "max_hold")])
def test_bad_settings_are_refused(limit, max_hold, message):
    with pytest.raises(ValueError, match=message):
        DeferringHandler(logging.NullHandler(), limit=limit, max_hold=max_hold)


def test_plain_lines_keep_their_format(service_log):
    _, lines = service_log
    LOGGER.info("hello")
    assert re.fullmatch(r"INFO eko_rtp\.test\.deferral: hello", lines()[0])
