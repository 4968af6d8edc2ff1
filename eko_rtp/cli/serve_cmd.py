"""``eko-rtp serve``: load the config and the cache, then answer calls until stopped."""

from __future__ import annotations

import importlib
import logging
import os

import trio

from eko_rtp.config import load_config
from eko_rtp.errors import UserError, first_leaf

log = logging.getLogger("eko_rtp.serve")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="answer SIP calls and speak (the media server)")
    parser.add_argument("--config", help="TOML config file (default: embedded defaults)")
    parser.add_argument("--listen", help="SIP address IP:PORT to bind, UDP and TCP, RTP too; 0.0.0.0 or [::]"
                                         " for every interface (config sip.listen)")
    parser.add_argument("--advertise", help="IP[:PORT] put in Contact and Via (config sip.advertise; default:"
                                            " the --listen address, which must then not be a wildcard)")
    parser.add_argument("--media-address", help="IP address our SDP c= line gives for RTP (config media.address;"
                                                " default: the advertised SIP address)")
    parser.add_argument("--rtp-ports", help="RTP port range LO-HI (config media.rtp_ports)")
    parser.add_argument("--rtp-socket", choices=("per-call", "shared"),
                        help="a socket pair per call, or one pair shared by the calls from trusted media"
                             " addresses, with batched system calls (config media.rtp_socket)")
    parser.add_argument("--asr-relay", action="store_true", default=None,
                        help="run the calls' speech recognition streams in a child process on other CPUs"
                             " (config asr.relay; asr.relay_cpus says which)")
    parser.add_argument("--cache", help="rendered phrase cache directory (config cache.dir)")
    parser.add_argument("--phrases", help="phrase catalogue file (config cache.phrases)")
    parser.add_argument("--script", help="call script MODULE:FUNCTION (config script.function)")
    parser.add_argument("--keep-cpu-awake", action="store_true", default=None,
                        help="keep the CPUs the server is pinned to from halting between frames, with one"
                             " SCHED_IDLE spinner each (config media.keep_cpu_awake; dedicated CPUs only)")
    parser.add_argument("--crm", help="CRM msgpack-RPC address HOST:PORT or unix socket path (config crm.address)")
    parser.add_argument("--metrics", metavar="HOST:PORT",
                        help="serve Prometheus metrics there (config service.metrics_listen; default: off)")
    parser.add_argument("--sip-trace", action="store_true", default=None,
                        help="log every SIP message received and sent, numbers masked (config service.sip_trace)")
    parser.add_argument("--degraded", action="store_true", default=None,
                        help="start even if the cache lacks phrases of the catalogue (config cache.allow_missing)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="this server is one of N workers on the box (docs/OPERATIONS.md, \"Several workers on"
                             " one box\"): with --worker, take that worker's CPU, SIP port, RTP ports, dynamic"
                             " cache and metrics port from the config (eko_rtp/service/workers.py)")
    parser.add_argument("--worker", type=int, metavar="INDEX", help="which of the --workers N this is, 0 to N-1")
    parser.set_defaults(func=run_serve)


def load_script(spec: str):
    """Import ``MODULE:FUNCTION``; a clear error when it is not there."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UserError(f"cannot import call script module {module_name!r}: {error}", key="script.function") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise UserError(f"{module_name!r} has no callable {function_name!r}", key="script.function")
    return function


def config_from_args(args):
    config = load_config(args.config)
    if (args.workers is None) != (args.worker is None):
        raise UserError("--worker and --workers go together", key="--worker" if args.worker is None else "--workers")
    if args.workers is not None:
        from eko_rtp.service.workers import worker_config

        config = worker_config(config, index=args.worker, count=args.workers)  # flags below still win
    return config.with_overrides(
        {
            "sip.listen": args.listen,
            "sip.advertise": args.advertise,
            "media.address": args.media_address,
            "media.rtp_ports": args.rtp_ports,
            "media.rtp_socket": args.rtp_socket,
            "asr.relay": args.asr_relay,
            "cache.dir": args.cache,
            "cache.phrases": args.phrases,
            "script.function": args.script,
            "crm.address": args.crm,
            "media.keep_cpu_awake": args.keep_cpu_awake,
            "service.metrics_listen": args.metrics,
            "cache.allow_missing": args.degraded,
            "service.sip_trace": args.sip_trace,
        }
    )


def tts_settings(config, environ=None):
    """Live TTS settings from ``[tts]``; the API key comes from the service credential or the environment."""
    from eko_rtp.service.credentials import elevenlabs_api_key
    from eko_rtp.tts.settings import TtsSettings

    given = {
        key: config[f"tts.{key}"]
        for key in ("voice_id", "model_id", "base_url", "espeak_voice")
        if config[f"tts.{key}"]
    }
    try:
        settings = TtsSettings(
            api_key=elevenlabs_api_key(environ),
            optimize_streaming_latency=config["tts.optimize_streaming_latency"],
            first_byte_timeout=config["tts.first_byte_timeout"],
            dynamic_cache_dir=config["tts.dynamic_cache_dir"],
            dynamic_cache_max_bytes=config["tts.dynamic_cache_max_bytes"],
            **given,
        )
    except ValueError as error:
        raise UserError(str(error), path=config.source, key="tts") from None
    return settings.from_environment(environ)


def speech_setup(config, environ=None):
    """Speech recognition from ``[asr]``, or None without a Deepgram key (DTMF only).

    The key comes from the service credential or ``$DEEPGRAM_API_KEY``; the endpoint
    from ``asr.base_url``, else ``$DEEPGRAM_BASE_URL``, else Deepgram's.
    """
    from eko_rtp.asr.deepgram_api import AsrSettings
    from eko_rtp.asr.keywords import load_keywords
    from eko_rtp.call.speech import SpeechSetup
    from eko_rtp.service.credentials import deepgram_api_key

    environ = os.environ if environ is None else environ
    key = deepgram_api_key(environ)
    keywords = ()
    if config["asr.keywords_file"]:
        keywords = load_keywords(config["asr.keywords_file"])  # a UserError names the file and line
    if key is None:
        return None
    base_url = config["asr.base_url"] or environ.get("DEEPGRAM_BASE_URL") or "wss://api.deepgram.com"
    try:
        settings = AsrSettings(base_url=base_url, model=config["asr.model"], language=config["asr.language"],
                               endpointing_ms=config["asr.endpointing_ms"], keywords=keywords)
    except ValueError as error:
        raise UserError(str(error), path=config.source, key="asr") from None
    return SpeechSetup(settings=settings, api_key=key)


def describe_listening(config, speech) -> str:
    """The start line on what Eko hears."""
    vad = "VAD barge-in on" if config["listen.vad"] else "VAD off"
    if speech is None:
        return f"speech recognition: off (no DEEPGRAM_API_KEY): scripts ask for keys (DTMF); {vad}"
    settings = speech.settings
    return (f"speech recognition: Deepgram {settings.model} ({settings.language}) at {settings.base_url}, "
            f"endpointing {settings.endpointing_ms} ms, {len(settings.keywords)} keyword(s); {vad}")


def run_serve(args) -> int:
    from eko_rtp.cache.loader import load_cache
    from eko_rtp.crm.address import parse_crm_address
    from eko_rtp.server.lifecycle import Setup, run_service
    from eko_rtp.service.logs import configure_logging
    from eko_rtp.tts.engine import TtsEngine

    def load_setup() -> Setup:
        config = config_from_args(args)
        script = load_script(config["script.function"])
        cache = load_cache(config["cache.dir"], config["cache.phrases"])
        check_cache_complete(cache, config)  # at start and at each reload
        return Setup(config, cache, script)

    if args.log_level is None:  # the config's level, from the first line on (before the cache loads)
        logging.getLogger().setLevel(config_from_args(args)["service.log_level"].upper())
    setup = load_setup()
    config = setup.config
    if config.cpus is not None:
        from eko_rtp.server.awake import pin_to

        pin_to(config.cpus)  # before trio.run: the threads it starts inherit the mask
    settings = tts_settings(config)
    speech = speech_setup(config)
    from eko_rtp.service.credentials import sip_credentials

    credentials = sip_credentials()
    configure_logging(
        level=args.log_level or config["service.log_level"].upper(),
        mask_numbers=not config["service.log_full_numbers"],
        secrets=[settings.api_key] + ([speech.api_key] if speech is not None else [])
        + ([credentials.password] if credentials is not None else []),
    )
    log.info("%s", describe_listening(config, speech))
    from eko_rtp.call.ears import HEARING
    from eko_rtp.media.stream import PER_PACKET_PATHS

    log.info("media: %s per-packet paths (RTP headers and statistics, frame loop, receive handler), "
             "%s hearing (the caller's audio and its voice activity)", PER_PACKET_PATHS, HEARING)
    from eko_rtp.media.sdp import PARSE as SDP_PARSE
    from eko_rtp.sip.message import HEAD_SCAN

    log.info("sip: %s parse of plain messages (start line, header lines, Content-Length, Via, From, To, "
             "Call-ID, CSeq), %s parse of plain SDP bodies", HEAD_SCAN, SDP_PARSE)
    crm_address = parse_crm_address(config["crm.address"]) if config["crm.address"] else None

    async def main() -> None:
        tts = TtsEngine.from_settings(settings)
        try:
            await run_service(setup=setup, load_setup=load_setup, crm_address=crm_address, tts=tts, asr=speech,
                              sip_credentials=credentials)
        finally:
            with trio.CancelScope(shield=True):
                await tts.aclose()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        log.info("interrupted; exiting")
    except BaseExceptionGroup as group:
        if group.subgroup(lambda error: not isinstance(error, (BaseExceptionGroup, KeyboardInterrupt, OSError, UserError))) is not None:
            raise
        user_errors = group.subgroup(UserError)
        if user_errors is not None:
            raise first_leaf(user_errors) from None
        bind_errors = group.subgroup(OSError)
        if bind_errors is None:
            log.info("interrupted; exiting")
            return 0
        # Only start-up can raise an OSError this far: binding the SIP sockets.
        error = first_leaf(bind_errors)
        raise UserError(f"cannot bind SIP on {config['sip.listen']}: {error.strerror or error}", key="sip.listen") from None
    return 0


def check_cache_complete(cache, config) -> None:
    """Refuse a cache without every phrase of the catalogue, unless ``cache.allow_missing``.

    A server missing its greeting answers every call 480: better not to start (nor
    reload) at all, and say which phrases to build.
    """
    if not cache.problems:
        return
    total = len(cache) + len(cache.problems)
    keys = ", ".join(f"{key} ({problem.kind.value})" for key, problem in sorted(cache.problems.items()))
    lacks = f"{config['cache.dir']} lacks {len(cache.problems)} of the catalogue's {total} phrase(s): {keys}"
    if config["cache.allow_missing"]:
        log.warning("running degraded (cache.allow_missing): %s", lacks)
        return
    raise UserError(f"{lacks}; build them with `eko-rtp cache build`, or start anyway with --degraded"
                    " (cache.allow_missing = true)", path=config.source, key="cache.dir")
