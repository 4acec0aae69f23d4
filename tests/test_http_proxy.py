"""
The HTTP proxy over the long connection (spec 13) and its address policy.

Upstream web servers are twisted.web sites on 127.0.0.1 (one with TLS and a
CA made for the test); devices are scripted over StringTransport, and one
end-to-end test goes over real sockets to a loopback node.  The handler's
reactor fails the test on any connection outside loopback, so the refusals
of private and metadata ranges are checked without ever sending there.
"""

import datetime
import ipaddress
import json

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import defer, reactor, ssl
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from mpush.config import ConfigError, ProxyConfig, load_config
from mpush.protocol.body import decode_body, make_packet
from mpush.protocol.fields import FieldWriter
from mpush.protocol.messages import ErrorMessage, HttpRequestMessage, HttpResponseMessage
from mpush.protocol.packet import Command, Flags, encode_packet
from mpush.server.device.connection import ConnectionFactory
from mpush.server.device.dispatcher import DeviceDispatcher
from mpush.tap import make_dispatcher
from mpush.server.proxy.http_proxy import (
    ERROR_HEADER,
    MAX_HEADER_BYTES,
    UNREACHABLE,
    MAX_HEADERS,
    BadHeader,
    BadUri,
    DnsMapping,
    HttpProxyHandler,
    Overloaded,
    ResponseTooLarge,
    Target,
    failure_reply,
    forwarded_headers,
    read_timeout_ms,
    request_headers,
    response_headers,
)
from mpush.server.proxy.ssrf import (
    CGNAT,
    LINK_LOCAL,
    LOOPBACK,
    METADATA,
    MULTICAST,
    PRIVATE,
    RESERVED,
    UNSPECIFIED,
    AddressPolicy,
    AddressRefused,
    GuardedEndpoint,
    HostNotFound,
    ReactorHostResolver,
    UpstreamUnreachable,
    classify,
)

from tests.loopback_support import LoopbackNode
from tests.polling import wait_until
from tests.server_support import ScriptedDevice, connect, make_node


def handshake_handlers(node):
    """
    The node's HEARTBEAT and HANDSHAKE handlers, to put beside a proxy.
    """
    base = make_dispatcher(node)
    return [base.handler_for(Command.HEARTBEAT), base.handler_for(Command.HANDSHAKE)]

PEER_PORT = 40000


# -- policy: never connects anywhere ---------------------------------------------


class ClassifyTests(SynchronousTestCase):
    def test_refused_ranges(self):
        cases = {
            "127.0.0.1": LOOPBACK,
            "127.255.0.9": LOOPBACK,
            "::1": LOOPBACK,
            "10.1.2.3": PRIVATE,
            "172.16.0.1": PRIVATE,
            "172.31.255.255": PRIVATE,
            "192.168.1.1": PRIVATE,
            "fc00::1": PRIVATE,
            "fd12:3456::1": PRIVATE,
            "169.254.1.1": LINK_LOCAL,
            "fe80::1": LINK_LOCAL,
            "fe80::1%eth0": LINK_LOCAL,
            "169.254.169.254": METADATA,
            "fd00:ec2::254": METADATA,
            "100.100.100.200": METADATA,
            "100.64.0.1": CGNAT,
            "100.127.255.254": CGNAT,
            "0.0.0.0": UNSPECIFIED,
            "0.1.2.3": UNSPECIFIED,
            "::": UNSPECIFIED,
            "224.0.0.1": MULTICAST,
            "239.255.255.250": MULTICAST,
            "ff02::1": MULTICAST,
            "240.0.0.1": RESERVED,
            "255.255.255.255": RESERVED,
            "192.0.2.10": RESERVED,
            "198.18.0.1": RESERVED,
            "2001:db8::1": RESERVED,
            "4000::1": RESERVED,
        }
        for address, category in cases.items():
            self.assertEqual(classify(address), category, address)

    def test_ipv4_inside_ipv6_is_checked_as_ipv4(self):
        self.assertEqual(classify("::ffff:127.0.0.1"), LOOPBACK)
        self.assertEqual(classify("::ffff:10.0.0.1"), PRIVATE)
        self.assertEqual(classify("64:ff9b::a9fe:a9fe"), METADATA)  # NAT64 of 169.254.169.254
        self.assertEqual(classify("2002:7f00:1::"), LOOPBACK)  # 6to4 of 127.0.0.1
        self.assertIsNone(classify("::ffff:8.8.8.8"))

    def test_public_addresses_pass(self):
        for address in ("8.8.8.8", "1.1.1.1", "100.128.0.1", "172.32.0.1", "2606:4700::1111"):
            self.assertIsNone(classify(address), address)

    def test_not_an_address(self):
        self.assertEqual(classify("example.com"), "not an IP address")
        self.assertEqual(AddressPolicy().refusal("999.1.1.1"), "not an IP address")


class AddressPolicyTests(SynchronousTestCase):
    def test_allow_list_opens_a_range(self):
        policy = AddressPolicy(("127.0.0.1/32", "10.20.0.0/16", "fd00::/8"))
        self.assertIsNone(policy.refusal("127.0.0.1"))
        self.assertIsNone(policy.refusal("::ffff:127.0.0.1"))
        self.assertIsNone(policy.refusal("10.20.3.4"))
        self.assertIsNone(policy.refusal("fd00::5"))
        self.assertEqual(policy.refusal("127.0.0.2"), LOOPBACK)
        self.assertEqual(policy.refusal("10.21.0.1"), PRIVATE)
        self.assertEqual(policy.refusal("169.254.169.254"), METADATA)

    def test_allow_entries_with_a_port_open_only_that_port(self):
        policy = AddressPolicy(("127.0.0.1:8080", "10.1.0.0/16:443", "[fd00::/8]:443", "192.168.0.0/24"))
        self.assertIsNone(policy.refusal("127.0.0.1", 8080))
        self.assertEqual(policy.refusal("127.0.0.1", 8081), LOOPBACK)
        self.assertEqual(policy.refusal("127.0.0.1"), LOOPBACK)
        self.assertIsNone(policy.refusal("10.1.9.9", 443))
        self.assertEqual(policy.refusal("10.1.9.9", 22), PRIVATE)
        self.assertIsNone(policy.refusal("fd00::5", 443))
        self.assertEqual(policy.refusal("fd00::5", 80), PRIVATE)
        self.assertIsNone(policy.refusal("192.168.0.7", 22))
        error = self.assertRaises(AddressRefused, policy.check, "db.test", ["10.1.2.3"], 5432)
        self.assertEqual((error.address, error.port), ("10.1.2.3", 5432))

    def test_any_refused_address_refuses_the_name(self):
        policy = AddressPolicy()
        policy.check("ok.test", ["8.8.8.8", "2606:4700::1111"])
        error = self.assertRaises(AddressRefused, policy.check, "mixed.test", ["8.8.8.8", "10.0.0.7"])
        self.assertEqual((error.host, error.address, error.category), ("mixed.test", "10.0.0.7", PRIVATE))
        self.assertRaises(HostNotFound, policy.check, "none.test", [])


class RecordingConnectReactor:
    """
    Stands in for a reactor; records connectTCP calls and connects nowhere.
    """

    def __init__(self):
        self.connects = []

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.connects.append((host, port))
        raise AssertionError("a refused address was connected to")


class FakeResolver:
    """
    Names to addresses, as a test says; records every lookup.
    """

    def __init__(self, names=None):
        self.names = dict(names or {})
        self.lookups = []

    def resolve(self, host, port):
        self.lookups.append(host)
        answer = self.names.get(host, [])
        if isinstance(answer, Exception):
            return defer.fail(answer)
        return defer.succeed(list(answer))


class GuardedEndpointTests(SynchronousTestCase):
    def connect(self, host, resolver=None, allow=(), trusted=False):
        fake = RecordingConnectReactor()
        endpoint = GuardedEndpoint(
            fake, resolver or FakeResolver(), AddressPolicy(allow), host, 80, 4.0, trusted=trusted
        )
        return fake, self.failureResultOf(endpoint.connect(None))

    def test_literal_private_and_metadata_addresses_are_refused_before_any_connect(self):
        for host in ("10.0.0.1", "169.254.169.254", "100.64.0.1", "192.168.0.1", "::1", "fd00:ec2::254"):
            fake, failure = self.connect(host)
            failure.trap(AddressRefused)
            self.assertEqual(fake.connects, [], host)

    def test_name_resolving_to_loopback_is_refused_before_any_connect(self):
        resolver = FakeResolver({"sneaky.test": ["93.184.216.34", "127.0.0.1"]})
        fake, failure = self.connect("sneaky.test", resolver)
        self.assertEqual(failure.trap(AddressRefused), AddressRefused)
        self.assertEqual(failure.value.address, "127.0.0.1")
        self.assertEqual(fake.connects, [])
        self.assertEqual(resolver.lookups, ["sneaky.test"])

    def test_unresolvable_name(self):
        fake, failure = self.connect("nowhere.test", FakeResolver())
        failure.trap(HostNotFound)
        fake, failure = self.connect("broken.test", FakeResolver({"broken.test": OSError("SERVFAIL")}))
        failure.trap(HostNotFound)
        self.assertIn("SERVFAIL", str(failure.value))
        self.assertEqual(fake.connects, [])

    def test_literal_address_is_not_looked_up(self):
        resolver = FakeResolver()
        self.connect("10.0.0.1", resolver)
        self.assertEqual(resolver.lookups, [])


class ReactorHostResolverTests(TestCase):
    @defer.inlineCallbacks
    def test_numeric_host(self):
        # A numeric host needs no DNS traffic: getaddrinfo answers it locally.
        addresses = yield ReactorHostResolver(reactor).resolve("127.0.0.1", 80)
        self.assertEqual(addresses, ["127.0.0.1"])


# -- the pieces of a request ------------------------------------------------------


class TargetTests(SynchronousTestCase):
    def test_parse(self):
        target = Target.parse("http://User:pw@Example.COM/a/b?x=1&y=2#frag")
        self.assertEqual(target, Target("http", "example.com", 80, "/a/b?x=1&y=2"))
        self.assertEqual(target.url(), b"http://example.com:80/a/b?x=1&y=2")
        self.assertEqual(target.host_header(), b"example.com")
        self.assertEqual(target.for_log(), "http://example.com:80/a/b")

    def test_ports_and_ipv6(self):
        self.assertEqual(Target.parse("https://h.test").port, 443)
        self.assertEqual(Target.parse("https://h.test").path, "/")
        target = Target.parse("http://[::1]:8080/x")
        self.assertEqual((target.host, target.port), ("::1", 8080))
        self.assertEqual(target.url(), b"http://[::1]:8080/x")
        self.assertEqual(target.host_header(), b"[::1]:8080")
        self.assertEqual(Target.parse("https://h.test:443/").host_header(), b"h.test")

    def test_idna_and_escaping(self):
        target = Target.parse("http://bücher.test/a b/ü?q=ä b&r=%20")
        self.assertEqual(target.host, "xn--bcher-kva.test")
        self.assertEqual(target.path, "/a%20b/%C3%BC?q=%C3%A4%20b&r=%20")

    def test_bad_uris(self):
        for uri in (
            "ftp://h.test/", "http://", "not a url", "/relative/only", "http://exa mple.test/",
            "http://h.test:99999/", "http://h.test:0/", "http://h.test:x/", " http://h.test/",
            "http://h.test/\r\nX-Injected: 1", "http://[::1/", "http://a..b/", "http://[fe80::1%25eth0]/",
            "javascript:alert(1)",
        ):
            self.assertRaises(BadUri, Target.parse, uri)

    def test_follow(self):
        target = Target.parse("http://h.test:81/a/b?x=1")
        self.assertEqual(target.follow("c").text(), "http://h.test:81/a/c")
        self.assertEqual(target.follow("/d?e=f").text(), "http://h.test:81/d?e=f")
        self.assertEqual(target.follow("//other.test/g").text(), "http://other.test:80/g")
        self.assertEqual(target.follow("https://x.test/").text(), "https://x.test:443/")
        self.assertRaises(BadUri, target.follow, "ftp://x.test/")


class DnsMappingTests(SynchronousTestCase):
    def test_translate(self):
        mapping = DnsMapping(
            (("API.test", ("10.0.0.5:8080", "10.0.0.6")), ("v6.test", ("[fd00::1]:81",))),
            choice=lambda targets: targets[-1],
        )
        mapped = mapping.translate(Target.parse("http://api.test/p?q=1"))
        self.assertEqual(mapped, Target("http", "10.0.0.6", 80, "/p?q=1"))
        self.assertEqual(mapping.translate(Target.parse("https://api.test/")).port, 443)
        self.assertEqual(mapping.translate(Target.parse("http://v6.test/")).text(), "http://[fd00::1]:81/")
        self.assertIsNone(mapping.translate(Target.parse("http://other.test/")))
        self.assertEqual(
            mapping.trusted,
            {("10.0.0.5", 8080), ("10.0.0.6", 80), ("10.0.0.6", 443), ("fd00::1", 81)},
        )

    def test_random_pick_uses_every_target(self):
        picks = []
        mapping = DnsMapping((("a.test", ("10.0.0.1:1", "10.0.0.2:2")),), choice=lambda t: picks.append(t) or t[0])
        mapping.translate(Target.parse("http://a.test/"))
        self.assertEqual(picks, [(("10.0.0.1", 1), ("10.0.0.2", 2))])

    def test_bad_entries_are_config_errors(self):
        for targets in (("10.0.0.1:0",), ("10.0.0.1:70000",), ("10.0.0.1:x",), ("bad host:80",), ("[::1",), ()):
            error = self.assertRaises(ConfigError, DnsMapping, (("a.test", targets),))
            self.assertEqual(error.key, "[http] dns-mapping")


class HeaderTests(SynchronousTestCase):
    def test_read_timeout(self):
        self.assertEqual(read_timeout_ms({"readTimeout": "5000"}, 10000), 5000)
        self.assertEqual(read_timeout_ms({"READTIMEOUT": "7"}, 10000), 7)
        for bad in ("0", "-5", "abc", " 5000", "5000 ", "+5", "", "2147483648", None):
            self.assertEqual(read_timeout_ms({"readTimeout": bad}, 10000), 10000, bad)
        self.assertEqual(read_timeout_ms(None, 10000), 10000)
        self.assertEqual(read_timeout_ms({"readTimeout": "2147483647"}, 10000), 120000)
        self.assertEqual(read_timeout_ms({"readTimeout": "2147483647"}, 300000), 300000)

    def test_forwarded_headers(self):
        pairs = forwarded_headers({
            "Accept": "text/plain",
            "X-Space": " leading",
            "readTimeout": "100",
            "Host": "evil.test",
            "Content-Length": "999",
            "Transfer-Encoding": "chunked",
            "X-Forwarded-For": "1.2.3.4",
            "Connection": "close",
            "X-Null": None,
            "X-Unicode": "ü",
        })
        self.assertEqual(
            pairs, ((b"Accept", b"text/plain"), (b"X-Space", b" leading"), (b"X-Unicode", "ü".encode()))
        )

    def test_unusable_headers(self):
        self.assertRaises(BadHeader, forwarded_headers, {"bad name": "x"})
        self.assertRaises(BadHeader, forwarded_headers, {"X-A": "line\rbreak"})
        self.assertRaises(BadHeader, forwarded_headers, {"X-A": "nul\x00"})

    def test_request_headers(self):
        headers = request_headers(((b"Accept", b"*/*"),), Target.parse("http://h.test:81/"), "127.0.0.1", 4000)
        self.assertEqual(headers.getRawHeaders(b"host"), [b"h.test:81"])
        self.assertEqual(headers.getRawHeaders(b"connection"), [b"keep-alive"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-for"), [b"127.0.0.1"])
        self.assertEqual(headers.getRawHeaders(b"x-forwarded-port"), [b"4000"])
        self.assertEqual(headers.getRawHeaders(b"accept"), [b"*/*"])

    def test_response_headers(self):
        upstream = Headers()
        upstream.addRawHeader(b"Set-Cookie", b"a=1")
        upstream.addRawHeader(b"Set-Cookie", b"b=2")
        upstream.addRawHeader(b"Transfer-Encoding", b"chunked")
        upstream.addRawHeader(b"X-Latin", b"caf\xe9")
        headers = response_headers(upstream, b"hello")
        self.assertEqual(headers, {"Set-Cookie": "b=2", "X-Latin": "café", "content-length": "5"})
        self.assertIsNone(response_headers(Headers(), b""))


class FailureReplyTests(SynchronousTestCase):
    def test_statuses(self):
        from OpenSSL.SSL import Error as TlsError

        cases = [
            (AddressRefused("h.test", "10.0.0.1", PRIVATE), 504),
            (BadUri("x"), 502),
            (ResponseTooLarge("x"), 502),
            (Overloaded("x"), 503),
            (ConnectionRefusedError(), 504),
            (ConnectTimeout(), 504),
            (HostNotFound("h.test"), 504),
            (UpstreamUnreachable("h.test", 80, ["127.0.0.1"], ConnectionRefusedError()), 504),
            (RequestTransmissionFailed([Failure(ConnectionRefusedError())]), 503),
            (ResponseNeverReceived([Failure(TlsError([]))]), 502),
            (ResponseNeverReceived([Failure(ConnectionRefusedError())]), 502),
            (ValueError("boom"), 502),
        ]
        for error, status in cases:
            self.assertEqual(failure_reply(Failure(error))[0], status, error)
        # Not reachable, for whatever reason: one answer, so a device cannot
        # tell a private name from a missing one, or a closed port from a filtered one.
        unreachable = [
            AddressRefused("h.test", "10.0.0.1", PRIVATE), HostNotFound("h.test"),
            ConnectionRefusedError(), ConnectTimeout(),
            UpstreamUnreachable("h.test", 80, ["127.0.0.1"], ConnectionRefusedError()),
            UpstreamUnreachable("h.test", 80, ["127.0.0.1"], ConnectTimeout()),
        ]
        answers = {failure_reply(Failure(error)) for error in unreachable}
        self.assertEqual(answers, {(504, "Gateway Timeout", UNREACHABLE)})


# -- test web servers ----------------------------------------------------------------


class Upstream(Resource):
    """
    A web server with a route per behaviour; records every request.
    """

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = []
        self.hanging = []

    def render(self, request):
        record = {
            "method": request.method.decode(),
            "uri": request.uri.decode(),
            "headers": {
                name.decode().lower(): [v.decode() for v in values]
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            "body": request.content.read().decode("latin-1"),
        }
        self.requests.append(record)
        route = request.path.decode().strip("/").split("/")[0]
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        return getattr(self, "route_" + (route or "echo"))(request, args, record)

    def route_echo(self, request, args, record):
        request.setHeader(b"content-type", b"application/json")
        request.responseHeaders.addRawHeader(b"X-Repeat", b"one")
        request.responseHeaders.addRawHeader(b"X-Repeat", b"two")
        return json.dumps(record).encode()

    def route_big(self, request, args, record):
        return b"x" * int(args["n"])

    def route_stream(self, request, args, record):
        # No Content-Length: chunked, so only reading tells the size.
        for _ in range(int(args["n"]) // 100):
            request.write(b"y" * 100)
        request.finish()
        return NOT_DONE_YET

    def route_hang(self, request, args, record):
        # Fires (either way) once the proxy drops the connection.
        self.hanging.append(request.notifyFinish().addBoth(lambda _: None))
        return NOT_DONE_YET

    def route_status(self, request, args, record):
        request.setResponseCode(int(args["code"]), b"Custom Phrase")
        return b"status body"

    def route_redirect(self, request, args, record):
        left = int(args["n"])
        if left == 0:
            return self.route_echo(request, args, record)
        request.setResponseCode(int(args.get("code", "302")))
        request.setHeader(b"location", f"redirect?n={left - 1}".encode())
        return b""

    def route_goto(self, request, args, record):
        request.setResponseCode(int(args.get("code", "302")))
        request.setHeader(b"location", args["to"].encode())
        return b""


def make_ca():
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mpush proxy test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key, ca_cert, dns_name):
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(dns_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)


def pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class LoopbackOnlyReactor:
    """
    The real reactor, except that a TCP connection outside 127.0.0.0/8 and
    ::1 fails the test instead of being made; it also keeps the connectors
    so a test can wait until they are all closed.
    """

    def __init__(self, real):
        self._real = real
        self.connectors = []
        self.hosts = []
        self.outside = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def connectTCP(self, host, port, factory, timeout=30, bindAddress=None):
        self.hosts.append(host)
        if not ipaddress.ip_address(host).is_loopback:
            self.outside.append((host, port))
            raise AssertionError(f"the test tried to connect to {host}:{port}")
        connector = self._real.connectTCP(host, port, factory, timeout, bindAddress)
        self.connectors.append(connector)
        return connector


class ProxyDevice(ScriptedDevice):
    """
    A handshaken device on its own StringTransport connection, that sends
    HTTP_PROXY requests the Java client's way (encrypted) and reads answers.
    """

    def __init__(self, node, dispatcher, device_id="proxy-dev", port=PEER_PORT):
        super().__init__(device_id=device_id)
        self.protocol, self.transport = connect(node, dispatcher, port=port)
        self.protocol.dataReceived(self.handshake_bytes())
        [reply] = self.read(self.transport)
        self.accept_handshake_ok(reply)

    def request(self, uri, method=0, headers=None, body=None, session_id=None):
        session_id = session_id or self.packet_id()
        packet = make_packet(
            Command.HTTP_PROXY, HttpRequestMessage(method, uri, headers, body), session_id,
            cipher=self.cipher, compress_threshold=1024,
        )
        self.protocol.dataReceived(encode_packet(packet))
        return session_id

    def replies(self):
        """
        (session id, flags, HttpResponseMessage) of every answer since the last call.
        """
        out = []
        for packet in self.read(self.transport):
            assert packet.cmd == Command.HTTP_PROXY, packet
            body = decode_body(packet, self.cipher, 1 << 24)
            out.append((packet.session_id, packet.flags, HttpResponseMessage.decode(body)))
        return out


def proxy_config(**fields):
    fields.setdefault("enabled", True)
    fields.setdefault("allow", ("127.0.0.1/32",))
    return load_config(None).replace(proxy=ProxyConfig(**fields))


def proxy_of(node, reactor, **kwargs):
    """The HTTP proxy of C{node}'s config, on C{reactor}."""
    return HttpProxyHandler(node.config.proxy, reactor, **kwargs)


class ProxyCase(TestCase):
    """
    A node with the proxy on a loopback-only reactor, and upstream servers.
    """

    timeout = 30

    def setUp(self):
        self.guard = LoopbackOnlyReactor(reactor)
        self.resolver = FakeResolver()
        self.upstream = Upstream()
        self.port = self.listen(self.upstream)

    def listen(self, resource, tls=None, interface="127.0.0.1"):
        wrapper = WrappingFactory(Site(resource))
        if tls is None:
            listening = reactor.listenTCP(0, wrapper, interface=interface)
        else:
            listening = reactor.listenSSL(0, wrapper, tls, interface=interface)
        self.addCleanup(self.stop_server, listening, wrapper)
        return listening.getHost().port

    @defer.inlineCallbacks
    def stop_server(self, listening, wrapper):
        yield listening.stopListening()
        for protocol in list(wrapper.protocols):
            protocol.transport.abortConnection()
        yield wait_until(lambda: not wrapper.protocols)

    def proxy(self, trust_root=None, choice=None, **fields):
        self.node = make_node(proxy_config(**fields))
        kwargs = {} if choice is None else {"choice": choice}
        self.handler = proxy_of(self.node, self.guard, resolver=self.resolver, trust_root=trust_root, **kwargs)
        self.dispatcher = DeviceDispatcher(handshake_handlers(self.node) + [self.handler])
        self.addCleanup(self.close_proxy)
        return self.handler

    @defer.inlineCallbacks
    def close_proxy(self):
        yield self.handler.close()
        self.assertEqual(self.guard.outside, [])
        yield wait_until(lambda: all(c.state == "disconnected" for c in self.guard.connectors))

    @defer.inlineCallbacks
    def closed_port(self):
        listening = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
        port = listening.getHost().port
        yield listening.stopListening()
        return port

    def device(self, port=PEER_PORT, device_id="proxy-dev"):
        return ProxyDevice(self.node, self.dispatcher, device_id=device_id, port=port)

    def url(self, path, port=None, host="127.0.0.1", scheme="http"):
        return f"{scheme}://{host}:{port or self.port}{path}"

    @defer.inlineCallbacks
    def fetch(self, device, uri, **request):
        """
        Send one request, wait until it is answered; the one answer.
        """
        session_id = device.request(uri, **request)
        for pending in self.handler.active(device.protocol):
            if pending.session_id == session_id:
                yield pending.finished
        [(reply_id, flags, message)] = device.replies()
        self.assertEqual(reply_id, session_id)
        return flags, message

    def assertRefused(self, flags, message):
        """
        The one answer for an upstream that cannot be reached, whatever why.
        """
        self.assertRaw(flags, message, 504, "Gateway Timeout")
        self.assertEqual(message.headers, {ERROR_HEADER: UNREACHABLE})
        self.assertIsNone(message.body)

    def assertRaw(self, flags, message, status, phrase):
        self.assertEqual(flags, 0, "proxy-generated answers are raw")
        self.assertEqual((message.status_code, message.reason_phrase), (status, phrase))
        self.assertIn(ERROR_HEADER, message.headers)


# -- requests that reach a web server ------------------------------------------------


class ForwardingTests(ProxyCase):
    @defer.inlineCallbacks
    def test_get(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(
            device, self.url("/echo?a=1&b=2"), headers={"readTimeout": "5000", "Accept": "application/json"}
        )
        self.assertEqual(flags & Flags.CRYPTO, Flags.CRYPTO, "an upstream response is sent encrypted")
        self.assertEqual((message.status_code, message.reason_phrase), (200, "OK"))
        echoed = json.loads(message.body)
        self.assertEqual(message.headers["content-length"], str(len(message.body)))
        self.assertEqual(message.headers["X-Repeat"], "two")
        self.assertEqual(message.headers["Content-Type"], "application/json")
        self.assertEqual(echoed["method"], "GET")
        self.assertEqual(echoed["uri"], "/echo?a=1&b=2")
        headers = echoed["headers"]
        self.assertEqual(headers["host"], [f"127.0.0.1:{self.port}"])
        self.assertEqual(headers["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(headers["x-forwarded-port"], [str(PEER_PORT)])
        self.assertEqual(headers["connection"], ["keep-alive"])
        self.assertEqual(headers["accept"], ["application/json"])
        self.assertNotIn("readtimeout", headers)
        self.assertEqual(self.handler.in_flight, 0)

    @defer.inlineCallbacks
    def test_post_put_delete_and_unknown_method(self):
        self.proxy()
        device = self.device()
        _, message = yield self.fetch(
            device, self.url("/echo"), method=1, body=b"a=1&b=2",
            headers={"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "999"},
        )
        echoed = json.loads(message.body)
        self.assertEqual((echoed["method"], echoed["body"]), ("POST", "a=1&b=2"))
        self.assertEqual(echoed["headers"]["content-length"], ["7"])
        for method, name in ((2, "PUT"), (3, "DELETE"), (9, "GET")):
            _, message = yield self.fetch(device, self.url("/echo"), method=method)
            self.assertEqual(json.loads(message.body)["method"], name)

    @defer.inlineCallbacks
    def test_header_quirks(self):
        self.proxy()
        device = self.device()
        # Spec 3.3: "X-First:" first has a null value (not forwarded), "X-Reuse:"
        # takes the value before it; no trimming; the last line needs its \n.
        text = "X-First:\nX-Space: padded\nX-Reuse:\nX-Forwarded-For:6.6.6.6\nHost:evil.test\nX-Lost:1"
        body = (
            FieldWriter().write_byte(0).write_string(self.url("/echo")).write_string(text)
            .write_bytes(None).getvalue()
        )
        session_id = device.packet_id()
        packet = make_packet(Command.HTTP_PROXY, _Raw(body), session_id, cipher=device.cipher)
        device.protocol.dataReceived(encode_packet(packet))
        [pending] = self.handler.active(device.protocol)
        yield pending.finished
        [(_, _, message)] = device.replies()
        echoed = json.loads(message.body)["headers"]
        self.assertNotIn("x-first", echoed)
        self.assertNotIn("x-lost", echoed)
        self.assertEqual(echoed["x-space"], ["padded"])
        self.assertEqual(echoed["x-reuse"], ["padded"])
        self.assertEqual(echoed["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(echoed["host"], [f"127.0.0.1:{self.port}"])

    @defer.inlineCallbacks
    def test_ipv6_loopback(self):
        port = self.listen(self.upstream, interface="::1")
        self.proxy(allow=("::1/128",))
        device = self.device()
        _, message = yield self.fetch(device, f"http://[::1]:{port}/echo")
        self.assertEqual(message.status_code, 200)
        self.assertEqual(json.loads(message.body)["headers"]["host"], [f"[::1]:{port}"])
        flags, message = yield self.fetch(device, self.url("/echo"))
        self.assertRefused(flags, message)

    @defer.inlineCallbacks
    def test_bad_header_is_502(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/echo"), headers={"Bad Name": "x"})
        self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertEqual(self.upstream.requests, [])

    @defer.inlineCallbacks
    def test_upstream_status_and_phrase_are_passed_on_encrypted(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/status?code=404"))
        self.assertEqual(flags & Flags.CRYPTO, Flags.CRYPTO)
        self.assertEqual((message.status_code, message.reason_phrase, message.body), (404, "Custom Phrase", b"status body"))
        flags, message = yield self.fetch(device, self.url("/status?code=504"))
        self.assertEqual(flags & Flags.CRYPTO, Flags.CRYPTO, "an upstream 504 is still a response")

    @defer.inlineCallbacks
    def test_large_response_is_compressed_then_encrypted(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/big?n=50000"))
        self.assertEqual(flags & (Flags.CRYPTO | Flags.COMPRESS), Flags.CRYPTO | Flags.COMPRESS)
        self.assertEqual(message.body, b"x" * 50000)

    @defer.inlineCallbacks
    def test_does_not_block_the_connection(self):
        self.proxy()
        device = self.device()
        slow = device.request(self.url("/hang"))
        [pending] = self.handler.active(device.protocol)
        # The connection goes on to its next packet while the request waits.
        device.protocol.dataReceived(b"\xdf")
        self.assertEqual(device.transport.value(), b"\xdf")
        device.transport.clear()
        _, message = yield self.fetch(device, self.url("/echo"))
        self.assertEqual(message.status_code, 200)
        self.assertFalse(pending.done)
        self.assertEqual(self.handler.cancel_requests(device.protocol), 1)
        self.assertIsNone((yield pending.finished))
        self.assertEqual(device.replies(), [], f"abandoned request {slow} is not answered")
        self.assertEqual(self.handler.in_flight, 0)
        yield wait_until(lambda: all(d.called for d in self.upstream.hanging))


class ProxyErrorTests(ProxyCase):
    @defer.inlineCallbacks
    def test_empty_uri_is_one_400(self):
        self.proxy()
        device = self.device()
        sent = [device.request(""), device.request(None)]
        # An empty body is a message with every field at its default: no uri.
        sent.append(device.packet_id())
        device.protocol.dataReceived(encode_packet(make_packet(Command.HTTP_PROXY, None, sent[-1])))
        replies = device.replies()
        self.assertEqual([session_id for session_id, _, _ in replies], sent)
        for _, flags, message in replies:
            self.assertRaw(flags, message, 400, "Bad Request")
            self.assertIsNone(message.body)
        self.assertEqual(self.handler.in_flight, 0)
        # Nothing follows (MPush would also send a 502): the next answer on
        # the connection is the next request's, and it is the only one.
        _, ok = yield self.fetch(device, self.url("/echo"))
        self.assertEqual(ok.status_code, 200)
        self.assertEqual(len(self.upstream.requests), 1)

    def test_bad_uris_are_502(self):
        self.proxy()
        device = self.device()
        for uri in ("ftp://127.0.0.1/", "not a url", "http://127.0.0.1:99999/", "http://exa mple.test/"):
            device.request(uri)
            [(_, flags, message)] = device.replies()
            self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertEqual(self.resolver.lookups, [])

    @defer.inlineCallbacks
    def test_read_timeout_is_408(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/hang"), headers={"readTimeout": "150"})
        self.assertRaw(flags, message, 408, "Request Timeout")
        self.assertEqual(self.handler.in_flight, 0)
        # The upstream request is dropped, not left hanging.
        yield wait_until(lambda: all(d.called for d in self.upstream.hanging))
        self.assertEqual(device.replies(), [])

    @defer.inlineCallbacks
    def test_default_read_timeout(self):
        self.proxy(default_read_timeout=100)
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/hang"))
        self.assertRaw(flags, message, 408, "Request Timeout")

    @defer.inlineCallbacks
    def test_oversize_response_is_502(self):
        self.proxy(max_content_length=1000)
        device = self.device()
        _, message = yield self.fetch(device, self.url("/big?n=800"))
        self.assertEqual((message.status_code, len(message.body)), (200, 800))
        # Known from Content-Length, and found out while reading a chunked body.
        for path in ("/big?n=1001", "/stream?n=5000"):
            flags, message = yield self.fetch(device, self.url(path))
            self.assertRaw(flags, message, 502, "Bad Gateway")
            self.assertIn("over 1000 bytes", message.headers[ERROR_HEADER])

    @defer.inlineCallbacks
    def test_upstream_down_is_504(self):
        self.proxy()
        device = self.device()
        closed = yield self.closed_port()
        flags, message = yield self.fetch(device, self.url("/", port=closed))
        self.assertRaw(flags, message, 504, "Gateway Timeout")

    @defer.inlineCallbacks
    def test_unresolvable_name_is_504(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, "http://nowhere.test/")
        self.assertRaw(flags, message, 504, "Gateway Timeout")
        self.assertEqual(self.resolver.lookups, ["nowhere.test"])

    def test_before_handshake(self):
        self.proxy()
        protocol, transport = connect(self.node, self.dispatcher)
        protocol.dataReceived(encode_packet(make_packet(
            Command.HTTP_PROXY, HttpRequestMessage(0, self.url("/echo"), None, None), 1
        )))
        [packet] = ScriptedDevice().read(transport)
        error = ErrorMessage.decode(packet.body)
        self.assertEqual((packet.cmd, error.cmd, error.reason), (Command.ERROR, Command.HTTP_PROXY, "not handshake"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.upstream.requests, [])

    def test_undecodable_body(self):
        self.proxy()
        device = self.device()
        # A body too short for its fields, encrypted as the client would.
        wire = make_packet(Command.HTTP_PROXY, _Raw(b"\x00\x00\x09"), 9, cipher=device.cipher)
        device.protocol.dataReceived(encode_packet(wire))
        [reply] = device.read(device.transport)
        error = ErrorMessage.decode(reply.body)
        self.assertEqual((reply.cmd, error.code), (Command.ERROR, 100))
        self.assertTrue(device.transport.disconnecting)


def rss_bytes():
    """
    This process's resident memory, from /proc.
    """
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


class RawUpstream(Protocol):
    """
    A web server that answers the first request with C{response}, bytes as
    they are; the connection then stays open.
    """

    def __init__(self, response):
        self.response = response
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        if self.response is not None:
            response, self.response = self.response, None
            self.respond(response)

    def respond(self, response):
        self.transport.write(response)

    def connectionLost(self, reason):
        self.lost.callback(None)


@implementer(IPullProducer)
class HeaderFlood(RawUpstream):
    """
    A web server that answers with a status line and then header lines,
    written as fast as they are read, up to C{total} bytes; it samples this
    process's memory as it goes.
    """

    # Long lines (under twisted.web's 16 KiB line limit), so the byte cap,
    # not the header count, is what stops them.
    LINE = b"X-Flood: " + b"f" * 8000 + b"\r\n"

    def __init__(self, total):
        super().__init__(b"HTTP/1.1 200 OK\r\n")
        self.total = total
        self.sent = 0
        self.peak_rss = rss_bytes()

    def respond(self, response):
        self.transport.write(response)
        self.transport.registerProducer(self, False)

    def resumeProducing(self):
        self.peak_rss = max(self.peak_rss, rss_bytes())
        if self.sent >= self.total:
            self.transport.unregisterProducer()
            return
        chunk = self.LINE * 8
        self.transport.write(chunk)
        self.sent += len(chunk)

    def stopProducing(self):
        pass


class HeadLimitTests(ProxyCase):
    """
    The upstream response's status line and headers are capped: twisted.web
    alone keeps every header line a server sends.
    """

    def raw_upstream(self, protocol):
        """
        Listen for one connection, answered by C{protocol}.
        """
        factory = Factory.forProtocol(lambda: protocol)
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.stop_raw, listening, protocol)
        return listening.getHost().port

    @defer.inlineCallbacks
    def stop_raw(self, listening, protocol):
        yield listening.stopListening()
        if protocol.transport is not None:
            protocol.transport.abortConnection()
            yield protocol.lost

    @defer.inlineCallbacks
    def test_header_flood_keeps_memory_flat(self):
        self.proxy()
        device = self.device()
        # Warm up: the first request imports and allocates what any request needs.
        yield self.fetch(device, self.url("/echo"))
        flood = HeaderFlood(total=32 << 20)
        port = self.raw_upstream(flood)
        before = rss_bytes()
        flags, message = yield self.fetch(device, self.url("/", port=port), headers={"readTimeout": "5000"})
        growth = max(flood.peak_rss, rss_bytes()) - before
        self.assertLess(growth, 8 << 20, f"memory grew by {growth >> 20} MiB under a header flood")
        self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertEqual(message.headers[ERROR_HEADER], f"response headers over {MAX_HEADER_BYTES} bytes")
        # The proxy hung up long before the 32 MiB were sent.
        yield flood.lost
        self.assertLess(flood.sent, 16 << 20)
        self.assertEqual(self.handler.in_flight, 0)

    @defer.inlineCallbacks
    def test_header_count_is_capped(self):
        self.proxy()
        device = self.device()
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
        for count, status in ((MAX_HEADERS, 200), (MAX_HEADERS + 1, 502)):
            lines = b"".join(b"X-%d: v\r\n" % n for n in range(count - 1))
            port = self.raw_upstream(RawUpstream(head + lines + b"\r\nok"))
            _flags, message = yield self.fetch(device, self.url("/", port=port))
            self.assertEqual(message.status_code, status, count)
        self.assertEqual(message.headers[ERROR_HEADER], f"more than {MAX_HEADERS} response headers")

    @defer.inlineCallbacks
    def test_continuation_lines_count_as_header_bytes(self):
        self.proxy()
        device = self.device()
        folded = b"X-Folded: start\r\n" + b"  more\r\n" * (MAX_HEADER_BYTES // 8 + 1)
        port = self.raw_upstream(RawUpstream(b"HTTP/1.1 200 OK\r\n" + folded))
        flags, message = yield self.fetch(device, self.url("/", port=port))
        self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertEqual(message.headers[ERROR_HEADER], f"response headers over {MAX_HEADER_BYTES} bytes")

    @defer.inlineCallbacks
    def test_header_bytes_count_against_max_content_length(self):
        self.proxy(max_content_length=1000)
        device = self.device()
        head = b"HTTP/1.1 200 OK\r\nX-Pad: " + b"p" * 600 + b"\r\n"
        for body, status in ((b"b" * 300, 200), (b"b" * 600, 502)):
            response = head + b"Content-Length: %d\r\n\r\n" % len(body) + body
            port = self.raw_upstream(RawUpstream(response))
            _flags, message = yield self.fetch(device, self.url("/", port=port))
            self.assertEqual(message.status_code, status, len(body))
        self.assertIn("over 1000 bytes", message.headers[ERROR_HEADER])


class _Raw:
    """
    A message whose encoding is given bytes, for malformed bodies.
    """

    def __init__(self, data):
        self.data = data

    def encode(self):
        return self.data


class LimitTests(ProxyCase):
    @defer.inlineCallbacks
    def test_per_connection_limit(self):
        self.proxy(max_in_flight_per_connection=2)
        device = self.device()
        device.request(self.url("/hang"))
        device.request(self.url("/hang"))
        third = device.request(self.url("/echo"))
        [(reply_id, flags, message)] = device.replies()
        self.assertEqual(reply_id, third)
        self.assertRaw(flags, message, 503, "Service Unavailable")
        other = self.device(port=PEER_PORT + 1, device_id="other")
        _, ok = yield self.fetch(other, self.url("/echo"))
        self.assertEqual(ok.status_code, 200)
        self.assertEqual(self.handler.in_flight, 2)

    @defer.inlineCallbacks
    def test_node_limit(self):
        self.proxy(max_in_flight=2)
        first, second, third = (self.device(port=PEER_PORT + n, device_id=f"d{n}") for n in range(3))
        first.request(self.url("/hang"))
        second.request(self.url("/hang"))
        third.request(self.url("/echo"))
        [(_, flags, message)] = third.replies()
        self.assertRaw(flags, message, 503, "Service Unavailable")
        # A slot freed is a slot usable again.
        self.handler.cancel_requests(first.protocol)
        _, ok = yield self.fetch(third, self.url("/echo"))
        self.assertEqual(ok.status_code, 200)
        self.assertEqual(first.replies(), [])

    @defer.inlineCallbacks
    def test_close_abandons_everything(self):
        self.proxy()
        device = self.device()
        device.request(self.url("/hang"))
        [pending] = self.handler.active()
        yield self.handler.close()
        self.assertIsNone((yield pending.finished))
        self.assertEqual((self.handler.in_flight, device.replies()), (0, []))


class RefusalTests(ProxyCase):
    @defer.inlineCallbacks
    def test_loopback_without_allow_is_refused(self):
        self.proxy(allow=())
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/echo"))
        self.assertRefused(flags, message)
        self.assertEqual(self.upstream.requests, [])
        self.assertEqual(self.guard.connectors, [])

    @defer.inlineCallbacks
    def test_private_link_local_cgnat_and_metadata_literals_are_refused(self):
        self.proxy()
        device = self.device()
        for host in ("10.1.2.3", "169.254.169.254", "169.254.10.1", "100.64.0.1", "192.168.1.1", "[::ffff:10.0.0.1]"):
            flags, message = yield self.fetch(device, f"http://{host}:8080/")
            self.assertRefused(flags, message)
        self.assertEqual(self.guard.connectors, [])

    @defer.inlineCallbacks
    def test_name_resolving_to_loopback_is_refused(self):
        self.proxy(allow=())
        self.resolver.names["innocent.test"] = ["127.0.0.1"]
        self.resolver.names["mixed.test"] = ["93.184.216.34", "127.0.0.1"]
        device = self.device()
        for name in ("innocent.test", "mixed.test"):
            flags, message = yield self.fetch(device, f"http://{name}:{self.port}/echo")
            self.assertRefused(flags, message)
        self.assertEqual(self.guard.connectors, [])
        self.assertEqual(self.upstream.requests, [])

    @defer.inlineCallbacks
    def test_allowed_name_connects_to_the_checked_address(self):
        self.proxy()
        self.resolver.names["app.test"] = ["127.0.0.1"]
        device = self.device()
        _, message = yield self.fetch(device, f"http://app.test:{self.port}/echo")
        self.assertEqual(message.status_code, 200)
        self.assertEqual(json.loads(message.body)["headers"]["host"], [f"app.test:{self.port}"])
        # Resolved once; the connection went to that address (no second lookup).
        self.assertEqual(self.resolver.lookups, ["app.test"])
        self.assertEqual(self.guard.hosts, ["127.0.0.1"])

    @defer.inlineCallbacks
    def test_redirect_to_a_refused_address_is_refused(self):
        self.proxy()
        device = self.device()
        for to in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.2:1/", "http://10.0.0.1/"):
            flags, message = yield self.fetch(device, self.url("/goto?to=" + to))
            self.assertRefused(flags, message)
        self.assertEqual(len(self.upstream.requests), 3)

    @defer.inlineCallbacks
    def test_refusals_do_not_map_the_inside(self):
        """
        A private name, a missing name, a closed port and a port outside the
        allow-list all get the same answer; the log says which.
        """
        closed = yield self.closed_port()
        self.proxy(allow=(f"127.0.0.1:{self.port}", f"127.0.0.1:{closed}"))
        self.resolver.names["intranet.test"] = ["10.0.0.8"]
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        device = self.device()
        answers = set()
        for uri in ("http://intranet.test/", "http://nowhere.test/", self.url("/", port=closed),
                    self.url("/", port=self.port + 1)):
            flags, message = yield self.fetch(device, uri)
            self.assertRefused(flags, message)
            answers.add((flags, message.status_code, message.reason_phrase, repr(message.headers), message.body))
        self.assertEqual(len(answers), 1)
        # The allowed port itself works; the other port was never connected to.
        _, message = yield self.fetch(device, self.url("/echo"))
        self.assertEqual(message.status_code, 200)
        self.assertNotIn(self.port + 1, [c.getDestination().port for c in self.guard.connectors])
        lines = " | ".join(formatEvent(event) for event in logged)
        for why in ("resolves to a private address: 10.0.0.8", "cannot resolve nowhere.test",
                    "connection refused", f"loopback address (port {self.port + 1})"):
            self.assertIn(why, lines)


class RedirectTests(ProxyCase):
    @defer.inlineCallbacks
    def test_followed_up_to_five_times(self):
        self.proxy()
        device = self.device()
        _, message = yield self.fetch(device, self.url("/redirect?n=5"))
        self.assertEqual(message.status_code, 200)
        self.assertEqual(json.loads(message.body)["uri"], "/redirect?n=0")
        self.upstream.requests.clear()
        # The sixth redirect is handed over as it is, as MPush does.
        flags, message = yield self.fetch(device, self.url("/redirect?n=6"))
        self.assertEqual(flags & Flags.CRYPTO, Flags.CRYPTO)
        self.assertEqual(message.status_code, 302)
        self.assertEqual(message.headers["Location"], "redirect?n=0")
        self.assertEqual(len(self.upstream.requests), 6)

    @defer.inlineCallbacks
    def test_codes(self):
        self.proxy()
        device = self.device()
        for code in (300, 301, 302, 303, 305, 307):
            _, message = yield self.fetch(device, self.url(f"/redirect?n=1&code={code}"))
            self.assertEqual(message.status_code, 200, code)
        _, message = yield self.fetch(device, self.url("/redirect?n=1&code=308"))
        self.assertEqual(message.status_code, 308)

    @defer.inlineCallbacks
    def test_post_keeps_its_method_except_after_303(self):
        self.proxy()
        device = self.device()
        _, message = yield self.fetch(device, self.url("/redirect?n=1&code=307"), method=1, body=b"data")
        echoed = json.loads(message.body)
        self.assertEqual((echoed["method"], echoed["body"]), ("POST", "data"))
        _, message = yield self.fetch(device, self.url("/redirect?n=1&code=303"), method=1, body=b"data")
        echoed = json.loads(message.body)
        self.assertEqual((echoed["method"], echoed["body"]), ("GET", ""))

    @defer.inlineCallbacks
    def test_credentials_stay_with_their_origin(self):
        self.proxy()
        self.resolver.names["elsewhere.test"] = ["127.0.0.1"]
        device = self.device()
        secrets = {
            "Authorization": "Bearer s3cret", "Cookie": "id=1", "X-Api-Key": "k3y",
            "X-Auth-Token": "t0ken", "Accept": "application/json", "User-Agent": "app/1.0",
        }
        _, message = yield self.fetch(device, self.url("/redirect?n=1"), headers=secrets)
        same = json.loads(message.body)["headers"]
        self.assertEqual(
            (same["authorization"], same["cookie"], same["x-api-key"], same["x-auth-token"]),
            (["Bearer s3cret"], ["id=1"], ["k3y"], ["t0ken"]),
        )
        to = f"http://elsewhere.test:{self.port}/echo"
        _, message = yield self.fetch(device, self.url("/goto?to=" + to), headers=secrets)
        moved = json.loads(message.body)["headers"]
        # Only headers that are never credentials cross to another origin.
        for name in ("authorization", "cookie", "x-api-key", "x-auth-token"):
            self.assertNotIn(name, moved)
        self.assertEqual((moved["accept"], moved["user-agent"]), (["application/json"], ["app/1.0"]))
        self.assertEqual(moved["host"], [f"elsewhere.test:{self.port}"])

    @defer.inlineCallbacks
    def test_unusable_location(self):
        self.proxy()
        device = self.device()
        flags, message = yield self.fetch(device, self.url("/goto?to=ftp://127.0.0.1/"))
        self.assertRaw(flags, message, 502, "Bad Gateway")


class DnsMappingProxyTests(ProxyCase):
    @defer.inlineCallbacks
    def test_mapped_domain_goes_to_the_local_server(self):
        self.proxy(allow=(), dns_mapping=(("api.test", (f"127.0.0.1:{self.port}",)),))
        device = self.device()
        _, message = yield self.fetch(device, "http://user@API.test/echo?x=1#frag")
        self.assertEqual(message.status_code, 200)
        echoed = json.loads(message.body)
        self.assertEqual(echoed["uri"], "/echo?x=1")
        # Spec 13.2: Host is the mapped host.
        self.assertEqual(echoed["headers"]["host"], [f"127.0.0.1:{self.port}"])
        self.assertEqual(self.resolver.lookups, [])

    @defer.inlineCallbacks
    def test_random_target_and_a_dead_one_is_504(self):
        closed = yield self.closed_port()
        targets = (f"127.0.0.1:{self.port}", f"127.0.0.1:{closed}")
        picked = []

        def choice(options):
            picked.append(options)
            return options[len(picked) % 2]

        self.proxy(dns_mapping=(("api.test", targets),), choice=choice)
        device = self.device()
        flags, message = yield self.fetch(device, "http://api.test/echo")
        self.assertRaw(flags, message, 504, "Gateway Timeout")
        _, message = yield self.fetch(device, "http://api.test/echo")
        self.assertEqual(message.status_code, 200)
        self.assertEqual(picked, [(("127.0.0.1", self.port), ("127.0.0.1", closed))] * 2)

    @defer.inlineCallbacks
    def test_a_target_asked_for_directly_is_not_trusted(self):
        self.proxy(allow=(), dns_mapping=(("api.test", (f"127.0.0.1:{self.port}",)),))
        device = self.device()
        _, message = yield self.fetch(device, "http://api.test/echo")
        self.assertEqual(message.status_code, 200)
        # The same address and port, without the mapped name: checked, and kept-alive
        # connections of the mapped request are not reused for it.
        flags, message = yield self.fetch(device, self.url("/echo"))
        self.assertRefused(flags, message)
        self.assertEqual(len(self.upstream.requests), 1)

    @defer.inlineCallbacks
    def test_a_redirect_to_a_target_is_not_trusted(self):
        other = self.listen(self.upstream, interface="127.0.0.2")
        self.proxy(allow=("127.0.0.2/32",), dns_mapping=(("api.test", (f"127.0.0.1:{self.port}",)),))
        device = self.device()
        flags, message = yield self.fetch(
            device, self.url(f"/goto?to=http://127.0.0.1:{self.port}/echo", port=other, host="127.0.0.2")
        )
        self.assertRefused(flags, message)
        # The mapped server's own redirects (same origin) stay trusted.
        _, message = yield self.fetch(device, "http://api.test/redirect?n=2")
        self.assertEqual(message.status_code, 200)

    def test_unmapped_names_still_go_through_the_policy(self):
        self.proxy(allow=(), dns_mapping=(("api.test", (f"127.0.0.1:{self.port}",)),))
        self.resolver.names["other.test"] = ["127.0.0.1"]
        device = self.device()
        device.request(f"http://other.test:{self.port}/echo")
        [(_, flags, message)] = device.replies()
        self.assertRefused(flags, message)


class HttpsTests(ProxyCase):
    def setUp(self):
        super().setUp()
        ca_key, self.ca = make_ca()
        server = ssl.PrivateCertificate.loadPEM(make_server_cert(ca_key, self.ca, "secure.test"))
        self.tls_port = self.listen(self.upstream, tls=server.options())
        self.resolver.names["secure.test"] = ["127.0.0.1"]
        self.resolver.names["other.test"] = ["127.0.0.1"]
        self.trust = ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem(self.ca))])

    @defer.inlineCallbacks
    def test_verified_https(self):
        self.proxy(trust_root=self.trust)
        device = self.device()
        _, message = yield self.fetch(device, f"https://secure.test:{self.tls_port}/echo?s=1")
        self.assertEqual(message.status_code, 200)
        echoed = json.loads(message.body)
        self.assertEqual(echoed["uri"], "/echo?s=1")
        self.assertEqual(echoed["headers"]["host"], [f"secure.test:{self.tls_port}"])
        # A second request reuses the kept-alive TLS connection.
        _, message = yield self.fetch(device, f"https://secure.test:{self.tls_port}/echo")
        self.assertEqual(message.status_code, 200)
        self.assertEqual(len(self.guard.connectors), 1)

    @defer.inlineCallbacks
    def test_wrong_name_is_502(self):
        self.proxy(trust_root=self.trust)
        device = self.device()
        flags, message = yield self.fetch(device, f"https://other.test:{self.tls_port}/echo")
        self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertIn("TLS", message.headers[ERROR_HEADER])
        self.assertEqual(self.upstream.requests, [])

    @defer.inlineCallbacks
    def test_unknown_ca_is_502(self):
        other_key, other_ca = make_ca()
        self.proxy(trust_root=ssl.trustRootFromCertificates([ssl.Certificate.loadPEM(pem(other_ca))]))
        device = self.device()
        flags, message = yield self.fetch(device, f"https://secure.test:{self.tls_port}/echo")
        self.assertRaw(flags, message, 502, "Bad Gateway")
        self.assertEqual(self.upstream.requests, [])


# -- end to end: a real device socket to a loopback node -------------------------


class WireDevice(Protocol):
    """
    A device over a real TCP connection, scripted with the sans-I/O core.
    """

    def __init__(self):
        self.script = ScriptedDevice(device_id="wire-device")
        self.packets = []
        self.waiting = []
        self.lost = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.script.handshake_bytes())

    def dataReceived(self, data):
        self.packets.extend(self.script.decoder.feed(data))
        while self.packets and self.waiting:
            self.waiting.pop(0).callback(self.packets.pop(0))

    def connectionLost(self, reason):
        self.lost.callback(None)

    def next_packet(self):
        if self.packets:
            return defer.succeed(self.packets.pop(0))
        waiter = defer.Deferred()
        self.waiting.append(waiter)
        return waiter

    def send(self, message, session_id):
        packet = make_packet(Command.HTTP_PROXY, message, session_id, cipher=self.script.cipher, compress_threshold=1024)
        self.transport.write(encode_packet(packet))


class EndToEndTests(ProxyCase):
    @defer.inlineCallbacks
    def wire_device(self, port):
        device = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), WireDevice())
        self.addCleanup(lambda: device.lost)
        self.addCleanup(device.transport.loseConnection)
        return device

    @defer.inlineCallbacks
    def test_through_a_loopback_node(self):
        # Not "enabled", so the node's own dispatcher has no proxy: this test
        # wires its handler (on the loopback-only reactor) into a listener.
        server = LoopbackNode(self, config=proxy_config(enabled=False))
        self.node = server.node
        self.handler = proxy_of(server.node, self.guard, resolver=self.resolver)
        self.addCleanup(self.close_proxy)
        dispatcher = DeviceDispatcher(handshake_handlers(server.node) + [self.handler])
        listening = reactor.listenTCP(0, ConnectionFactory(server.node, dispatcher), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        device = yield self.wire_device(listening.getHost().port)
        device.script.accept_handshake_ok((yield device.next_packet()))
        device.send(HttpRequestMessage(1, self.url("/echo?via=node"), {"readTimeout": "5000"}, b"ping"), 77)
        device.send(HttpRequestMessage(0, "", None, None), 78)
        replies = {}
        for _ in range(2):
            packet = yield device.next_packet()
            body = decode_body(packet, device.script.cipher)
            replies[packet.session_id] = (packet.flags, HttpResponseMessage.decode(body))
        self.assertEqual(replies[78][0], 0)
        self.assertEqual(replies[78][1].status_code, 400)
        flags, message = replies[77]
        self.assertEqual(flags & Flags.CRYPTO, Flags.CRYPTO)
        echoed = json.loads(message.body)
        self.assertEqual((message.status_code, echoed["method"], echoed["body"]), (200, "POST", "ping"))
        self.assertEqual(echoed["headers"]["x-forwarded-for"], ["127.0.0.1"])
        self.assertEqual(echoed["headers"]["x-forwarded-port"], [str(device.transport.getHost().port)])

    @defer.inlineCallbacks
    def test_disabled_proxy_is_an_unsupported_command(self):
        # Without [http] proxy-enabled no handler is registered: ERROR 101, close.
        server = LoopbackNode(self)
        device = yield self.wire_device(server.port)
        device.script.accept_handshake_ok((yield device.next_packet()))
        device.send(HttpRequestMessage(0, self.url("/echo"), None, None), 5)
        packet = yield device.next_packet()
        error = ErrorMessage.decode(packet.body)
        self.assertEqual((packet.cmd, error.cmd, error.code), (Command.ERROR, Command.HTTP_PROXY, 101))
        yield device.lost
        self.assertEqual(self.upstream.requests, [])
