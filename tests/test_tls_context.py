"""The SIP server's TLS context (server/tls.py): real handshakes over loopback with throwaway certificates."""

from __future__ import annotations

import ssl

import pytest
import trio
import trustme
from cryptography.hazmat.primitives import serialization

from eko_rtp.errors import UserError
from eko_rtp.server.tls import (
    TLS_KEY_CREDENTIAL,
    ServerTls,
    TlsSettings,
    build_client_context,
    build_server_context,
)
from eko_rtp.service.credentials import credential_path

HOST = "sip.test"
HANDSHAKE_DEADLINE = 10  # s: real sockets, so a real clock; a handshake takes milliseconds


@pytest.fixture
def ca():
    return trustme.CA()


@pytest.fixture
def files(tmp_path, ca):
    """A server certificate and key for sip.test (generated per test, written to the test's tmp dir)."""
    issued = ca.issue_cert(HOST, "127.0.0.1")
    chain = tmp_path / "fullchain.pem"
    key = tmp_path / "privkey.pem"
    for blob in issued.cert_chain_pems:
        blob.write_to_path(str(chain), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return chain, key


def client_context(ca, *, minimum=ssl.TLSVersion.TLSv1_2, maximum=None, ciphers=None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(context)
    context.minimum_version = minimum
    if maximum is not None:
        context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


async def exchange(server_context: ssl.SSLContext | ServerTls, client: ssl.SSLContext):
    """One connection: the client sends a line, the server echoes it. (client outcome, server outcome)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    outcome = {}

    async def serve():
        transport = await listener.accept()
        if isinstance(server_context, ServerTls):
            stream = server_context.wrap(transport)
        else:
            stream = trio.SSLStream(transport, server_context, server_side=True, https_compatible=True)
        try:
            await stream.do_handshake()
            data = await stream.receive_some()
            await stream.send_all(data)
            outcome["server"] = (stream.version(), stream.cipher()[0])
        except trio.BrokenResourceError as error:
            outcome["server"] = error.__cause__
        finally:
            await trio.aclose_forcefully(stream)

    async def call():
        transport = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(transport, client, server_hostname=HOST)
        try:
            await stream.do_handshake()
            await stream.send_all(b"OPTIONS sips:eko@sip.test SIP/2.0\r\n")
            reply = await stream.receive_some()
            outcome["client"] = reply if reply else "closed"
        except trio.BrokenResourceError as error:
            outcome["client"] = error.__cause__
        finally:
            await trio.aclose_forcefully(stream)

    with trio.fail_after(HANDSHAKE_DEADLINE):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(call)
    await listener.aclose()
    return outcome["client"], outcome["server"]


async def test_a_client_trusting_our_ca_handshakes_and_talks(ca, files):
    chain, key = files
    context = build_server_context(TlsSettings(certificate_chain=chain, private_key=key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_NONE
    client, server = await exchange(context, client_context(ca))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"
    assert server[0] == "TLSv1.3"


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA], ids=["ecdsa", "rsa"])
async def test_tls_1_2_negotiates_ecdhe_with_an_aead_cipher(tmp_path, key_type):
    ca = trustme.CA(key_type=key_type)
    issued = ca.issue_cert(HOST, key_type=key_type)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(chain))
    issued.private_key_pem.write_to_path(str(key))
    context = build_server_context(TlsSettings(certificate_chain=chain, private_key=key))
    client, (version, cipher) = await exchange(context, client_context(ca, maximum=ssl.TLSVersion.TLSv1_2))
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    # The server offers nothing else to a TLS 1.2 client.
    names = {entry["name"] for entry in context.get_ciphers() if entry["protocol"] == "TLSv1.2"}
    assert names and all(name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in names)


@pytest.mark.parametrize("ciphers", ["AES128-SHA", "ECDHE-RSA-AES128-SHA", "AES128-GCM-SHA256"],
                         ids=["rsa key exchange cbc", "ecdhe cbc", "rsa key exchange gcm"])
async def test_tls_1_2_without_ecdhe_and_aead_is_refused(tmp_path, ciphers):
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    issued = ca.issue_cert(HOST, key_type=trustme.KeyType.RSA)
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(chain))
    issued.private_key_pem.write_to_path(str(key))
    context = build_server_context(TlsSettings(certificate_chain=chain, private_key=key))
    client, server = await exchange(context, client_context(ca, maximum=ssl.TLSVersion.TLSv1_2, ciphers=ciphers))
    assert isinstance(server, ssl.SSLError)
    assert server.reason == "NO_SHARED_CIPHER"


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_is_refused(ca, files):
    chain, key = files
    old_client = client_context(ca, minimum=ssl.TLSVersion.TLSv1_1, maximum=ssl.TLSVersion.TLSv1_1,
                                ciphers="DEFAULT:@SECLEVEL=0")
    # The control: a server that allows TLS 1.1 talks with this client, so the
    # refusal below is our server's minimum, not a client that cannot speak at all.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1_1
    permissive.set_ciphers("DEFAULT:@SECLEVEL=0")
    permissive.load_cert_chain(str(chain), str(key))
    client, server = await exchange(permissive, old_client)
    if not isinstance(server, tuple):
        pytest.skip(f"this OpenSSL cannot speak TLS 1.1 at all ({server})")
    assert server[0] == "TLSv1.1"

    context = build_server_context(TlsSettings(certificate_chain=chain, private_key=key))
    client, server = await exchange(context, old_client)
    assert isinstance(server, ssl.SSLError)
    assert server.reason in ("UNSUPPORTED_PROTOCOL", "NO_PROTOCOLS_AVAILABLE")
    assert isinstance(client, ssl.SSLError)


@pytest.fixture
def trunk_ca(tmp_path):
    """The trunk's own CA (mutual TLS), its bundle on disk."""
    authority = trustme.CA()
    bundle = tmp_path / "trunk-ca.pem"
    authority.cert_pem.write_to_path(str(bundle))
    return authority, bundle


async def test_mutual_tls_refuses_a_client_without_a_certificate(ca, files, trunk_ca):
    chain, key = files
    authority, bundle = trunk_ca
    context = build_server_context(TlsSettings(certificate_chain=chain, private_key=key, client_ca=bundle))
    assert context.verify_mode == ssl.CERT_REQUIRED

    client, server = await exchange(context, client_context(ca))
    assert isinstance(server, ssl.SSLError)
    assert server.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"
    assert client == "closed" or isinstance(client, ssl.SSLError)

    # A certificate from another CA is refused too...
    stranger = client_context(ca)
    trustme.CA().issue_cert("trunk.example").configure_cert(stranger)
    client, server = await exchange(context, stranger)
    assert isinstance(server, ssl.SSLError)
    assert server.reason == "CERTIFICATE_VERIFY_FAILED"

    # ...and the trunk's own is accepted.
    trunk = client_context(ca)
    authority.issue_cert("trunk.example").configure_cert(trunk)
    client, server = await exchange(context, trunk)
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"


async def test_reload_with_a_bad_file_keeps_the_old_context(ca, files, tmp_path):
    chain, key = files
    tls = ServerTls(TlsSettings(certificate_chain=chain, private_key=key))
    before = tls.context
    chain.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(UserError) as caught:
        tls.reload()
    assert str(caught.value).startswith(f"{chain}, key 'sip.tls_certificate': not a PEM certificate chain")
    assert tls.context is before
    client, server = await exchange(tls, client_context(ca))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"

    # A renewed certificate (from another CA) is used by the next connection.
    renewed_ca = trustme.CA()
    issued = renewed_ca.issue_cert(HOST)
    chain.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    issued.private_key_pem.write_to_path(str(key))
    assert tls.reload() is tls.context is not before
    client, server = await exchange(tls, client_context(renewed_ca))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"
    client, server = await exchange(tls, client_context(ca))
    assert isinstance(client, ssl.SSLError) and client.reason == "CERTIFICATE_VERIFY_FAILED"


async def test_reload_with_a_missing_key_keeps_the_old_context(files, tmp_path):
    chain, key = files
    tls = ServerTls(TlsSettings(certificate_chain=chain, private_key=key))
    before = tls.context
    missing = tmp_path / "gone.pem"
    with pytest.raises(UserError) as caught:
        tls.reload(TlsSettings(certificate_chain=chain, private_key=missing))
    assert str(caught.value) == f"{missing}, key 'sip.tls_private_key': cannot read the TLS private key: No such file or directory"
    assert tls.context is before
    assert tls.settings.private_key == key


async def test_the_key_from_a_systemd_credential(ca, files, tmp_path):
    chain, key = files
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / TLS_KEY_CREDENTIAL).write_bytes(key.read_bytes())
    environ = {"CREDENTIALS_DIRECTORY": str(credentials)}
    # The credential wins over a configured key file (here one that does not exist).
    tls = ServerTls(TlsSettings(certificate_chain=chain, private_key=tmp_path / "absent.pem"), environ=environ)
    client, server = await exchange(tls, client_context(ca))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"
    assert credential_path(TLS_KEY_CREDENTIAL, environ=environ) == credentials / TLS_KEY_CREDENTIAL
    assert credential_path(TLS_KEY_CREDENTIAL, environ={}) is None
    assert credential_path(TLS_KEY_CREDENTIAL, environ={"CREDENTIALS_DIRECTORY": str(tmp_path / "none")}) is None
    with pytest.raises(ValueError, match="not a valid credential name"):
        credential_path("../etc/shadow", environ=environ)


async def test_one_pem_holding_the_chain_and_the_key(ca, files, tmp_path):
    chain, key = files
    combined = tmp_path / "combined.pem"
    combined.write_bytes(chain.read_bytes() + key.read_bytes())
    client, server = await exchange(build_server_context(TlsSettings(certificate_chain=combined)), client_context(ca))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"


def test_errors_name_the_file_and_the_key(ca, files, tmp_path):
    chain, key = files
    other_key = tmp_path / "other-key.pem"
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(other_key))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    encrypted = tmp_path / "encrypted.pem"
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"secret")))
    leaf_only = tmp_path / "leaf-as-ca.pem"
    leaf_only.write_bytes(chain.read_bytes())
    cases = [
        (TlsSettings(certificate_chain=tmp_path / "nope.pem", private_key=key),
         f"{tmp_path / 'nope.pem'}, key 'sip.tls_certificate': cannot read the TLS certificate chain: No such file or directory"),
        (TlsSettings(certificate_chain=garbage, private_key=key),
         f"{garbage}, key 'sip.tls_certificate': not a PEM certificate chain (no certificate or crl found)"),
        (TlsSettings(certificate_chain=chain, private_key=other_key),
         f"{other_key}, key 'sip.tls_private_key': the TLS private key does not match the certificate in {chain}"),
        (TlsSettings(certificate_chain=chain, private_key=garbage),
         f"{garbage}, key 'sip.tls_private_key': not a PEM private key"),
        (TlsSettings(certificate_chain=chain, private_key=encrypted),
         f"{encrypted}, key 'sip.tls_private_key': the TLS private key is encrypted with a passphrase: give it "
         "unencrypted, protected by the file's mode (0600) or as the systemd credential sip_tls_key"),
        (TlsSettings(certificate_chain=chain),
         f"{chain}, key 'sip.tls_certificate': no private key in the certificate file: set sip.tls_private_key or "
         "the systemd credential sip_tls_key"),
        (TlsSettings(certificate_chain=chain, private_key=key, client_ca=tmp_path / "no-ca.pem"),
         f"{tmp_path / 'no-ca.pem'}, key 'sip.tls_client_ca': cannot read the TLS client CA bundle: No such file or directory"),
        (TlsSettings(certificate_chain=chain, private_key=key, client_ca=garbage),
         f"{garbage}, key 'sip.tls_client_ca': not a PEM CA bundle (no certificate or crl found)"),
        (TlsSettings(certificate_chain=chain, private_key=key, client_ca=leaf_only),
         f"{leaf_only}, key 'sip.tls_client_ca': the client CA bundle holds no CA certificate (basicConstraints CA:TRUE)"),
    ]
    for settings, message in cases:
        with pytest.raises(UserError) as caught:
            build_server_context(settings, environ={})
        assert str(caught.value) == message


def test_a_key_in_a_bad_credential_names_the_credential(files, tmp_path):
    chain, key = files
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / TLS_KEY_CREDENTIAL).write_text("not a key\n")
    with pytest.raises(UserError) as caught:
        build_server_context(TlsSettings(certificate_chain=chain, private_key=key),
                             environ={"CREDENTIALS_DIRECTORY": str(credentials)})
    assert str(caught.value) == f"{credentials / TLS_KEY_CREDENTIAL}: not a PEM private key"


async def test_the_client_context_verifies_the_trunk(ca, files, tmp_path):
    chain, key = files
    server = build_server_context(TlsSettings(certificate_chain=chain, private_key=key))
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    client, _ = await exchange(server, build_client_context(trust=bundle))
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"
    stranger_bundle = tmp_path / "stranger.pem"
    trustme.CA().cert_pem.write_to_path(str(stranger_bundle))
    client, _ = await exchange(server, build_client_context(trust=stranger_bundle))
    assert isinstance(client, ssl.SSLError) and client.reason == "CERTIFICATE_VERIFY_FAILED"


async def test_the_client_context_presents_our_certificate_for_mutual_tls(ca, files, trunk_ca, tmp_path):
    chain, key = files
    authority, trunk_bundle = trunk_ca
    # The trunk's server requires a client certificate from our CA; we trust its CA.
    trunk_issued = authority.issue_cert(HOST)
    trunk_chain, trunk_key = tmp_path / "trunk-chain.pem", tmp_path / "trunk-key.pem"
    trunk_issued.cert_chain_pems[0].write_to_path(str(trunk_chain))
    trunk_issued.private_key_pem.write_to_path(str(trunk_key))
    our_ca = tmp_path / "our-ca.pem"
    ca.cert_pem.write_to_path(str(our_ca))
    trunk_server = build_server_context(TlsSettings(certificate_chain=trunk_chain, private_key=trunk_key, client_ca=our_ca))
    ours = build_client_context(trust=trunk_bundle, identity=TlsSettings(certificate_chain=chain, private_key=key),
                                environ={})
    client, server = await exchange(trunk_server, ours)
    assert client == b"OPTIONS sips:eko@sip.test SIP/2.0\r\n"
