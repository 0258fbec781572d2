"""A development PKI for optional mTLS: one CA, a server certificate and client certificates.

Where it sits: beside the identity core, used only by ``cortex-server certs init|client`` and tests.
The server loads the files through `ssl` (``serve --tls-cert --tls-key --client-ca``), the agent with
``--ca --client-cert --client-key``. This is for development and small private deployments; a real
deployment can use any CA.

Files written to the output directory (private keys mode 0600, certificates 0644)::

    ca.crt  ca.key              certs init: the CA (10 years), refuses to overwrite an existing ca.key
    server.crt  server.key      certs init: serverAuth, SAN 127.0.0.1 and localhost by default
    <name>.crt  <name>.key      certs client NAME: clientAuth, subject CN = NAME (the node name)

Keys are ECDSA P-256: accepted by every TLS stack and browser (Ed25519 certificates are not).

Exception tree::

    CertError           -- bad name, missing CA, or refusing to overwrite a CA
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertError", "create_ca", "create_cert", "run_certs_command"]

_CA_DAYS = 3650
_LEAF_DAYS = 825  # the longest leaf validity browsers and Apple platforms still accept
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DEFAULT_HOSTS = ("127.0.0.1", "localhost")
_RESERVED = frozenset({"ca", "server"})


class CertError(Exception):
    """A certificate could not be made: a bad name, a missing CA, or a CA that already exists."""


def _write_private(path: Path, data: bytes) -> None:
    # Write to a 0600 temp file and rename, so the key is never readable by others, not even briefly.
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _out_dir(out_dir: Path) -> Path:
    out = Path(out_dir)
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    return out


def create_ca(out_dir: Path, common_name: str = "Cortex development CA") -> tuple[Path, Path]:
    """Create ``ca.crt`` and ``ca.key`` in *out_dir*; return their paths."""
    out = _out_dir(out_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _load_ca(
    ca_cert: Path | x509.Certificate, ca_key: Path | ec.EllipticCurvePrivateKey
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = (
        ca_cert
        if isinstance(ca_cert, x509.Certificate)
        else x509.load_pem_x509_certificate(Path(ca_cert).read_bytes())
    )
    if isinstance(ca_key, ec.EllipticCurvePrivateKey):
        key = ca_key
    else:
        loaded = serialization.load_pem_private_key(Path(ca_key).read_bytes(), password=None)
        if not isinstance(loaded, ec.EllipticCurvePrivateKey):
            raise CertError("the CA key must be an ECDSA key made by `certs init`")
        key = loaded
    return cert, key


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(entries)


def create_cert(
    out_dir: Path,
    name: str,
    ca_cert: Path | x509.Certificate,
    ca_key: Path | ec.EllipticCurvePrivateKey,
    server: bool,
    hosts: Sequence[str] = _DEFAULT_HOSTS,
) -> tuple[Path, Path]:
    """Create ``<name>.crt``/``<name>.key`` signed by the CA; a server cert (SAN *hosts*) or a client cert.

    *name* must match ``^[a-z0-9][a-z0-9-]{0,62}$`` (it becomes a file name and the subject CN).
    """
    if not _NAME.fullmatch(name):
        raise CertError(f"invalid certificate name {name!r}")
    out = _out_dir(out_dir)
    issuer_cert, issuer_key = _load_ca(ca_cert, ca_key)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(_san(hosts), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    cert_path, key_path = out / f"{name}.crt", out / f"{name}.key"
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def run_certs_command(subcommand: str, out_dir: Path, name: str | None = None) -> list[Path]:
    """Run ``certs init`` (CA + server cert for 127.0.0.1/localhost) or ``certs client NAME``.

    Returns the files written.
    """
    out = Path(out_dir)
    if subcommand == "init":
        if (out / "ca.key").exists():
            raise CertError(f"{out / 'ca.key'} exists; refusing to replace the CA (every cert depends on it)")
        ca_cert, ca_key = create_ca(out)
        srv_cert, srv_key = create_cert(out, "server", ca_cert, ca_key, server=True)
        return [ca_cert, ca_key, srv_cert, srv_key]
    if subcommand == "client":
        if not name:
            raise CertError("certs client needs a NAME")
        if name in _RESERVED:
            raise CertError(f"{name!r} is reserved for the CA and server files")
        ca_cert, ca_key = out / "ca.crt", out / "ca.key"
        if not ca_cert.exists() or not ca_key.exists():
            raise CertError(f"no CA in {out}: run `cortex-server certs init --out {out}` first")
        return list(create_cert(out, name, ca_cert, ca_key, server=False))
    raise CertError(f"unknown certs subcommand {subcommand!r} (init, client)")
