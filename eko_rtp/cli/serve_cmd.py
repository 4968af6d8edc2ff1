"""``eko-rtp serve``: load the config and the cache, then answer calls until stopped."""

from __future__ import annotations

import importlib
import logging

import trio

from eko_rtp.config import load_config
from eko_rtp.errors import UserError

log = logging.getLogger("eko_rtp.serve")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="answer SIP calls and speak (the media server)")
    parser.add_argument("--config", help="TOML config file (default: embedded defaults)")
    parser.add_argument("--listen", help="SIP address HOST:PORT for UDP and TCP (config sip.listen)")
    parser.add_argument("--media-address", help="IP address for RTP and our SDP c= line (config media.address)")
    parser.add_argument("--rtp-ports", help="RTP port range LO-HI (config media.rtp_ports)")
    parser.add_argument("--cache", help="rendered phrase cache directory (config cache.dir)")
    parser.add_argument("--phrases", help="phrase catalogue file (config cache.phrases)")
    parser.add_argument("--script", help="call script MODULE:FUNCTION (config script.function)")
    parser.add_argument("--keep-cpu-awake", action="store_true", default=None,
                        help="keep the CPUs the server is pinned to from halting between frames, with one"
                             " SCHED_IDLE spinner each (config media.keep_cpu_awake; dedicated CPUs only)")
    parser.add_argument("--crm", help="CRM msgpack-RPC address HOST:PORT or unix socket path (config crm.address)")
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
    return config.with_overrides(
        {
            "sip.listen": args.listen,
            "media.address": args.media_address,
            "media.rtp_ports": args.rtp_ports,
            "cache.dir": args.cache,
            "cache.phrases": args.phrases,
            "script.function": args.script,
            "crm.address": args.crm,
            "media.keep_cpu_awake": args.keep_cpu_awake,
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


def run_serve(args) -> int:
    from eko_rtp.cache.loader import load_cache
    from eko_rtp.crm.address import parse_crm_address
    from eko_rtp.server.lifecycle import Setup, run_service
    from eko_rtp.service.logs import configure_logging
    from eko_rtp.tts.engine import TtsEngine

    def load_setup() -> Setup:
        config = config_from_args(args)
        script = load_script(config["script.function"])
        return Setup(config, load_cache(config["cache.dir"], config["cache.phrases"]), script)

    setup = load_setup()
    config = setup.config
    if config.cpus is not None:
        from eko_rtp.server.awake import pin_to

        pin_to(config.cpus)  # before trio.run: the threads it starts inherit the mask
    settings = tts_settings(config)
    configure_logging(
        level=args.log_level,
        mask_numbers=not config["service.log_full_numbers"],
        secrets=[settings.api_key],
    )
    crm_address = parse_crm_address(config["crm.address"]) if config["crm.address"] else None

    async def main() -> None:
        tts = TtsEngine.from_settings(settings)
        try:
            await run_service(setup=setup, load_setup=load_setup, crm_address=crm_address, tts=tts)
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
            raise _first(user_errors) from None
        bind_errors = group.subgroup(OSError)
        if bind_errors is None:
            log.info("interrupted; exiting")
            return 0
        # Only start-up can raise an OSError this far: binding the SIP sockets.
        error = _first(bind_errors)
        raise UserError(f"cannot bind SIP on {config['sip.listen']}: {error.strerror or error}", key="sip.listen") from None
    return 0


def _first(group: BaseExceptionGroup) -> BaseException:
    error = group.exceptions[0]
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error
