"""
TLS on a node's client and HTTP API ports (mpush.tls): the server context, the
Python client verifying the server, the HTTP API and the C{mpush} and
C{mpush-client} commands over TLS, and one clear error per bad PEM file.

A test CA (and, where needed, an intermediate and a second, unrelated CA) is
made at test time with C{cryptography}; every socket is on 127.0.0.1 or ::1.
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import ipaddress
import json
import os
import socket
import ssl
import urllib.error
import urllib.request
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from OpenSSL._util import lib as openssl_lib
from service_identity import VerificationError
from service_identity.hazmat import DNS_ID, DNSMismatch
from twisted.internet import defer, reactor, threads
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

import mpush.tls
from mpush.cli import main as mpush_cli
from mpush.client import cli as client_cli
from mpush.client.config import ClientConfig, ClientConfigError
from mpush.client.protocol import (
    ClientError,
    ClientState,
    ConnectFailed,
    TlsVerifyFailed,
    connect_client,
)
from mpush.config import ConfigError, TlsConfig, load_config
from mpush.node_api import NodeAPI, PushRequest
from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY
from mpush.server.device.connection import ConnectionFactory
from mpush.server.gateway.gateway import GatewayFactory
from mpush.tap import Backends, build_node, make_dispatcher, make_http_site
from mpush.tls import (
    TlsFailure,
    TrustFileError,
    client_tls_options,
    load_server_material,
    load_trust_root,
    server_tls_options,
    tls_endpoint,
    tls_failure,
)

from tests.polling import wait_until
from tests.server_support import demo_config

NOW = datetime.datetime.now(datetime.timezone.utc)


# ------------------------------------------------------------- test PKI


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key, password: bytes | None = None) -> bytes:
    encryption = (serialization.BestAvailableEncryption(password) if password
                  else serialization.NoEncryption())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


class TestCa:
    """
    A certificate authority made for one test, writing PEM files into
    C{directory}: C{ca_file} is what a client trusts.
    """

    def __init__(self, directory: str, name: str = "mpush test CA", parent: "TestCa | None" = None):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.name = name
        self.parent = parent
        self.key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(parent.certificate.subject if parent else _name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        signer = parent.key if parent else self.key
        if parent is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False)
        self.certificate = builder.sign(signer, hashes.SHA256())
        self.ca_file = self.write(f"{self.slug}-ca.pem", _pem(self.certificate))

    @property
    def slug(self) -> str:
        return self.name.replace(" ", "-")

    def write(self, file_name: str, data: bytes) -> str:
        path = os.path.join(self.directory, file_name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path

    def intermediate(self, name: str) -> "TestCa":
        return TestCa(self.directory, name, parent=self)

    def issue(self, stem: str, dns=("localhost",), ips=("127.0.0.1", "::1"), key=None,
              not_before=None, not_after=None):
        """
        A server certificate for C{dns} and C{ips}; returns C{(cert_file,
        key_file, certificate, key)}.  An intermediate's certificate files
        carry the chain (leaf, then each CA below the root).
        """
        key = key or ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName(name) for name in dns] + [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(dns[0] if dns else stem))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or NOW - datetime.timedelta(hours=1))
            .not_valid_after(not_after or NOW + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
            .sign(self.key, hashes.SHA256())
        )
        chain = b""
        ca = self
        while ca.parent is not None:
            chain += _pem(ca.certificate)
            ca = ca.parent
        cert_file = self.write(f"{stem}-cert.pem", _pem(certificate) + chain)
        key_file = self.write(f"{stem}-key.pem", _key_pem(key))
        return cert_file, key_file, certificate, key


def tls_config(cert_file: str, key_file: str) -> TlsConfig:
    return TlsConfig(cert_file=cert_file, key_file=key_file, connect_server=True, http_server=True)


def current_mode(context: SSL.Context) -> int:
    """The context's mode bitmask (adding no mode returns it)."""
    return context.set_mode(0)


def connection_mode(connection: SSL.Connection) -> int:
    """A live connection's mode bitmask (clearing no mode returns it)."""
    return openssl_lib.SSL_clear_mode(connection._ssl, 0)


# ------------------------------------------------------- the server side


class ServerOptionsTests(SynchronousTestCase):
    """The server context that server_tls_options builds."""

    def setUp(self):
        self.ca = TestCa(self.mktemp())
        self.cert_file, self.key_file, self.certificate, self.key = self.ca.issue("server")

    def test_is_a_server_connection_creator(self):
        options = server_tls_options(tls_config(self.cert_file, self.key_file))
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, options))

    def test_release_buffers_is_set_on_the_context(self):
        options = server_tls_options(tls_config(self.cert_file, self.key_file))
        self.assertTrue(current_mode(options.getContext()) & SSL.MODE_RELEASE_BUFFERS)

    def test_no_compression_no_renegotiation_server_chooses(self):
        context = server_tls_options(tls_config(self.cert_file, self.key_file)).getContext()
        options = context.set_options(0)
        for flag in (SSL.OP_NO_COMPRESSION, SSL.OP_NO_RENEGOTIATION, SSL.OP_CIPHER_SERVER_PREFERENCE):
            self.assertTrue(options & flag, hex(flag))

    def test_certificate_and_key_in_one_file(self):
        both = self.ca.write("both.pem", _pem(self.certificate) + _key_pem(self.key))
        material = load_server_material(TlsConfig(cert_file=both, key_file=both))
        self.assertEqual(material.certificate, self.certificate)
        self.assertEqual(material.chain, ())
        server_tls_options(TlsConfig(cert_file=both, key_file=both))

    def test_chain_is_kept_in_order(self):
        intermediate = self.ca.intermediate("mpush intermediate")
        cert_file, key_file, leaf, _ = intermediate.issue("chained")
        material = load_server_material(TlsConfig(cert_file=cert_file, key_file=key_file))
        self.assertEqual(material.certificate, leaf)
        self.assertEqual(material.chain, (intermediate.certificate,))

    def capture_log(self):
        events = []
        self.patch(mpush.tls, "log", Logger(observer=events.append))
        return events

    def test_expired_certificate_is_logged_not_refused(self):
        events = self.capture_log()
        cert_file, key_file, _, _ = self.ca.issue(
            "expired", not_before=NOW - datetime.timedelta(days=3), not_after=NOW - datetime.timedelta(days=1))
        server_tls_options(TlsConfig(cert_file=cert_file, key_file=key_file))
        [event] = events
        self.assertIn("is not valid now", formatEvent(event))
        self.assertIn(cert_file, formatEvent(event))

    def test_valid_certificate_logs_nothing(self):
        events = self.capture_log()
        server_tls_options(tls_config(self.cert_file, self.key_file))
        self.assertEqual(events, [])

    def test_chain_out_of_order_is_logged(self):
        events = self.capture_log()
        intermediate = self.ca.intermediate("mpush intermediate")
        _, key_file, leaf, _ = intermediate.issue("reversed")
        reversed_file = self.ca.write("reversed.pem", _pem(leaf) + _pem(self.ca.certificate)
                                      + _pem(intermediate.certificate))
        load_server_material(TlsConfig(cert_file=reversed_file, key_file=key_file))
        [event] = events
        self.assertIn("out of order", formatEvent(event))


class BadMaterialTests(SynchronousTestCase):
    """Each unusable PEM file stops the node at start with one line naming its key."""

    def setUp(self):
        self.ca = TestCa(self.mktemp())
        self.cert_file, self.key_file, self.certificate, self.key = self.ca.issue("server")

    def refused(self, cert_file, key_file, key, text):
        error = self.assertRaises(ConfigError, server_tls_options, TlsConfig(cert_file=cert_file, key_file=key_file))
        self.assertEqual(error.key, key)
        self.assertIn(text, str(error))
        self.assertTrue(str(error).startswith(key + ": "), str(error))
        self.assertNotIn("\n", str(error))
        return error

    def test_missing_cert_file(self):
        missing = os.path.join(self.ca.directory, "nope.pem")
        self.refused(missing, self.key_file, "[tls] cert-file", f"cannot read {missing}: No such file")

    def test_missing_key_file(self):
        missing = os.path.join(self.ca.directory, "nope-key.pem")
        self.refused(self.cert_file, missing, "[tls] key-file", f"cannot read {missing}: No such file")

    def test_cert_path_is_a_directory(self):
        self.refused(self.ca.directory, self.key_file, "[tls] cert-file", "Is a directory")

    def test_cert_file_not_set(self):
        self.refused("", self.key_file, "[tls] cert-file", "is not set")

    def test_key_file_not_set(self):
        self.refused(self.cert_file, "", "[tls] key-file", "is not set")

    def test_cert_file_without_a_certificate(self):
        self.refused(self.key_file, self.key_file, "[tls] cert-file", "no PEM certificate in")

    def test_cert_file_garbage(self):
        garbage = self.ca.write("garbage.pem", b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
        self.refused(garbage, self.key_file, "[tls] cert-file", "no PEM certificate in")

    def test_key_file_without_a_key(self):
        self.refused(self.cert_file, self.cert_file, "[tls] key-file", "no usable PEM private key")

    def test_key_does_not_match_the_certificate(self):
        _, other_key_file, _, _ = self.ca.issue("other")
        self.refused(self.cert_file, other_key_file, "[tls] key-file", "does not match the first certificate")

    def test_encrypted_key(self):
        encrypted = self.ca.write("encrypted.pem", _key_pem(self.key, password=b"secret"))
        self.refused(self.cert_file, encrypted, "[tls] key-file", "is encrypted")

    def test_key_openssl_refuses(self):
        # An RSA-1024 key (MPush's RSA key size) is below OpenSSL's default
        # security level for TLS certificates.
        small = rsa.generate_private_key(65537, 1024)
        cert_file, key_file, certificate, _ = self.ca.issue("small", key=small)
        try:
            SSL.Context(SSL.TLS_METHOD).use_certificate(certificate)
        except SSL.Error:
            pass
        else:
            self.skipTest("this OpenSSL accepts RSA-1024 certificates at its default security level")
        self.refused(cert_file, key_file, "[tls] cert-file", "OpenSSL refuses")


# ------------------------------------------------------- the client side


class TlsFailureTests(SynchronousTestCase):
    """tls_failure turns why a handshake failed into words, and says whether verification failed."""

    def test_untrusted_certificate(self):
        failure = tls_failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))
        self.assertTrue(failure.verification)
        self.assertIn("not trusted", failure.reason)

    def test_wrong_name(self):
        error = VerificationError(errors=[DNSMismatch(mismatched_id=DNS_ID("push.example.com"))])
        self.assertEqual(tls_failure(error),
                         TlsFailure(True, "the server's certificate is not valid for push.example.com"))

    def test_other_handshake_failure(self):
        failure = tls_failure(SSL.Error([("SSL routines", "", "wrong version number")]))
        self.assertEqual(failure, TlsFailure(False, "TLS handshake failed: wrong version number"))

    def test_not_a_tls_error(self):
        self.assertIsNone(tls_failure(ConnectionResetError("reset")))


class ClientConfigTests(SynchronousTestCase):
    """ClientConfig's TLS settings are checked before any connection."""

    def setUp(self):
        self.ca = TestCa(self.mktemp())

    def config(self, **overrides):
        values = dict(host="127.0.0.1", port=3000, public_key=MPUSH_DEMO_PUBLIC_KEY, device_id="d")
        values.update(overrides)
        return ClientConfig(**values)

    def test_off_by_default(self):
        config = self.config()
        self.assertFalse(config.tls)
        self.assertIsNone(config.tls_options())

    def test_on(self):
        self.assertIsNotNone(self.config(tls=True, ca_file=self.ca.ca_file).tls_options())

    def test_ca_file_without_tls(self):
        error = self.assertRaises(ClientConfigError, self.config, ca_file=self.ca.ca_file)
        self.assertIn("ca_file is set but tls is off", str(error))

    def test_server_name_without_tls(self):
        error = self.assertRaises(ClientConfigError, self.config, server_name="localhost")
        self.assertIn("server_name is set but tls is off", str(error))

    def test_unreadable_ca_file(self):
        missing = os.path.join(self.ca.directory, "missing.pem")
        error = self.assertRaises(ClientConfigError, self.config, tls=True, ca_file=missing)
        self.assertIn(f"cannot read CA file {missing}", str(error))

    def test_ca_file_without_certificates(self):
        empty = self.ca.write("empty.pem", b"just text\n")
        error = self.assertRaises(ClientConfigError, self.config, tls=True, ca_file=empty)
        self.assertIn("no PEM certificate in CA file", str(error))

    def test_bad_server_name(self):
        error = self.assertRaises(ClientConfigError, self.config, tls=True, server_name="not a host")
        self.assertIn("not a valid host name", str(error))

    def test_empty_ca_file_name(self):
        self.assertRaises(ClientConfigError, self.config, tls=True, ca_file="")

    def test_tls_must_be_a_bool(self):
        self.assertRaises(ClientConfigError, self.config, tls="yes")

    def test_trust_root_errors_are_typed(self):
        self.assertRaises(TrustFileError, load_trust_root, os.path.join(self.ca.directory, "missing.pem"))
        self.assertRaises(ValueError, client_tls_options, "not a host")

    def test_client_cli_options(self):
        parser = client_cli.build_parser()
        args = parser.parse_args(["--demo-key", "--tls", "--ca-file", self.ca.ca_file,
                                  "--server-name", "localhost", "--device-id", "d"])
        config = client_cli.config_from_args(args)
        self.assertEqual((config.tls, config.ca_file, config.server_name), (True, self.ca.ca_file, "localhost"))
        args = parser.parse_args(["--demo-key", "--ca-file", self.ca.ca_file, "--device-id", "d"])
        error = self.assertRaises(client_cli.CliError, client_cli.config_from_args, args)
        self.assertIn("--ca-file and --server-name go with --tls", str(error))
        missing = os.path.join(self.ca.directory, "missing.pem")
        args = parser.parse_args(["--demo-key", "--tls", "--ca-file", missing, "--device-id", "d"])
        error = self.assertRaises(client_cli.CliError, client_cli.config_from_args, args)
        self.assertIn("cannot read CA file", str(error))


# ------------------------------------------------------- a node over TLS


class TlsNode:
    """
    A node on loopback whose client port and HTTP API listen with TLS (built
    with mpush.tls as the lead's tap.py does), plus a plain client port and
    the plain gateway port.
    """

    def __init__(self, test_case, tls: TlsConfig, interface: str = "127.0.0.1"):
        self.test_case = test_case
        self.interface = interface
        self.config = demo_config(load_config(None)).replace(tls=tls)
        self.options = server_tls_options(self.config.tls)
        self.backends = Backends(self.config, reactor)
        self.node, self.backends, info = build_node(self.config, reactor, self.backends)
        self.info = info
        self.ports = []

    @defer.inlineCallbacks
    def start(self):
        connections = ConnectionFactory(self.node, make_dispatcher(self.node))
        connections.noisy = False
        listening = yield tls_endpoint(reactor, 0, self.interface, self.options).listen(connections)
        self.ports.append(listening)
        self.port = listening.getHost().port
        plain = reactor.listenTCP(0, connections, interface=self.interface)
        self.ports.append(plain)
        self.plain_port = plain.getHost().port
        gateway = reactor.listenTCP(
            0, GatewayFactory(self.node.push_center, self.config.core.max_gateway_packet_size),
            interface="127.0.0.1")
        self.ports.append(gateway)
        self.gateway_port = gateway.getHost().port
        self.node.router_center.gateway = ("127.0.0.1", self.gateway_port)
        self.info = dataclasses.replace(self.info, host="127.0.0.1", port=self.gateway_port,
                                        connect_host="127.0.0.1", connect_port=self.port)
        yield self.backends.kicks.listen(self.info.host, self.info.port, self.node.router_center.remote_kick)
        yield self.backends.registry.register(self.info)
        self.api = NodeAPI(self.node, self.backends, self.info, reactor, offline=self.backends.offline)
        site = make_http_site(self.node, self.api, reactor)
        http = yield tls_endpoint(reactor, 0, "127.0.0.1", self.options).listen(site)
        self.ports.append(http)
        self.http_port = http.getHost().port
        self.test_case.addCleanup(self.stop)
        return self

    @defer.inlineCallbacks
    def stop(self):
        for port in self.ports:
            yield port.stopListening()
        yield self.api.close()
        for connection in list(self.node.connections.values()):
            connection.transport.abortConnection()
        yield wait_until(lambda: not self.node.connections)
        yield self.node.router_center.flush_closes()
        yield self.backends.registry.unregister()
        yield self.backends.close()


class TlsCase(TestCase):
    timeout = 30

    def setUp(self):
        self.ca = TestCa(self.mktemp())
        self.cert_file, self.key_file, _, _ = self.ca.issue("server")

    @defer.inlineCallbacks
    def start_node(self, cert_file=None, key_file=None, interface="127.0.0.1"):
        node = TlsNode(self, tls_config(cert_file or self.cert_file, key_file or self.key_file), interface)
        yield node.start()
        return node

    def client_config(self, port, **overrides):
        values = dict(host="127.0.0.1", port=port, public_key=MPUSH_DEMO_PUBLIC_KEY, device_id="device-tls",
                      tls=True, ca_file=self.ca.ca_file)
        values.update(overrides)
        return ClientConfig(**values)

    @defer.inlineCallbacks
    def connect(self, port, **overrides):
        client = yield connect_client(self.client_config(port, **overrides), reactor)
        self.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def refused(self, port, error_type, **overrides):
        """Connect expecting C{error_type}; the failed client must be closed."""
        seen = []

        def prepare(protocol):
            seen.append(protocol)

        d = connect_client(self.client_config(port, **overrides), reactor, prepare=prepare)
        error = yield self.assertFailure(d, error_type)
        [protocol] = seen
        yield wait_until(lambda: protocol.state is ClientState.CLOSED)
        return error


class ClientOverTlsTests(TlsCase):

    @defer.inlineCallbacks
    def test_handshake_fast_connect_and_push(self):
        node = yield self.start_node()
        token = os.path.join(self.mktemp() + "-token.dat")
        first = yield self.connect(node.port, session_file=token, user_id="alice")
        self.assertTrue(first.tls_established)
        self.assertFalse(first.resumed)
        [server_side] = node.node.connections.values()
        handle = server_side.transport.getHandle()
        self.assertIn(handle.get_protocol_version_name(), ("TLSv1.2", "TLSv1.3"))
        self.assertTrue(connection_mode(handle) & SSL.MODE_RELEASE_BUFFERS)
        yield first.close()

        second = yield self.connect(node.port, session_file=token, user_id="alice")
        self.assertTrue(second.resumed)
        self.assertEqual(second.session_id, first.session_id)
        yield second.ping()
        outcome = yield node.api.push(PushRequest(users=("alice",), content=b"over tls", ack="auto"))
        self.assertEqual([result["status"] for result in outcome.results], ["success"])
        received = yield second.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"over tls")

    @defer.inlineCallbacks
    def test_server_name_checked_instead_of_host(self):
        node = yield self.start_node()
        client = yield self.connect(node.port, server_name="localhost")
        self.assertTrue(client.tls_established)
        yield client.ping()

    @defer.inlineCallbacks
    def test_chain_through_an_intermediate(self):
        intermediate = self.ca.intermediate("mpush intermediate")
        cert_file, key_file, _, _ = intermediate.issue("chained")
        node = yield self.start_node(cert_file, key_file)
        client = yield self.connect(node.port)  # trusts only the root
        yield client.ping()

    @defer.inlineCallbacks
    def test_ipv6_loopback(self):
        try:
            with socket.socket(socket.AF_INET6) as probe:
                probe.bind(("::1", 0))
        except OSError:
            self.skipTest("no IPv6 loopback here")
        node = yield self.start_node(interface="::1")
        client = yield self.connect(node.port, host="::1")
        yield client.ping()

    @defer.inlineCallbacks
    def test_client_trusting_another_ca_is_refused(self):
        node = yield self.start_node()
        other = TestCa(self.mktemp(), "another CA")
        error = yield self.refused(node.port, TlsVerifyFailed, ca_file=other.ca_file)
        self.assertIsInstance(error, ConnectFailed)
        self.assertIn(f"cannot connect to 127.0.0.1:{node.port}", str(error))
        self.assertIn("not trusted", str(error))
        # The server side of the refused connection goes away too.
        yield wait_until(lambda: not node.node.connections)

    @defer.inlineCallbacks
    def test_system_trust_does_not_know_the_test_ca(self):
        node = yield self.start_node()
        error = yield self.refused(node.port, TlsVerifyFailed, ca_file=None)
        self.assertIn("not trusted", str(error))

    @defer.inlineCallbacks
    def test_wrong_server_name_is_refused(self):
        node = yield self.start_node()
        error = yield self.refused(node.port, TlsVerifyFailed, server_name="push.example.com")
        self.assertIn("not valid for push.example.com", str(error))

    @defer.inlineCallbacks
    def test_host_not_in_the_certificate_is_refused(self):
        cert_file, key_file, _, _ = self.ca.issue("dns-only", ips=())
        node = yield self.start_node(cert_file, key_file)
        error = yield self.refused(node.port, TlsVerifyFailed)
        self.assertIn("not valid for 127.0.0.1", str(error))

    @defer.inlineCallbacks
    def test_expired_certificate_is_refused(self):
        cert_file, key_file, _, _ = self.ca.issue(
            "expired", not_before=NOW - datetime.timedelta(days=3), not_after=NOW - datetime.timedelta(days=1))
        self.patch(mpush.tls, "log", Logger(observer=lambda event: None))
        node = yield self.start_node(cert_file, key_file)
        yield self.refused(node.port, TlsVerifyFailed)

    @defer.inlineCallbacks
    def test_tls_client_on_a_plain_port(self):
        node = yield self.start_node()
        error = yield self.refused(node.plain_port, ConnectFailed)
        self.assertNotIsInstance(error, TlsVerifyFailed)
        self.assertIn(f"127.0.0.1:{node.plain_port}", str(error))

    @defer.inlineCallbacks
    def test_silent_server_bounds_the_tls_handshake(self):
        silent = Factory.forProtocol(Protocol)  # accepts, never answers
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        number = port.getHost().port
        error = yield self.refused(number, ConnectFailed, handshake_timeout=0.2)
        self.assertNotIsInstance(error, TlsVerifyFailed)
        self.assertIn("no TLS handshake within 0.2 s", str(error))

    @defer.inlineCallbacks
    def test_plain_client_on_the_tls_port(self):
        node = yield self.start_node()
        d = connect_client(self.client_config(node.port, tls=False, ca_file=None), reactor)
        yield self.assertFailure(d, ClientError)
        yield wait_until(lambda: not node.node.connections)

    @defer.inlineCallbacks
    def test_client_cli_over_tls(self):
        node = yield self.start_node()
        args = client_cli.build_parser().parse_args([
            "--port", str(node.port), "--demo-key", "--tls", "--ca-file", self.ca.ca_file,
            "--device-id", "cli-device", "--ping", "1", "--no-health-check"])
        out, err = io.StringIO(), io.StringIO()
        code = yield client_cli.run(reactor, client_cli.config_from_args(args), args, out, err)
        self.assertEqual(code, 0, err.getvalue())
        self.assertIn("handshake ok", out.getvalue())
        self.assertIn("pong", out.getvalue())

    @defer.inlineCallbacks
    def test_client_cli_reports_an_untrusted_server(self):
        node = yield self.start_node()
        other = TestCa(self.mktemp(), "another CA")
        args = client_cli.build_parser().parse_args([
            "--port", str(node.port), "--demo-key", "--tls", "--ca-file", other.ca_file,
            "--device-id", "cli-device", "--ping", "1"])
        out, err = io.StringIO(), io.StringIO()
        code = yield client_cli.run(reactor, client_cli.config_from_args(args), args, out, err)
        self.assertEqual(code, 1)
        self.assertIn("mpush-client: error: cannot connect to", err.getvalue())
        self.assertIn("not trusted", err.getvalue())


class ProtocolVersionTests(TlsCase):
    """
    TLS 1.2 and 1.3 are served; TLS 1.1 is refused (the minimum version and
    OpenSSL's default security level both forbid it; control: a server that
    lowers both speaks it on this machine).
    """

    @staticmethod
    def handshake(port, version, ca_file, ciphers="DEFAULT:@SECLEVEL=0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context = ssl.create_default_context(cafile=ca_file)
            context.set_ciphers(ciphers)
            context.minimum_version = version
            context.maximum_version = version
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped:
                return wrapped.version(), wrapped.cipher()[0]

    @defer.inlineCallbacks
    def listen(self, options):
        port = yield tls_endpoint(reactor, 0, "127.0.0.1", options).listen(Factory.forProtocol(Protocol))
        self.addCleanup(port.stopListening)
        return port.getHost().port

    @defer.inlineCallbacks
    def test_versions(self):
        port = yield self.listen(server_tls_options(tls_config(self.cert_file, self.key_file)))
        for version, name in ((ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")):
            got, _ = yield threads.deferToThread(self.handshake, port, version, self.ca.ca_file)
            self.assertEqual(got, name)
        material = load_server_material(tls_config(self.cert_file, self.key_file))
        lax = CertificateOptions(privateKey=material.private_key, certificate=material.certificate,
                                 insecurelyLowerMinimumTo=TLSVersion.TLSv1_0)
        lax.getContext().set_cipher_list(b"DEFAULT:@SECLEVEL=0")
        lax_port = yield self.listen(lax)
        try:
            yield threads.deferToThread(self.handshake, lax_port, ssl.TLSVersion.TLSv1_1, self.ca.ca_file)
        except (ssl.SSLError, OSError) as exc:
            self.skipTest(f"TLS 1.1 cannot be spoken on this machine at all ({exc}), nothing to compare")
        with self.assertRaises(ssl.SSLError) as caught:
            yield threads.deferToThread(self.handshake, port, ssl.TLSVersion.TLSv1_1, self.ca.ca_file)
        self.assertIn("PROTOCOL_VERSION", str(caught.exception).upper())

    @defer.inlineCallbacks
    def test_tls12_ciphers_are_forward_secret_aead(self):
        port = yield self.listen(server_tls_options(tls_config(self.cert_file, self.key_file)))
        v12 = ssl.TLSVersion.TLSv1_2
        for cipher in ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-CHACHA20-POLY1305"):
            _, chosen = yield threads.deferToThread(self.handshake, port, v12, self.ca.ca_file, cipher)
            self.assertEqual(chosen, cipher)
        # CBC with SHA-1 or SHA-2 MACs: Twisted's default list admits them, ours does not.
        for cipher in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA384"):
            with self.assertRaises(ssl.SSLError, msg=cipher):
                yield threads.deferToThread(self.handshake, port, v12, self.ca.ca_file, cipher)


class HttpApiOverTlsTests(TlsCase):

    @staticmethod
    def fetch(url, context, body=None):
        request = urllib.request.Request(url, method="POST" if body is not None else "GET")
        if body is not None:
            request.data = json.dumps(body).encode()
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, response.read()

    @defer.inlineCallbacks
    def test_api_over_tls(self):
        node = yield self.start_node()
        alice = yield self.connect(node.port, user_id="alice")
        context = ssl.create_default_context(cafile=self.ca.ca_file)
        base = f"https://127.0.0.1:{node.http_port}"
        status, body = yield threads.deferToThread(self.fetch, base + "/v1/allot", context)
        self.assertEqual((status, body), (200, f"127.0.0.1:{node.port}".encode()))
        status, body = yield threads.deferToThread(
            self.fetch, base + "/v1/push", context, {"users": ["alice"], "content": "via https", "ack": "auto"})
        self.assertEqual(status, 200, body)
        self.assertEqual([r["status"] for r in json.loads(body)["results"]], ["success"])
        received = yield alice.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"via https")

    @defer.inlineCallbacks
    def test_untrusting_client_is_refused(self):
        node = yield self.start_node()
        context = ssl.create_default_context()  # the system's trust: not the test CA
        url = f"https://127.0.0.1:{node.http_port}/healthz"
        with self.assertRaises(urllib.error.URLError) as caught:
            yield threads.deferToThread(self.fetch, url, context)
        self.assertIsInstance(caught.exception.reason, ssl.SSLCertVerificationError)

    @defer.inlineCallbacks
    def run_cli(self, *argv):
        out, err = io.StringIO(), io.StringIO()
        code = yield mpush_cli.run(reactor, mpush_cli.build_parser().parse_args(list(argv)), out, err)
        return code, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_mpush_command_over_https(self):
        node = yield self.start_node()
        yield self.connect(node.port, user_id="alice")
        url = f"https://127.0.0.1:{node.http_port}"
        code, out, err = yield self.run_cli("--url", url, "--ca-file", self.ca.ca_file, "users", "show", "alice")
        self.assertEqual(code, mpush_cli.EXIT_OK, err)
        self.assertEqual(json.loads(out)["user"], "alice")
        code, out, err = yield self.run_cli("push", "--user", "alice", "--content", "hi",
                                            "--url", url, "--ca-file", self.ca.ca_file)
        self.assertEqual(code, mpush_cli.EXIT_OK, err)

    @defer.inlineCallbacks
    def test_mpush_command_refuses_an_untrusted_server(self):
        node = yield self.start_node()
        url = f"https://127.0.0.1:{node.http_port}"
        code, out, err = yield self.run_cli("--url", url, "users", "show", "alice")
        self.assertEqual(code, mpush_cli.EXIT_USAGE)
        self.assertIn("TLS: the server's certificate is not trusted", err)
        self.assertIn("--ca-file", err)
        other = TestCa(self.mktemp(), "another CA")
        code, out, err = yield self.run_cli("--url", url, "--ca-file", other.ca_file, "users", "show", "alice")
        self.assertEqual(code, mpush_cli.EXIT_USAGE)
        self.assertIn("not trusted", err)

    @defer.inlineCallbacks
    def test_mpush_command_ca_file_errors(self):
        missing = os.path.join(self.ca.directory, "missing.pem")
        code, out, err = yield self.run_cli("--url", "https://127.0.0.1:1", "--ca-file", missing,
                                            "users", "show", "alice")
        self.assertEqual(code, mpush_cli.EXIT_USAGE)
        self.assertIn(f"--ca-file: cannot read CA file {missing}", err)
        code, out, err = yield self.run_cli("--url", "http://127.0.0.1:1", "--ca-file", self.ca.ca_file,
                                            "users", "show", "alice")
        self.assertEqual(code, mpush_cli.EXIT_USAGE)
        self.assertIn("--ca-file goes with an https:// --url", err)
