"""The development PKI (server.certs): the chain it writes works with Python's `ssl` for mutual TLS.

Handshakes run in memory (two `ssl.MemoryBIO` pairs), so the test proves the certificates and keys are
accepted by OpenSSL without opening a socket.
"""

from __future__ import annotations

import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from server.certs import CertError, create_ca, create_cert, run_certs_command


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    run_certs_command("init", out, None)
    run_certs_command("client", out, "laptop")
    return out


def server_context(pki: Path, require_client_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    if require_client_cert:
        ctx.load_verify_locations(pki / "ca.crt")
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, hostname: str = "localhost"
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """Run a TLS handshake in memory; raise ssl.SSLError from whichever side refuses."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False, server_hostname=hostname)
    done = {"client": False, "server": False}
    for _ in range(10):
        for side, obj in (("client", client), ("server", server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            # Under TLS 1.3 the server checks the client certificate after the client thinks it is done;
            # one application-data round trip settles it either way.
            client.write(b"ping")
            s_in.write(c_out.read())
            assert server.read(4) == b"ping"
            return server, client
    raise AssertionError("handshake did not finish")


def test_init_writes_ca_and_server_files_with_private_keys(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    files = run_certs_command("init", out, None)
    assert [p.name for p in files] == ["ca.crt", "ca.key", "server.crt", "server.key"]
    assert mode(out / "ca.key") == 0o600 and mode(out / "server.key") == 0o600
    assert mode(out / "ca.crt") == 0o644
    assert b"PRIVATE KEY" in (out / "ca.key").read_bytes()
    assert b"PRIVATE KEY" not in (out / "server.crt").read_bytes()


def test_ca_and_server_certificate_contents(pki: Path) -> None:
    ca, srv = load(pki / "ca.crt"), load(pki / "server.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert srv.issuer == ca.subject
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    srv.verify_directly_issued_by(ca)


def test_client_certificate_names_the_node(pki: Path) -> None:
    cert = load(pki / "laptop.crt")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "laptop"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(pki / "laptop.key") == 0o600
    cert.verify_directly_issued_by(load(pki / "ca.crt"))


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_mutual_tls_handshake_succeeds(pki: Path, hostname: str) -> None:
    server, _ = handshake(
        server_context(pki), client_context(pki / "ca.crt", pki / "laptop.crt", pki / "laptop.key"), hostname
    )
    peer = server.getpeercert()
    assert peer is not None
    assert (("commonName", "laptop"),) in peer["subject"]


def test_server_refuses_a_client_without_certificate(pki: Path) -> None:
    with pytest.raises(ssl.SSLError):
        handshake(server_context(pki), client_context(pki / "ca.crt"))


def test_server_refuses_a_client_certificate_from_another_ca(pki: Path, tmp_path: Path) -> None:
    rogue = tmp_path / "rogue"
    ca_cert, ca_key = create_ca(rogue)
    cert, key = create_cert(rogue, "laptop", ca_cert, ca_key, server=False)
    with pytest.raises(ssl.SSLError):
        handshake(server_context(pki), client_context(pki / "ca.crt", cert, key))


def test_client_refuses_a_server_of_another_ca(pki: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    run_certs_command("init", other, None)
    with pytest.raises(ssl.SSLError):
        handshake(server_context(pki, require_client_cert=False), client_context(other / "ca.crt"))


def test_server_certificate_does_not_cover_other_hosts(pki: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(
            server_context(pki, require_client_cert=False), client_context(pki / "ca.crt"), "example.com"
        )


def test_custom_server_hosts(tmp_path: Path) -> None:
    ca_cert, ca_key = create_ca(tmp_path)
    cert, _ = create_cert(tmp_path, "edge", ca_cert, ca_key, server=True, hosts=["10.0.0.5", "cortex.lan"])
    san = load(cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]
    assert san.get_values_for_type(x509.DNSName) == ["cortex.lan"]


def test_init_refuses_to_replace_the_ca(pki: Path) -> None:
    before = (pki / "ca.key").read_bytes()
    with pytest.raises(CertError):
        run_certs_command("init", pki, None)
    assert (pki / "ca.key").read_bytes() == before


def test_client_needs_a_ca(tmp_path: Path) -> None:
    with pytest.raises(CertError):
        run_certs_command("client", tmp_path, "laptop")


@pytest.mark.parametrize("name", [None, "", "../laptop", "Laptop", "ca", "server", "a/b"])
def test_client_names_are_checked(pki: Path, name: str | None) -> None:
    with pytest.raises(CertError):
        run_certs_command("client", pki, name)


def test_unknown_subcommand(tmp_path: Path) -> None:
    with pytest.raises(CertError):
        run_certs_command("revoke", tmp_path, None)
