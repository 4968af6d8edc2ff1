"""The server config: every error names the file and the key, and the CLI exits 2 on it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from eko_rtp.config import SCHEMA, build_config, load_config, parse_host_port, parse_port_range
from eko_rtp.errors import UserError
from server_helpers import REPO


WILDCARD = ("f.toml, key 'sip.listen': {listen} binds every interface, which tells callers nothing: set sip.advertise"
            " to the address for Contact and Via (IP[:PORT]), and media.address if RTP should go elsewhere than that IP")


@pytest.mark.parametrize(
    "raw, message",
    [
        # The known keys, in schema order (several features add [sip] keys).
        ({"sip": {"lisen": "x"}}, "f.toml, key 'sip.lisen': unknown key (known in [sip]: listen, advertise, transports, "
                                  f"user_agent, session_expires, min_se, {', '.join(list(SCHEMA['sip'])[6:])})"),
        ({"sipp": {}}, "f.toml, key 'sipp': unknown section [sipp] (known: sip, media, cache, crm, tts, script, listen, asr, recording, transfer, hours, registration, service)"),
        ({"media": {"rtp_timeout": "30"}}, "f.toml, key 'media.rtp_timeout': expected int or float, got str '30'"),
        ({"service": {"log_full_numbers": 1}}, "f.toml, key 'service.log_full_numbers': expected bool, got int 1"),
        ({"media": {"keep_cpu_awake": "yes"}}, "f.toml, key 'media.keep_cpu_awake': expected bool, got str 'yes'"),
        ({"media": {"cpus": "0-"}}, "f.toml, key 'media.cpus': expected a CPU list like 0 or 0,1 or 0-1, got '0-'"),
        ({"media": {"cpus": "4096"}}, f"f.toml, key 'media.cpus': CPU 4096 does not exist here (CPUs 0-{(os.cpu_count() or 1) - 1})"),
        ({"media": {"rtp_socket": "pooled"}}, "f.toml, key 'media.rtp_socket': must be 'per-call' or 'shared', got 'pooled'"),
        ({"asr": {"relay": "yes"}}, "f.toml, key 'asr.relay': expected bool, got str 'yes'"),
        ({"asr": {"relay_cpus": "4096"}}, f"f.toml, key 'asr.relay_cpus': CPU 4096 does not exist here (CPUs 0-{(os.cpu_count() or 1) - 1})"),
        ({"sip": {"min_se": True}}, "f.toml, key 'sip.min_se': expected int, got bool True"),
        ({"sip": {"transports": ["sctp"]}}, "f.toml, key 'sip.transports': must be a non-empty list of 'udp', 'tcp' and 'tls', got ['sctp']"),
        ({"sip": {"transports": ["udp", "tls"]}}, "f.toml, key 'sip.tls_certificate': SIP over TLS (sip.transports has 'tls') needs the certificate chain's file"),
        ({"sip": {"tls_port": 65536}}, "f.toml, key 'sip.tls_port': must be a port number (0 to 65535; 0: any free port), got 65536"),
        ({"sip": {"tls_handshake_timeout": 0}}, "f.toml, key 'sip.tls_handshake_timeout': must be positive"),
        ({"sip": {"tls_private_key": 7}}, "f.toml, key 'sip.tls_private_key': expected str, got int 7"),
        ({"sip": {"listen": "nowhere"}}, "f.toml, key 'sip.listen': expected HOST:PORT, got 'nowhere'"),
        ({"media": {"address": "eko.example"}}, "f.toml, key 'media.address': 'eko.example' is not an IP address"),
        ({"media": {"rtp_ports": "30000-20000"}}, "f.toml, key 'media.rtp_ports': port range '30000-20000' must be LO-HI with 1024 <= LO < HI <= 65535"),
        ({"media": {"codec": "G729"}}, "f.toml, key 'media.codec': must be 'offer', 'PCMU' or 'PCMA', got 'G729'"),
        ({"sip": {"min_se": 60}}, "f.toml, key 'sip.min_se': must be at least 90 seconds (RFC 4028 §4)"),
        ({"script": {"function": "mymodule"}}, "f.toml, key 'script.function': expected MODULE:FUNCTION, got 'mymodule'"),
        ({"service": {"drain_grace_seconds": 0}}, "f.toml, key 'service.drain_grace_seconds': must be positive"),
        ({"service": {"log_level": "LOUD"}}, "f.toml, key 'service.log_level': 'LOUD' is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)"),
        ({"cache": {"allow_missing": "yes"}}, "f.toml, key 'cache.allow_missing': expected bool, got str 'yes'"),
        # A wildcard binds every interface and tells callers nothing (issue 14, defect 4).
        ({"sip": {"listen": "0.0.0.0:5093"}}, WILDCARD.format(listen="0.0.0.0:5093")),
        ({"sip": {"listen": "[::]:5093"}, "media": {"address": "192.0.2.5"}}, WILDCARD.format(listen="[::]:5093")),
        ({"sip": {"listen": "0.0.0.0:5093", "advertise": "0.0.0.0"}},
         "f.toml, key 'sip.advertise': 0.0.0.0 is a wildcard address: write the address callers reach this server at"),
        ({"sip": {"advertise": "eko.example:5060"}},
         "f.toml, key 'sip.advertise': 'eko.example' is not an IP address (write 127.0.0.1 or ::1 for localhost)"),
        ({"sip": {"advertise": "192.0.2.4:99999"}}, "f.toml, key 'sip.advertise': port 99999 is out of range 0-65535 in '192.0.2.4:99999'"),
        ({"media": {"address": "::"}}, "f.toml, key 'media.address': :: is a wildcard address: write the address callers reach this server at"),
    ],
)
def test_bad_values_name_file_and_key(raw, message):
    with pytest.raises(UserError) as caught:
        build_config(raw, source="f.toml")
    assert str(caught.value) == message


def test_defaults_and_overrides():
    config = build_config({}, source=None)
    assert (config["sip.listen"], config.media_address, config.rtp_ports) == ("127.0.0.1:5060", "127.0.0.1", (20000, 29999))
    changed = config.with_overrides({"sip.listen": "[::1]:5070", "media.rtp_ports": "40001-40100", "crm.address": None})
    assert (str(changed.sip_listen), changed.media_address, changed.rtp_ports) == ("[::1]:5070", "::1", (40002, 40100))
    with pytest.raises(UserError) as caught:
        config.with_overrides({"media.rtp_ports": "a-b"})
    assert str(caught.value) == "command line, key 'media.rtp_ports': expected LO-HI port range, got 'a-b'"


def test_syntax_errors_and_missing_files(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text("[sip\nlisten = 1\n", encoding="utf-8")
    with pytest.raises(UserError, match=rf"^{broken}: TOML syntax error: "):
        load_config(broken)
    with pytest.raises(UserError, match=r"cannot read config: No such file or directory"):
        load_config(tmp_path / "absent.toml")
    assert parse_host_port("[::1]:5060", what="x").host == "::1"
    assert parse_port_range("20001-20010", what="x") == (20002, 20010)


def test_serve_refuses_a_bad_config_with_exit_2(tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text("[media]\nrtp_timeout = -1\n", encoding="utf-8")
    completed = subprocess.run(
        [sys.executable, "-m", "eko_rtp", "serve", "--config", str(config)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == f"eko-rtp: error: {config}, key 'media.rtp_timeout': must be positive"


@pytest.mark.parametrize(
    ("raw", "advertised", "media_address"),
    [
        ({}, ("127.0.0.1", 0), "127.0.0.1"),
        ({"sip": {"listen": "0.0.0.0:5093", "advertise": "192.0.2.4"}}, ("192.0.2.4", 0), "192.0.2.4"),
        ({"sip": {"listen": "0.0.0.0:5093", "advertise": "192.0.2.4:5070"}, "media": {"address": "198.51.100.9"}},
         ("192.0.2.4", 5070), "198.51.100.9"),
        ({"sip": {"listen": "[::]:5093", "advertise": "[2001:db8::4]"}}, ("2001:db8::4", 0), "2001:db8::4"),
        ({"sip": {"listen": "10.0.0.5:5060", "advertise": "203.0.113.7"}}, ("203.0.113.7", 0), "203.0.113.7"),
    ],
)
def test_bind_and_advertised_addresses_are_separate(raw, advertised, media_address):
    config = build_config(raw, source="f.toml")
    assert (config.sip_advertise.host, config.sip_advertise.port) == advertised  # port 0: the bound port
    assert config.media_address == media_address


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eko_rtp", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_serve_refuses_a_wildcard_listen_without_an_advertised_address():
    completed = run_cli("serve", "--listen", "0.0.0.0:5093")
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == "eko-rtp: error: " + WILDCARD.format(listen="0.0.0.0:5093").replace(
        "f.toml", "command line")


@pytest.mark.parametrize("command", [("cache", "check"), ("serve",), ("crm", "seed", "--db", "/nonexistent/x.db")])
def test_a_bad_log_level_is_a_usage_error(command):
    completed = run_cli("--log-level", "LOUD", *command)
    assert completed.returncode == 2
    assert completed.stderr.splitlines()[-1] == (
        "eko-rtp: error: argument --log-level: 'LOUD' is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    assert "Traceback" not in completed.stderr


def test_a_bad_log_level_in_the_config_names_the_key(tmp_path):
    config = tmp_path / "eko-rtp.toml"
    config.write_text('[service]\nlog_level = "loud"\n', encoding="utf-8")
    completed = run_cli("serve", "--config", str(config))
    assert completed.returncode == 2
    assert completed.stderr.strip().splitlines()[-1] == (
        f"eko-rtp: error: {config}, key 'service.log_level': 'loud' is not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")


@pytest.mark.parametrize("raw, message", [
    ({"hours": {"monday": "08:00-25:00"}},
     "f.toml, key 'hours.monday': bad time '25:00' in span '08:00-25:00' (expected HH:MM from 00:00 to 24:00)"),
    ({"hours": {"timezone": "Europe/Nowhere"}}, "f.toml, key 'hours.timezone': unknown time zone 'Europe/Nowhere'"),
    ({"transfer": {"internet": "tel:+33123456789", "default": "sip:tech@192.0.2.9"}},
     "f.toml, key 'transfer.internet': 'tel:+33123456789' is not a sip: or sips: URI (a tel: URI has no host)"),
    ({"transfer": {"mobile": "sip:tech-mobile@192.0.2.9"}},
     "f.toml, key 'transfer.default': needed when transfer.mobile is set"),
    ({"transfer": {"window_seconds": 0}}, "f.toml, key 'transfer.window_seconds': must be positive"),
    ({"transfer": {"max_per_window": -1}},
     "f.toml, key 'transfer.max_per_window': must not be negative (0: never transfer)"),
    ({"registration": {"registrar": "sip:trunk.example.net"}},
     "f.toml, key 'registration.aor': registration needs both registration.registrar and registration.aor"),
    ({"registration": {"registrar": "http://trunk", "aor": "sip:1@trunk"}}, "f.toml, key 'registration.registrar': unsupported URI scheme 'http' in registration.registrar"),
    ({"registration": {"transport": "tls"}}, "f.toml, key 'registration.transport': 'tls' is not one of sip.transports"),
])
def test_handover_sections_are_checked(raw, message):
    with pytest.raises(UserError) as caught:
        build_config(raw, source="f.toml")
    assert str(caught.value).split(" (expected an IANA")[0].split(" (callers whose")[0] == message


def test_handover_defaults():
    config = build_config({}, source=None)
    assert (config["transfer.default"], config["transfer.max_per_window"], config["transfer.window_seconds"]) == (
        "", 5, 600.0)
    assert config["hours.timezone"] == "Europe/Paris" and "2026-12-25" in config["hours.holidays"]
    assert config["registration.registrar"] == ""
