"""Several Eko RTP workers on one box: what each one binds, and where it writes.

Theory of operation: one server process is one trio event loop, so one CPU. A box
with several CPUs runs one worker per CPU behind the Kamailio front (sip/kamailio/).
:func:`plan_workers` splits one config among N workers, as pure arithmetic on
values (no sockets, no files): worker ``i`` gets

- the ``i``-th CPU of ``media.cpus`` (so N workers need N CPUs listed there);
- SIP on the ``sip.listen`` port plus ``i`` (UDP and TCP), and the TLS port plus
  ``i`` when TLS is on;
- the ``i``-th of N equal, disjoint, even-aligned slices of ``media.rtp_ports``
  (RFC 3550 §11: RTP on the even port, RTCP on the next);
- its own dynamic (live TTS) cache, ``tts.dynamic_cache_dir``/worker-``i``: the
  dynamic cache evicts by size on its own, without a lock between processes, so two
  workers never share one;
- metrics on the ``service.metrics_listen`` port plus ``i`` (off stays off).

Every port is checked: within 1-65535, none inside the RTP range, none used twice.
A plan that cannot work raises :class:`UserError` naming the config key to change.
``eko-rtp serve --worker I --workers N`` applies worker ``I``'s plan to its config
(:func:`worker_config`); install-service, the front's dispatcher list and
rolling-restart read the same plan, so they always agree.
"""

from __future__ import annotations

from typing import Any

import attrs

from eko_rtp.config import Config, HostPort, parse_host_port
from eko_rtp.errors import UserError

MAX_WORKERS = 64


@attrs.frozen(kw_only=True)
class WorkerSettings:
    """What the plan is made from: the parsed config values it reads."""

    sip_listen: HostPort
    tls_port: int | None  # None: TLS off
    rtp_ports: tuple[int, int]  # even low port, inclusive high port (config.parse_port_range)
    cpus: tuple[int, ...]  # sorted; empty: media.cpus not set
    dynamic_cache_dir: str
    metrics_listen: HostPort | None  # None: metrics off
    source: str | None = None  # the config file, for errors

    @classmethod
    def from_config(cls, config: Config) -> "WorkerSettings":
        metrics = config["service.metrics_listen"]
        return cls(
            sip_listen=config.sip_listen,
            tls_port=config["sip.tls_port"] if "tls" in config["sip.transports"] else None,
            rtp_ports=config.rtp_ports,
            cpus=tuple(sorted(config.cpus or ())),
            dynamic_cache_dir=config["tts.dynamic_cache_dir"],
            metrics_listen=parse_host_port(metrics, what="service.metrics_listen") if metrics else None,
            source=config.source,
        )


@attrs.frozen(kw_only=True)
class Worker:
    """One worker's share of the box."""

    index: int
    cpu: int | None
    sip: HostPort
    tls_port: int | None
    rtp_ports: tuple[int, int]
    dynamic_cache_dir: str
    metrics: HostPort | None

    @property
    def unit(self) -> str:
        """Its systemd unit, an instance of the template eko-rtp@.service."""
        return f"eko-rtp@{self.index}.service"

    @property
    def sip_uri(self) -> str:
        """How the front's dispatcher list names it."""
        return f"sip:{self.sip}"

    def overrides(self) -> dict[str, Any]:
        """Config keys (dotted) and values that make a server this worker."""
        values: dict[str, Any] = {
            "sip.listen": str(self.sip),
            "media.rtp_ports": f"{self.rtp_ports[0]}-{self.rtp_ports[1]}",
            "tts.dynamic_cache_dir": self.dynamic_cache_dir,
            "service.metrics_listen": "" if self.metrics is None else str(self.metrics),
        }
        if self.cpu is not None:
            values["media.cpus"] = str(self.cpu)
        if self.tls_port is not None:
            values["sip.tls_port"] = self.tls_port
        return values


def plan_workers(settings: WorkerSettings, count: int) -> tuple[Worker, ...]:
    """Split ``settings`` among ``count`` workers; :class:`UserError` when they cannot share it."""

    def fail(key: str, message: str) -> UserError:
        return UserError(message, path=settings.source, key=key)

    if not 1 <= count <= MAX_WORKERS:
        raise UserError(f"the number of workers must be within 1 to {MAX_WORKERS}, got {count}", key="--workers")
    if count > 1 and not settings.cpus:
        raise fail("media.cpus", f"{count} workers need {count} CPUs listed here, one each (e.g. \"0-{count - 1}\");"
                                 " none is given")
    if settings.cpus and len(settings.cpus) < count:
        raise fail("media.cpus", f"{count} workers need {count} CPUs, one each; it lists {len(settings.cpus)}"
                                 f" ({','.join(map(str, settings.cpus))})")
    low, high = settings.rtp_ports
    pairs = (high - low + 1) // 2 // count
    if pairs < 1:
        raise fail("media.rtp_ports", f"{low}-{high} holds {(high - low + 1) // 2} RTP/RTCP port pair(s), fewer"
                                      f" than one per worker for {count} workers: widen it")
    if settings.sip_listen.port == 0:
        raise fail("sip.listen", "workers need a fixed SIP port (the front's dispatcher list names each): got"
                                 " port 0")

    workers = []
    for index in range(count):
        first = low + index * 2 * pairs
        workers.append(Worker(
            index=index,
            cpu=settings.cpus[index] if settings.cpus else None,
            sip=HostPort(host=settings.sip_listen.host, port=settings.sip_listen.port + index),
            tls_port=None if settings.tls_port is None else (settings.tls_port + index if settings.tls_port else 0),
            rtp_ports=(first, first + 2 * pairs - 1),
            dynamic_cache_dir=f"{settings.dynamic_cache_dir.rstrip('/')}/worker-{index}",
            metrics=None if settings.metrics_listen is None else HostPort(
                host=settings.metrics_listen.host,
                port=settings.metrics_listen.port + index if settings.metrics_listen.port else 0),
        ))
    _check_ports(workers, settings, fail)
    return tuple(workers)


def _check_ports(workers: list[Worker], settings: WorkerSettings, fail) -> None:
    """Every fixed port within range, outside the RTP range, and used by one thing only."""
    low, high = settings.rtp_ports
    used: dict[int, str] = {}
    for worker in workers:
        named = [("sip.listen", "SIP", worker.sip.port)]
        if worker.tls_port:
            named.append(("sip.tls_port", "TLS", worker.tls_port))
        if worker.metrics is not None and worker.metrics.port:
            named.append(("service.metrics_listen", "metrics", worker.metrics.port))
        for key, what, port in named:
            label = f"worker {worker.index}'s {what} port {port}"
            if port > 65535:
                raise fail(key, f"{label} is beyond 65535 ({len(workers)} workers count up from the configured"
                                " port): lower it")
            if low <= port <= high:
                raise fail(key, f"{label} is inside media.rtp_ports {low}-{high}: move one or the other")
            if port in used:
                raise fail(key, f"{label} is also {used[port]} ({len(workers)} workers take consecutive ports"
                                " from each configured one): space them further apart")
            used[port] = label


def worker_config(config: Config, *, index: int, count: int) -> Config:
    """``config`` as worker ``index`` of ``count`` runs it."""
    workers = plan_workers(WorkerSettings.from_config(config), count)
    if not 0 <= index < count:
        raise UserError(f"worker {index} does not exist: {count} worker(s) are numbered 0 to {count - 1}",
                        key="--worker")
    return config.with_overrides(workers[index].overrides())
