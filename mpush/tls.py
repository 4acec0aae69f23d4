"""
TLS for mpush's client, WebSocket and HTTP API ports, and for mpush's own clients.

One place loads and checks the PEM files at start, so a wrong path, a key that
does not match its certificate or an encrypted key is one ConfigError line
naming ``[tls] cert-file`` or ``[tls] key-file`` instead of a stack trace at the
first handshake.  One place tunes the server context: TLS 1.2 at least, only
forward-secret AEAD ciphers, no compression (CRIME), no renegotiation, and
``SSL_MODE_RELEASE_BUFFERS`` so that an idle connection -- the normal state of a
push connection -- gives its record buffers back (measured on an idle echo
server: 36 KiB per TLS 1.3 connection with it, 63 KiB without).  And one place
turns a failed client handshake into words a person can act on.

The gateway and admin ports stay plain: they are internal.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.ssl import (
    AcceptableCiphers,
    Certificate,
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from mpush.config import ConfigError

__all__ = [
    "MIN_TLS_VERSION",
    "SERVER_CIPHERS",
    "SERVER_CONTEXT_MODE",
    "SERVER_CONTEXT_OPTIONS",
    "ServerMaterial",
    "TlsFailure",
    "TrustFileError",
    "client_tls_options",
    "load_server_material",
    "load_trust_root",
    "server_tls_options",
    "tls_endpoint",
    "tls_failure",
]

log = Logger()

CERT_KEY = "[tls] cert-file"
KEY_KEY = "[tls] key-file"

#: Oldest protocol a server port accepts (TLS 1.0 and 1.1 are deprecated, RFC 8996).
MIN_TLS_VERSION = TLSVersion.TLSv1_2
#: TLS 1.2 suites: ECDHE key exchange (forward secrecy) with AES-GCM or
#: ChaCha20-Poly1305 only; TLS 1.3's suites are all of that kind already.
#: Twisted's default also admits CBC and RSA key exchange, for old peers this
#: server does not have (stock MPush clients do not speak TLS at all).
SERVER_CIPHERS = AcceptableCiphers.fromOpenSSLCipherString("ECDHE+AESGCM:ECDHE+CHACHA20")
#: Added to the server context on top of CertificateOptions' own (which already
#: forbid compression and make the server choose the cipher); set explicitly so
#: the guarantees do not hang on another library's defaults.
SERVER_CONTEXT_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE | SSL.OP_NO_RENEGOTIATION
#: Idle connections free their ~17 KB read and write record buffers.
SERVER_CONTEXT_MODE = SSL.MODE_RELEASE_BUFFERS

#: Key types OpenSSL can use for a server certificate.
_SERVER_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class TrustFileError(ValueError):
    """
    A CA file given to a client cannot be used; the message names the file.
    """


@dataclass(frozen=True, slots=True)
class ServerMaterial:
    """
    A server's certificate, the rest of its chain (leaf's issuer first) and key.
    """

    certificate: x509.Certificate
    chain: tuple
    private_key: object


@dataclass(frozen=True, slots=True)
class TlsFailure:
    """
    Why a TLS handshake failed: C{verification} is True when the peer's
    certificate was refused (untrusted, expired, wrong name), False for any
    other handshake failure (no common protocol, not a TLS peer...).
    """

    verification: bool
    reason: str


# ----------------------------------------------------------------- server side


def _read(path: str, key: str) -> bytes:
    if not isinstance(path, str) or not path:
        raise ConfigError("is not set (a PEM file is needed when TLS is on)", key=key)
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", key=key) from None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _certificates(path: str, key: str, what: str) -> list:
    data = _read(path, key)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise ConfigError(f"no PEM certificate in {path} (expected -----BEGIN CERTIFICATE----- {what})",
                          key=key)
    return certificates


def load_server_material(tls_config, now: datetime.datetime | None = None) -> ServerMaterial:
    """
    Read and check C{tls_config.cert_file} (the certificate, then its chain)
    and C{tls_config.key_file} (an unencrypted PEM key; it may be the same
    file).  An expired or not yet valid certificate, or a chain out of order,
    is logged, not refused: the operator sees it at start, clients decide.

    @param now: the time validity is checked against (default: now, UTC).
    @raise ConfigError: keyed C{[tls] cert-file} or C{[tls] key-file}.
    """
    cert_path, key_path = tls_config.cert_file, tls_config.key_file
    leaf, *chain = _certificates(cert_path, CERT_KEY, "blocks, the server's first")
    key_data = _read(key_path, KEY_KEY)
    try:
        private_key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise ConfigError(f"the key in {key_path} is encrypted; mpush starts unattended and "
                          "needs it unencrypted (restrict the file's mode instead)", key=KEY_KEY) from None
    except UnsupportedAlgorithm as exc:
        raise ConfigError(f"the key in {key_path} uses an unsupported algorithm: {exc}", key=KEY_KEY) from None
    except ValueError:
        raise ConfigError(f"no usable PEM private key in {key_path} "
                          "(expected -----BEGIN PRIVATE KEY----- or an RSA/EC key block)", key=KEY_KEY) from None
    if not isinstance(private_key, _SERVER_KEY_TYPES):
        raise ConfigError(f"the key in {key_path} is a {type(private_key).__name__}; a TLS server "
                          "needs an RSA, EC, Ed25519 or Ed448 key", key=KEY_KEY)
    if _public_der(private_key.public_key()) != _public_der(leaf.public_key()):
        raise ConfigError(f"the key in {key_path} does not match the first certificate in {cert_path}",
                          key=KEY_KEY)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    if now < leaf.not_valid_before_utc or now > leaf.not_valid_after_utc:
        log.warn(
            "TLS certificate {path} is not valid now (valid {start} to {end}); clients will refuse it",
            path=cert_path, start=leaf.not_valid_before_utc.isoformat(), end=leaf.not_valid_after_utc.isoformat(),
        )
    for child, parent in zip([leaf, *chain], chain):
        if child.issuer != parent.subject:
            log.warn(
                "TLS certificate chain in {path} is out of order: {child} is not issued by {parent}; "
                "put the server certificate first, then each issuer",
                path=cert_path, child=child.subject.rfc4514_string(), parent=parent.subject.rfc4514_string(),
            )
            break
    return ServerMaterial(leaf, tuple(chain), private_key)


def server_tls_options(tls_config, now: datetime.datetime | None = None) -> CertificateOptions:
    """
    The server side of TLS for every TLS port of a node, built once at start.

    The result is a L{CertificateOptions} (an C{IOpenSSLServerConnectionCreator})
    whose shared context is made here and tuned before any connection uses it.

    @raise ConfigError: keyed C{[tls] cert-file} or C{[tls] key-file}.
    """
    material = load_server_material(tls_config, now)
    options = CertificateOptions(
        privateKey=material.private_key,
        certificate=material.certificate,
        extraCertChain=list(material.chain),
        raiseMinimumTo=MIN_TLS_VERSION,
        acceptableCiphers=SERVER_CIPHERS,
    )
    try:
        context = options.getContext()
    except SSL.Error as exc:
        # E.g. an RSA key below OpenSSL's security level ("ee key too small").
        raise ConfigError(f"OpenSSL refuses {tls_config.cert_file} with its key: {_ssl_reason(exc)}",
                          key=CERT_KEY) from None
    context.set_options(SERVER_CONTEXT_OPTIONS)
    context.set_mode(SERVER_CONTEXT_MODE)
    return options


def tls_endpoint(reactor, port: int, interface: str | None, options, backlog: int = 50) -> SSL4ServerEndpoint:
    """
    A listening endpoint for C{port} on C{interface} ("" or None: every IPv4
    address; an IPv6 address listens on IPv6) speaking TLS with C{options}
    (from L{server_tls_options}).
    """
    return SSL4ServerEndpoint(reactor, port, options, backlog=backlog, interface=interface or "")


# ----------------------------------------------------------------- client side


def load_trust_root(ca_file: str | None):
    """
    What a client trusts: the CA certificates of C{ca_file} (PEM, one or
    more), or the system's trust store when it is None.

    @raise TrustFileError: the file cannot be read or holds no certificate.
    """
    if ca_file is None:
        return platformTrust()
    try:
        with open(ca_file, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise TrustFileError(f"cannot read CA file {ca_file}: {exc.strerror or exc}") from None
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        certificates = []
    if not certificates:
        raise TrustFileError(f"no PEM certificate in CA file {ca_file}")
    return trustRootFromCertificates([
        Certificate.loadPEM(certificate.public_bytes(serialization.Encoding.PEM))
        for certificate in certificates
    ])


def client_tls_options(host: str, ca_file: str | None = None, server_name: str | None = None):
    """
    The client side: verify the server's certificate against C{ca_file} (or
    the system's trust) and its name against C{server_name} or C{host} (a DNS
    name, or an IP address matched against the certificate's IP entries).

    @raise TrustFileError: C{ca_file} is unusable.
    @raise ValueError: the name to verify is not a valid host name.
    """
    trust = load_trust_root(ca_file)
    name = server_name or host
    try:
        return optionsForClientTLS(name, trustRoot=trust)
    except UnicodeError as exc:
        raise ValueError(f"{name!r} is not a valid host name for TLS: {exc}") from None


def _ssl_reason(error: SSL.Error) -> str:
    parts = []
    for item in error.args[0] if error.args and isinstance(error.args[0], list) else ():
        if isinstance(item, tuple) and item:
            parts.append(str(item[-1]))
    return ", ".join(part for part in parts if part) or str(error) or "TLS error"


def _expected_name(error) -> str:
    names = []
    for mismatch in getattr(error, "errors", ()) or ():
        wanted = getattr(mismatch, "mismatched_id", None)
        value = getattr(wanted, "hostname", None) or getattr(wanted, "ip", None)
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if value is not None:
            names.append(str(value))
    return ", ".join(names)


def tls_failure(reason) -> TlsFailure | None:
    """
    Classify, for a client, why its connection was lost (a Failure or an
    exception) when TLS is the cause; None when it is not a TLS error.
    """
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, VerificationError):
        expected = _expected_name(error)
        what = f"is not valid for {expected}" if expected else "does not name this server"
        return TlsFailure(True, f"the server's certificate {what}")
    if isinstance(error, SSL.Error):
        text = _ssl_reason(error)
        if "certificate verify failed" in text:
            return TlsFailure(True, "the server's certificate is not trusted (certificate verify failed: "
                                    "not issued by a trusted CA, expired or not yet valid)")
        return TlsFailure(False, f"TLS handshake failed: {text}")
    return None
