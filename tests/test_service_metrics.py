"""Metrics: settings validation, and a real scrape over loopback HTTP."""

from __future__ import annotations

import attrs
import httpx
import prometheus_client
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from eko_rtp.call.lookup import LookupResult
from eko_rtp.config import HostPort, build_config
from eko_rtp.errors import UserError
from eko_rtp.server.transport import TcpCounters
from eko_rtp.service.metrics import STREAM_COUNTERS, Metrics, MetricsSettings, serve_metrics


@pytest.mark.parametrize(
    ("listen", "allow_public", "expected"),
    [
        ("", False, None),
        ("127.0.0.1:9464", False, HostPort(host="127.0.0.1", port=9464)),
        ("127.0.0.2:0", False, HostPort(host="127.0.0.2", port=0)),
        ("[::1]:9464", False, HostPort(host="::1", port=9464)),
        ("localhost:9464", False, HostPort(host="localhost", port=9464)),
        ("0.0.0.0:9464", True, HostPort(host="0.0.0.0", port=9464)),
        ("192.0.2.7:9464", True, HostPort(host="192.0.2.7", port=9464)),
    ],
)
def test_settings(listen, allow_public, expected):
    assert MetricsSettings(listen=listen, allow_public=allow_public).address == expected


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        (
            "0.0.0.0:9464",
            "key 'service.metrics_listen': 0.0.0.0:9464 is not a loopback address; metrics are "
            "unauthenticated, so serving them beyond this host needs metrics_allow_public = true",
        ),
        (
            "[::]:9464",
            "key 'service.metrics_listen': [::]:9464 is not a loopback address; metrics are "
            "unauthenticated, so serving them beyond this host needs metrics_allow_public = true",
        ),
        ("metrics.example:9464", "key 'service.metrics_listen': host 'metrics.example' is not an IP address or 'localhost'"),
        ("127.0.0.1", "key 'service.metrics_listen': expected HOST:PORT, got '127.0.0.1'"),
    ],
)
def test_refused_settings(listen, error):
    with pytest.raises(UserError) as caught:
        MetricsSettings(listen=listen)
    assert str(caught.value) == error


def test_settings_from_config_name_the_file():
    config = build_config({"service": {"metrics_listen": "10.1.2.3:9464"}}, source="/etc/eko-rtp/eko-rtp.toml")
    with pytest.raises(UserError) as caught:
        MetricsSettings.from_config(config)
    assert str(caught.value).startswith(
        "/etc/eko-rtp/eko-rtp.toml, key 'service.metrics_listen': 10.1.2.3:9464 is not a loopback address"
    )
    assert MetricsSettings.from_config(build_config({}, source=None)).address is None


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda metrics: metrics.call_ended("Completed!"), "call outcome 'Completed!' is not a short snake_case word"),
        (lambda metrics: metrics.sip_response(99), "SIP status code 99 is outside 100-699"),
        (lambda metrics: metrics.sip_response(700), "SIP status code 700 is outside 100-699"),
    ],
)
def test_bad_label_values(call, error):
    with pytest.raises(ValueError) as caught:
        call(Metrics.create(process=False))
    assert str(caught.value) == error


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape keyed by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_scrape_over_loopback():
    metrics = Metrics.create()
    metrics.active_calls.inc(3)
    metrics.active_calls.dec()
    metrics.call_ended("completed")
    metrics.call_ended("completed")
    metrics.call_ended("caller_hung_up")
    metrics.sip_response(200)
    metrics.sip_response(503)
    metrics.sip_response(200)
    for latency in (0.0004, 0.0015, 0.0015, 0.03, 0.2):
        metrics.greeting_latency.observe(latency)
    metrics.frames_sent.inc(1500)
    metrics.frames_late.inc(2)
    metrics.cache_hits.labels(cache="phrase").inc(7)
    metrics.cache_misses.labels(cache="dynamic").inc()
    metrics.tts_characters.labels(backend="elevenlabs").inc(42)
    metrics.tts_cost.inc(0.0126)
    metrics.crm_lookup_latency.observe(0.004)
    metrics.crm_timeouts.inc()

    async with trio.open_nursery() as nursery:
        bound = await nursery.start(serve_metrics, metrics, MetricsSettings(listen="127.0.0.1:0"))
        assert bound.host == "127.0.0.1" and bound.port > 0
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{bound.port}/metrics", timeout=5)
        nursery.cancel_scope.cancel()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    scraped = samples(response.text)

    expected = {
        ("eko_active_calls", ()): 2.0,
        ("eko_calls_total", (("outcome", "completed"),)): 2.0,
        ("eko_calls_total", (("outcome", "caller_hung_up"),)): 1.0,
        ("eko_sip_responses_total", (("code", "200"),)): 2.0,
        ("eko_sip_responses_total", (("code", "503"),)): 1.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.0005"),)): 1.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.001"),)): 1.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.002"),)): 3.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.005"),)): 3.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.01"),)): 3.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.02"),)): 3.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "0.05"),)): 4.0,
        ("eko_greeting_latency_seconds_bucket", (("le", "+Inf"),)): 5.0,
        ("eko_greeting_latency_seconds_count", ()): 5.0,
        ("eko_rtp_frames_sent_total", ()): 1500.0,
        ("eko_rtp_frames_late_total", ()): 2.0,
        ("eko_cache_hits_total", (("cache", "phrase"),)): 7.0,
        ("eko_cache_hits_total", (("cache", "dynamic"),)): 0.0,
        ("eko_cache_misses_total", (("cache", "phrase"),)): 0.0,
        ("eko_cache_misses_total", (("cache", "dynamic"),)): 1.0,
        ("eko_tts_characters_total", (("backend", "elevenlabs"),)): 42.0,
        ("eko_tts_characters_total", (("backend", "espeak"),)): 0.0,
        ("eko_tts_estimated_cost_usd_total", ()): 0.0126,
        ("eko_crm_lookup_latency_seconds_bucket", (("le", "0.002"),)): 0.0,
        ("eko_crm_lookup_latency_seconds_bucket", (("le", "0.005"),)): 1.0,
        ("eko_crm_lookup_latency_seconds_count", ()): 1.0,
        ("eko_crm_lookup_timeouts_total", ()): 1.0,
        ("eko_crm_lookup_errors_total", ()): 0.0,
    }
    assert {key: scraped.get(key) for key in expected} == expected
    assert scraped[("eko_greeting_latency_seconds_sum", ())] == pytest.approx(0.2334)
    assert scraped[("process_open_fds", ())] >= 3

    # Cancelled: the port is closed again.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as client:
            await client.get(f"http://127.0.0.1:{bound.port}/metrics", timeout=5)


def test_dedicated_registry():
    first, second = Metrics.create(process=False), Metrics.create(process=False)
    first.active_calls.set(5)
    assert second.active_calls._value.get() == 0
    assert prometheus_client.REGISTRY.get_sample_value("eko_active_calls") is None
    assert b"eko_active_calls 5.0\n" in first.render()


async def test_metrics_off_unless_configured():
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_metrics, Metrics.create(process=False), MetricsSettings()) is None


async def test_port_in_use_is_a_user_error():
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = MetricsSettings(listen=f"127.0.0.1:{port}")
        async with trio.open_nursery() as nursery:
            with pytest.raises(UserError) as caught:
                await nursery.start(serve_metrics, Metrics.create(process=False), settings)
    assert str(caught.value) == f"key 'service.metrics_listen': cannot serve metrics on 127.0.0.1:{port}: Address already in use"


@pytest.mark.parametrize(
    ("answered", "past_budget", "expected"),
    [  # (latency observations, timeouts, errors)
        (True, False, (1, 0, 0)),  # answered in time
        (True, True, (1, 1, 0)),  # answered late: the caller heard the standard greeting
        (False, False, (0, 0, 1)),  # failed in time (CRM down, an error answer)
        (False, True, (0, 1, 0)),  # failed late, or never answered
    ],
)
def test_each_crm_lookup_is_counted_once(answered, past_budget, expected):
    metrics = Metrics.create(process=False)
    metrics.crm_lookup(LookupResult(took=0.2, answered=answered, past_budget=past_budget))
    scraped = samples(metrics.render().decode())
    assert (scraped[("eko_crm_lookup_latency_seconds_count", ())], scraped[("eko_crm_lookup_timeouts_total", ())],
            scraped[("eko_crm_lookup_errors_total", ())]) == expected


def test_every_stream_counter_of_the_transport_is_exported_and_starts_at_zero():
    # lifecycle.py copies each TcpCounters field by this table: a field without a row would stop the sync.
    assert set(STREAM_COUNTERS) == {field.name for field in attrs.fields(TcpCounters)}
    scraped = samples(Metrics.create(process=False).render().decode())
    for transport in ("tcp", "tls"):
        assert scraped[("eko_sip_connections_total", (("outcome", "accepted"), ("transport", transport)))] == 0.0
        idle = ("eko_sip_connections_closed_total", (("reason", "idle_timeout"), ("transport", transport)))
        assert scraped[idle] == 0.0
        assert scraped[("eko_sip_accept_out_of_descriptors_total", (("transport", transport),))] == 0.0
        assert scraped[("eko_sip_connections_open", (("transport", transport),))] == 0.0
    assert scraped[("eko_sip_tls_handshake_failures_total", (("reason", "timeout"),))] == 0.0
