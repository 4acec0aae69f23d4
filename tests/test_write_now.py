"""
write_now: bytes reach the peer complete and in order, whether the socket
takes them at once, in part, or not at all.
"""

from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.server.device.write_now import write_now


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
