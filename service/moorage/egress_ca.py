"""A per-sandbox certificate authority for the egress tunnel's TLS termination (egress_secrets.py).

A sandbox that holds an ``environment_variable`` placeholder gets its own CA when it starts: an
ECDSA P-256 key made here, kept in this process's memory only (never written, never sent), and a
self-signed certificate (``CA:TRUE``, path length 0, ``keyCertSign``/``cRLSign`` only) that the
runner adds to the sandbox's trust bundle. For each host the tunnel terminates TLS for, ``context``
makes (and caches, ``MAX_LEAVES``) a leaf for that one name (``CA:FALSE``, ``serverAuth``, the host
as its only subject alternative name, an IP address as an IP entry), and an ``ssl.SSLContext`` that
serves it with ALPN ``http/1.1``. ``ssl`` loads keys only from a path, so the leaf's key and chain
go through an anonymous in-memory file (``memfd_create``), closed as soon as they are loaded.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections import OrderedDict

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MAX_LEAVES = 64
CA_DAYS = 365  # the CA lives as long as its sandbox; this only bounds a forgotten trust store
LEAF_DAYS = 30
_SKEW = datetime.timedelta(hours=1)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Moorage"), x509.NameAttribute(NameOID.COMMON_NAME, common)]
    )


def san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


class SessionCA:
    """One sandbox's CA; see the module docstring."""

    def __init__(self, label: str = "sandbox") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        public = self._key.public_key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(f"Moorage egress CA ({label})"))
            .issuer_name(_name(f"Moorage egress CA ({label})"))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
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
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self._contexts: OrderedDict[str, tuple[datetime.datetime, ssl.SSLContext]] = OrderedDict()

    def leaf(self, host: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A new leaf certificate for ``host`` and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(host[:64]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectAlternativeName([san(host)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return cert, key

    def context(self, host: str) -> ssl.SSLContext:
        """The server context that presents a leaf for ``host`` (cached, renewed before expiry)."""
        now = datetime.datetime.now(datetime.UTC)
        cached = self._contexts.get(host)
        if cached is not None and cached[0] - now > datetime.timedelta(days=1):
            self._contexts.move_to_end(host)
            return cached[1]
        cert, key = self.leaf(host)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ) + cert.public_bytes(serialization.Encoding.PEM)
        fd = os.memfd_create("moorage-leaf", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self._contexts[host] = (cert.not_valid_after_utc, ctx)
        while len(self._contexts) > MAX_LEAVES:
            self._contexts.popitem(last=False)
        return ctx
