"""
write_now: bytes reach the peer complete and in order, whether the socket
takes them at once, in part, or not at all.
"""

import twisted
from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.server.device import connection as connection_module
from mpush.server.device import write_now as write_now_module
from mpush.server.device.write_now import write_now

from tests.server_support import make_node


class Collect(protocol.Protocol):
    def __init__(self, expected, done):
        self.expected, self.done, self.chunks, self.size = expected, done, [], 0

    def dataReceived(self, data):
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= self.expected and not self.done.called:
            self.done.callback(b"".join(self.chunks))


class Writer(protocol.Protocol):
    def __init__(self, script):
        self.script = script

    def connectionMade(self):
        self.script(self.transport)


class LoopbackTests(TestCase):
    @defer.inlineCallbacks
    def exchange(self, script, expected_length):
        done = defer.Deferred()
        server = protocol.ServerFactory.forProtocol(lambda: Writer(script))
        port = reactor.listenTCP(0, server, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = protocol.ClientCreator(reactor, Collect, expected_length, done)
        connection = yield client.connectTCP("127.0.0.1", port.getHost().port)
        self.addCleanup(connection.transport.loseConnection)
        received = yield done
        return received

    @defer.inlineCallbacks
    def test_small_writes_in_order(self):
        parts = [bytes([i % 251]) * (i % 97 + 1) for i in range(500)]

        def script(transport):
            self.assertEqual(transport.__class__.__name__, "Server")
            for i, part in enumerate(parts):
                if i % 7 == 3:
                    transport.write(part)
                else:
                    write_now(transport, part)

        received = yield self.exchange(script, sum(map(len, parts)))
        self.assertEqual(received, b"".join(parts))

    @defer.inlineCallbacks
    def test_more_than_the_socket_takes(self):
        """
        A write the socket takes only in part queues the rest; later
        writes queue behind it.
        """
        big = bytes(range(256)) * (16 * 1024)  # 4 MiB
        tail = [b"after-%d" % i for i in range(50)]

        def script(transport):
            write_now(transport, big)
            self.assertTrue(transport.dataBuffer or transport._tempDataLen)
            for part in tail:
                write_now(transport, part)

        received = yield self.exchange(script, len(big) + sum(map(len, tail)))
        self.assertEqual(received, big + b"".join(tail))


class OtherTransportTests(SynchronousTestCase):
    def test_anything_else_is_written_as_usual(self):
        transport = StringTransport()
        write_now(transport, b"abc")
        write_now(transport, b"def")
        self.assertEqual(transport.value(), b"abcdef")


class TwistedVersionGuardTests(SynchronousTestCase):
    """
    write_now reads Twisted's internals only under the releases it was
    checked against, and the node says when it runs under another.
    """

    def test_the_installed_release_was_checked(self):
        self.assertIn(twisted.__version__, write_now_module.CHECKED_TWISTED_VERSIONS)
        self.assertIsNone(write_now_module.unchecked_twisted_warning())
        self.assertIs(write_now_module.direct_write_class(twisted.__version__), tcp.Server)

    def test_an_unchecked_release_writes_through_the_transport_only(self):
        self.assertIsNone(write_now_module.direct_write_class("99.1.0"))
        warning = write_now_module.unchecked_twisted_warning("99.1.0")
        self.assertIn("Twisted 99.1.0", warning)
        for version in write_now_module.CHECKED_TWISTED_VERSIONS:
            self.assertIn(version, warning)

    def test_the_connection_server_warns_at_start(self):
        events = []
        self.patch(connection_module, "unchecked_twisted_warning", lambda: "Twisted 99.1.0 is not checked")
        factory = connection_module.ConnectionFactory(make_node(), None)
        self.patch(factory, "log", Logger(observer=events.append))
        factory.doStart()
        self.addCleanup(factory.doStop)
        self.assertEqual([event["warning"] for event in events], ["Twisted 99.1.0 is not checked"])
        self.assertEqual(events[0]["log_level"], LogLevel.warn)
