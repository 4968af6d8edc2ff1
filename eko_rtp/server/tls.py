"""SIP over TLS (RFC 3261 §26.2.1, RFC 5630): the server's ``ssl.SSLContext``, from files, reloadable.

Theory of operation: :func:`build_server_context` reads the certificate chain, the
private key and, for mutual TLS with the trunk, a CA bundle, and returns a new
context; it never changes one in use. :class:`ServerTls` holds the context of the
moment: the SIP transport wraps each accepted connection with
:meth:`ServerTls.wrap` (so a connection keeps the context it was accepted with),
and SIGHUP calls :meth:`ServerTls.reload`, which builds a whole new context and
swaps it in only when that succeeded: a renewed certificate is used by the next
connection, a broken file leaves the running context in place and raises a
:class:`~eko_rtp.errors.UserError` naming the file and the config key.

Policy: TLS 1.2 at least (RFC 8996 retired 1.0 and 1.1; RFC 7525 §3.1.1). For
TLS 1.2 only ECDHE key exchange with an AEAD cipher (AES-GCM, ChaCha20-Poly1305),
so every session has forward secrecy and no CBC padding oracle (RFC 7525 §4.2);
TLS 1.3's suites are all AEAD and are left at OpenSSL's defaults. No
compression (CRIME, RFC 7525 §3.3), no renegotiation, the server's cipher order.

The private key: from the systemd credential ``sip_tls_key`` when the unit has
one (``LoadCredential=sip_tls_key:/etc/eko-rtp/tls/privkey.pem``: systemd copies
the root-only file to a directory only the service can read, systemd.exec(5)
"Credentials"), else from the configured key file, else from the certificate
file itself (one PEM holding both). The key must not be encrypted: the file's
permissions or the credential protect it, and a passphrase would have to sit
beside it anyway.

Mutual TLS: with a client CA bundle, a client must present a certificate that
chains to it, or the handshake fails (RFC 5922 §7.3 calls this the server
asking for the client's certificate). Which *name* the trunk's certificate
carries is not checked here; the transport may read it with
``SSLStream.getpeercert()`` after the handshake.

Connections we open (an in-dialog request whose peer's connection is gone,
RFC 5923 §4: a new one is opened like any other) use :meth:`ServerTls.connect`:
the peer's certificate must chain to the ``sip.tls_trust`` bundle (the system's
store when unset) and name the host we dialled, and we present our own
certificate should the peer ask for one. A reload rebuilds both contexts.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from eko_rtp.errors import UserError
from eko_rtp.service.credentials import credential_path

__all__ = [
    "TLS_KEY_CREDENTIAL",
    "TLS12_CIPHERS",
    "TlsSettings",
    "ServerTls",
    "build_server_context",
    "build_client_context",
]

log = logging.getLogger("eko_rtp.sip.tls")

TLS_KEY_CREDENTIAL = "sip_tls_key"
CERTIFICATE_KEY = "sip.tls_certificate"
PRIVATE_KEY_KEY = "sip.tls_private_key"
CLIENT_CA_KEY = "sip.tls_client_ca"
TRUST_KEY = "sip.tls_trust"
# TLS 1.2: ECDHE key exchange and an AEAD cipher only (RFC 7525 §4.2); PSK and
# anonymous suites are out even where OpenSSL would pair them with ECDHE.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!PSK:!aNULL"
MINIMUM_VERSION = ssl.TLSVersion.TLSv1_2


def _optional_path(value) -> Path | None:
    if value is None or value == "":
        return None
    return Path(value)


@attrs.frozen(kw_only=True)
class TlsSettings:
    """Where the server's TLS material is (the ``sip.tls_*`` config keys)."""

    certificate_chain: Path = attrs.field(converter=Path)  # PEM: the server's certificate, then intermediates
    private_key: Path | None = attrs.field(default=None, converter=_optional_path)  # PEM, unencrypted
    client_ca: Path | None = attrs.field(default=None, converter=_optional_path)  # PEM CAs: set = mutual TLS
    trust: Path | None = attrs.field(default=None, converter=_optional_path)  # PEM CAs of peers we dial; None: system

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    @classmethod
    def from_config(cls, config) -> "TlsSettings":
        """The ``sip.tls_*`` file keys of ``config`` (paths only: the key itself is never in the config)."""
        return cls(certificate_chain=config[CERTIFICATE_KEY], private_key=config[PRIVATE_KEY_KEY],
                   client_ca=config[CLIENT_CA_KEY], trust=config[TRUST_KEY])


def _readable(path: Path, *, what: str, key: str | None) -> None:
    try:
        with open(path, "rb") as file:
            file.read(1)
    except OSError as error:
        raise UserError(f"cannot read the {what}: {error.strerror}", path=str(path), key=key) from None


def _reason(error: ssl.SSLError) -> str:
    # OpenSSL's reason code, without the "(_ssl.c:NNNN)" that means nothing to an operator.
    return f" ({error.reason.replace('_', ' ').lower()})" if error.reason else ""


class _EncryptedKey(Exception):
    pass


def _refuse_passphrase():
    raise _EncryptedKey


def _load_chain_and_key(context: ssl.SSLContext, settings: TlsSettings, environ: Mapping[str, str] | None) -> None:
    chain = settings.certificate_chain
    _readable(chain, what="TLS certificate chain", key=CERTIFICATE_KEY)
    # Parse the certificates alone first, so an error in them is not blamed on the key.
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=str(chain))
    except ssl.SSLError as error:
        raise UserError(f"not a PEM certificate chain{_reason(error)}", path=str(chain), key=CERTIFICATE_KEY) from None

    credential = credential_path(TLS_KEY_CREDENTIAL, environ=environ)
    if credential is not None:
        key_file, where = credential, None  # the path names the credential
    elif settings.private_key is not None:
        key_file, where = settings.private_key, PRIVATE_KEY_KEY
    else:
        key_file, where = chain, CERTIFICATE_KEY
    _readable(key_file, what="TLS private key", key=where)
    try:
        context.load_cert_chain(str(chain), str(key_file), password=_refuse_passphrase)
    except _EncryptedKey:
        raise UserError("the TLS private key is encrypted with a passphrase: give it unencrypted, protected by "
                        f"the file's mode (0600) or as the systemd credential {TLS_KEY_CREDENTIAL}",
                        path=str(key_file), key=where) from None
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            message = f"the TLS private key does not match the certificate in {chain}"
        elif key_file == chain:
            message = (f"no private key in the certificate file: set {PRIVATE_KEY_KEY} or the systemd "
                       f"credential {TLS_KEY_CREDENTIAL}")
        else:
            message = f"not a PEM private key{_reason(error)}"
        raise UserError(message, path=str(key_file), key=where) from None


def _load_client_ca(context: ssl.SSLContext, client_ca: Path) -> None:
    _readable(client_ca, what="TLS client CA bundle", key=CLIENT_CA_KEY)
    try:
        context.load_verify_locations(cafile=str(client_ca))
    except ssl.SSLError as error:
        raise UserError(f"not a PEM CA bundle{_reason(error)}", path=str(client_ca), key=CLIENT_CA_KEY) from None
    if context.cert_store_stats()["x509_ca"] == 0:
        raise UserError("the client CA bundle holds no CA certificate (basicConstraints CA:TRUE)",
                        path=str(client_ca), key=CLIENT_CA_KEY)
    context.verify_mode = ssl.CERT_REQUIRED


def _harden(context: ssl.SSLContext) -> None:
    context.minimum_version = MINIMUM_VERSION
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | ssl.OP_SINGLE_ECDH_USE)


def build_server_context(settings: TlsSettings, *, environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """A new server context from ``settings``; raises :class:`UserError` naming the file and the key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _harden(context)
    _load_chain_and_key(context, settings, environ)
    if settings.client_ca is not None:
        _load_client_ca(context, settings.client_ca)
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def build_client_context(
    *,
    trust: Path | None = None,
    identity: TlsSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> ssl.SSLContext:
    """A context for the connections we open to the trunk (``sips:``, RFC 5630 §3).

    The trunk's certificate is verified against ``trust`` (a PEM CA bundle) or the
    system's store, with its host name checked; ``identity`` is our certificate and
    key when the trunk asks for one (mutual TLS). Same version and cipher policy as
    the server side.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname already
    _harden(context)
    if trust is None:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        _readable(trust, what="TLS trust bundle", key=TRUST_KEY)
        try:
            context.load_verify_locations(cafile=str(trust))
        except ssl.SSLError as error:
            raise UserError(f"not a PEM CA bundle{_reason(error)}", path=str(trust), key=TRUST_KEY) from None
    if identity is not None:
        _load_chain_and_key(context, identity, environ)
    return context


class ServerTls:
    """The server's TLS contexts of the moment; a reload replaces them only when both new ones built."""

    def __init__(self, settings: TlsSettings, *, environ: Mapping[str, str] | None = None):
        self._environ = environ
        self._context, self._client_context = self._build(settings)
        self.settings = settings

    def _build(self, settings: TlsSettings) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        server = build_server_context(settings, environ=self._environ)
        client = build_client_context(trust=settings.trust, identity=settings, environ=self._environ)
        return server, client

    @property
    def context(self) -> ssl.SSLContext:
        return self._context

    def reload(self, settings: TlsSettings | None = None) -> ssl.SSLContext:
        """Build a new context (from ``settings``, or the same files re-read) and use it for new connections.

        Connections already up keep theirs. On a :class:`UserError` (the message
        names the file) nothing changes and the error is raised for the caller to
        report, as a refused reload.
        """
        settings = self.settings if settings is None else settings
        context, self._client_context = self._build(settings)
        self._context = context
        self.settings = settings
        log.info("TLS: certificate chain %s loaded%s", settings.certificate_chain,
                 f", client certificates checked against {settings.client_ca}" if settings.client_ca else "")
        return context

    def wrap(self, transport_stream: trio.abc.Stream) -> trio.SSLStream:
        """The server side of TLS over an accepted connection, with the current context.

        Not ``https_compatible``: SIP has no end-of-exchange of its own as HTTP has,
        so a graceful close (idle, drain, after a 513) sends a close_notify first
        (RFC 8446 §6.1; ``SSLStream.aclose`` does it), and the peer can tell it from
        a cut connection. A peer that closes TCP without one makes ``receive_some``
        raise ``BrokenResourceError`` from ``ssl.SSLEOFError``, which the transport
        takes as an ordinary end (SIP frames its messages by Content-Length, so a
        truncation cannot pass for a message).
        """
        return trio.SSLStream(transport_stream, self._context, server_side=True, https_compatible=False)

    def connect(self, transport_stream: trio.abc.Stream, server_hostname: str) -> trio.SSLStream:
        """The client side of TLS over a connection we opened to ``server_hostname`` (a name or an IP address).

        The peer's certificate must chain to ``settings.trust`` (or the system's
        store) and name ``server_hostname`` (RFC 5922 §7.2); ours is presented if asked.
        """
        return trio.SSLStream(transport_stream, self._client_context, server_hostname=server_hostname,
                              https_compatible=False)  # close_notify, as in wrap()
