"""Encrypted calls against a spawned server: its throwaway TLS certificate and its config.

With ``--spawn --tls`` the bench makes a CA of its own for the run (``trustme``), has it
issue the server a certificate for the loopback address it listens on, writes both to a
temporary directory that dies with the run, and trusts that CA alone when it connects:
no key is ever kept or committed, and the bench checks the server's certificate as a
trunk would. :func:`server_config` is the TOML the spawned server gets: ``tls`` added to
its transports on a port of its own, and with ``--srtp`` SRTP required of every call
(``media.srtp``); SRTP without TLS also needs ``media.srtp_over_insecure_signalling``,
since the keys then cross in clear SDP (RFC 4568 §8.3), which on loopback is the
point of the comparison rather than a risk.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from eko_rtp.errors import UserError
from eko_rtp.media.sdes import CryptoSuite

__all__ = ["ServerTlsFiles", "issue_throwaway", "server_config"]


@attrs.frozen(kw_only=True)
class ServerTlsFiles:
    """PEM files in a run's temporary directory: the CA the bench trusts, the server's chain and key."""

    ca: Path
    certificate_chain: Path
    private_key: Path


def issue_throwaway(directory: Path, *, host: str) -> ServerTlsFiles:
    """A new CA and a server certificate it issued for ``host`` (an IP address), written to ``directory``."""
    try:
        import trustme  # the bench extra's; the server never needs it
    except ImportError:
        raise UserError("--spawn with --tls makes a throwaway CA with trustme: pip install trustme", key="--tls") from None
    authority = trustme.CA(organization_name="eko-bench throwaway CA")
    issued = authority.issue_cert(host)
    files = ServerTlsFiles(ca=directory / "bench-ca.pem", certificate_chain=directory / "server-chain.pem",
                           private_key=directory / "server-key.pem")
    authority.cert_pem.write_to_path(str(files.ca))
    files.certificate_chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    files.private_key.touch(mode=0o600)
    issued.private_key_pem.write_to_path(str(files.private_key))
    return files


def server_config(*, tls: ServerTlsFiles | None, tls_port: int | None, srtp: CryptoSuite | None) -> str:
    """The spawned server's ``[sip]`` and ``[media]`` tables for the run's encryption ('' for none)."""
    lines = []
    if tls is not None:
        if tls_port is None:
            raise ValueError("a TLS listener needs its port")
        lines += [
            "[sip]",
            'transports = ["udp", "tcp", "tls"]',  # UDP and TCP stay, as a server beside clear trunks keeps them
            f"tls_port = {tls_port}",
            f"tls_certificate = {json.dumps(str(tls.certificate_chain))}",
            f"tls_private_key = {json.dumps(str(tls.private_key))}",
        ]
    if srtp is not None:
        lines += ["[media]", 'srtp = "required"']
        if tls is None:
            lines.append("srtp_over_insecure_signalling = true")
    return "\n".join(lines) + "\n" if lines else ""
