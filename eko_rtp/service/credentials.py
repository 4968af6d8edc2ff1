"""Secrets handed to the service by systemd, never through the unit file.

``LoadCredential=elevenlabs_api_key:/etc/eko-rtp/credentials/elevenlabs_api_key``
makes systemd copy that root-only file into a private, read-only directory named
by ``$CREDENTIALS_DIRECTORY`` (systemd.exec(5), "Credentials"), visible to the
service alone and gone when it stops. Outside systemd (a developer's shell, or a
unit using a 0600 ``EnvironmentFile=``) the key comes from ``$ELEVENLABS_API_KEY``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from eko_rtp.errors import UserError

ELEVENLABS_CREDENTIAL = "elevenlabs_api_key"
ELEVENLABS_ENVIRONMENT = "ELEVENLABS_API_KEY"
DEEPGRAM_CREDENTIAL = "deepgram_api_key"
DEEPGRAM_ENVIRONMENT = "DEEPGRAM_API_KEY"

# systemd credential names are file names: no '/', not '.' or '..'.
_CREDENTIAL_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]*\Z")


def credential_path(name: str, *, environ: Mapping[str, str] | None = None) -> Path | None:
    """The file of credential ``name`` when the service has one, else None.

    For secrets read by path (``ssl`` loads a PEM key, which spans lines, from a
    file only); :func:`read_credential` reads a one-line secret's text.
    """
    if not _CREDENTIAL_NAME.match(name):
        raise ValueError(f"{name!r} is not a valid credential name")
    environ = os.environ if environ is None else environ
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / name
    return path if path.exists() else None


def read_credential(name: str, *, environ: Mapping[str, str] | None = None) -> str | None:
    """The credential ``name`` from ``$CREDENTIALS_DIRECTORY``, stripped; None if absent or empty."""
    path = credential_path(name, environ=environ)
    if path is None:
        return None
    try:
        value = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8 text"
        raise UserError(f"cannot read credential {name}: {reason}", path=str(path)) from None
    return _checked(value, where=str(path))


def elevenlabs_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The ElevenLabs API key: the systemd credential first, then ``$ELEVENLABS_API_KEY``.

    None means no key is configured (live TTS falls back to espeak-ng). The value
    is a secret: pass it to the log sanitizer, never to a log call.
    """
    environ = os.environ if environ is None else environ
    key = read_credential(ELEVENLABS_CREDENTIAL, environ=environ)
    if key is not None:
        return key
    return _checked(environ.get(ELEVENLABS_ENVIRONMENT, ""), where=f"${ELEVENLABS_ENVIRONMENT}")


def deepgram_api_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The Deepgram API key: the systemd credential first, then ``$DEEPGRAM_API_KEY``.

    None means no key: no speech recognition, the scripts fall back to DTMF.
    """
    environ = os.environ if environ is None else environ
    key = read_credential(DEEPGRAM_CREDENTIAL, environ=environ)
    if key is not None:
        return key
    return _checked(environ.get(DEEPGRAM_ENVIRONMENT, ""), where=f"${DEEPGRAM_ENVIRONMENT}")


SIP_USERNAME_CREDENTIAL = "sip_auth_username"
SIP_PASSWORD_CREDENTIAL = "sip_auth_password"
SIP_USERNAME_ENVIRONMENT = "EKO_SIP_USERNAME"
SIP_PASSWORD_ENVIRONMENT = "EKO_SIP_PASSWORD"
SIP_REALM_ENVIRONMENT = "EKO_SIP_REALM"


def sip_credentials(environ: Mapping[str, str] | None = None):
    """The user name and password the trunk may challenge for (RFC 8760 digest), or None.

    Each comes from its systemd credential (``sip_auth_username``, ``sip_auth_password``)
    first, then ``$EKO_SIP_USERNAME`` / ``$EKO_SIP_PASSWORD``; ``$EKO_SIP_REALM``
    restricts them to one realm (default: whichever realm asks). One without the
    other is a configuration error.
    """
    from eko_rtp.sip.digest import DigestCredentials

    environ = os.environ if environ is None else environ
    username = read_credential(SIP_USERNAME_CREDENTIAL, environ=environ)
    if username is None:
        username = _checked(environ.get(SIP_USERNAME_ENVIRONMENT, ""), where=f"${SIP_USERNAME_ENVIRONMENT}")
    password = read_credential(SIP_PASSWORD_CREDENTIAL, environ=environ)
    if password is None:
        password = _checked(environ.get(SIP_PASSWORD_ENVIRONMENT, ""), where=f"${SIP_PASSWORD_ENVIRONMENT}")
    if username is None and password is None:
        return None
    if username is None or password is None:
        missing = "user name" if username is None else "password"
        raise UserError(f"SIP digest credentials need both a user name and a password; the {missing} is missing "
                        f"(credentials {SIP_USERNAME_CREDENTIAL}/{SIP_PASSWORD_CREDENTIAL}, or "
                        f"${SIP_USERNAME_ENVIRONMENT}/${SIP_PASSWORD_ENVIRONMENT})")
    realm = environ.get(SIP_REALM_ENVIRONMENT, "").strip() or None
    return DigestCredentials(username=username, password=password, realm=realm)


def _checked(value: str, *, where: str) -> str | None:
    # A trailing newline from `echo key > file` is expected; anything else that is
    # blank inside the key would corrupt the HTTP header it goes into.
    value = value.strip()
    if not value:
        return None
    if any(character.isspace() or not character.isprintable() for character in value):
        # Do not echo the value: it is (most of) a secret.
        raise UserError("the API key contains whitespace or control characters", path=where)
    return value
