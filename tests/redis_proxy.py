"""
A loopback TCP proxy in front of a test Redis, to make it slow or silent.

Fault tests point a node at the proxy instead of Redis and then:

 - L{RedisProxy.delay}: every byte, both ways, arrives C{seconds} late, in
   order (a slow or overloaded Redis, a congested link);
 - L{RedisProxy.blackhole}: connections are still accepted but nothing is
   forwarded either way, and new ones get no upstream connection (a network
   partition: SYNs answered by a middlebox, data never delivered);
 - L{RedisProxy.heal}: back to passing; what was held is forwarded then, in
   order, as TCP's retransmissions would;
 - L{RedisProxy.cut}: every current connection is aborted on both sides.

The proxy listens on 127.0.0.1 only and connects only to the target given
(a loopback Redis).  Counters say how many bytes went where, so a test can
wait for "the proxy has the request" without timing anything.
"""

from __future__ import annotations

import collections
import enum

from twisted.internet import defer
from twisted.internet.protocol import ClientFactory, Factory, Protocol

__all__ = ["ProxyMode", "RedisProxy"]


class ProxyMode(enum.Enum):
    PASS = "pass"
    BLACKHOLE = "blackhole"


class _Pipe:
    """
    One direction of one link: bytes queued until due, then written in
    order to C{target} (once there is one).
    """

    __slots__ = ("proxy", "target", "queue", "held", "last_due", "timer", "counter")

    def __init__(self, proxy, counter):
        self.proxy = proxy
        self.target = None
        self.queue = collections.deque()
        self.held = []
        self.last_due = 0.0
        self.timer = None
        self.counter = counter

    def push(self, data):
        if self.proxy.mode is ProxyMode.BLACKHOLE:
            self.held.append(data)
            return
        due = max(self.proxy.clock.seconds() + self.proxy.delay_s, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.pump()

    def release(self):
        held, self.held = self.held, []
        for data in held:
            self.push(data)
        self.pump()

    def pump(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.proxy.mode is ProxyMode.BLACKHOLE or self.target is None:
            return
        now = self.proxy.clock.seconds()
        while self.queue and self.queue[0][0] <= now:
            _, data = self.queue.popleft()
            self.target.write(data)
            self.proxy.counters[self.counter] += len(data)
        if self.queue:
            self.timer = self.proxy.clock.callLater(self.queue[0][0] - now, self.pump)

    def stop(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.queue.clear()
        self.held = []


class _Link:
    """
    A client connection and its upstream connection to Redis.
    """

    def __init__(self, proxy, inbound):
        self.proxy = proxy
        self.inbound = inbound
        self.outbound = None
        self.to_server = _Pipe(proxy, "to_server")
        self.to_client = _Pipe(proxy, "to_client")
        self.to_client.target = inbound.transport
        self.connecting = False
        self.closed = False

    def connect_upstream(self):
        if self.connecting or self.closed:
            return
        self.connecting = True
        factory = ClientFactory.forProtocol(_Outbound)
        factory.link = self
        factory.clientConnectionFailed = lambda connector, reason: self.close()
        self.proxy.reactor.connectTCP(self.proxy.target_host, self.proxy.target_port, factory, timeout=5)

    def upstream_made(self, outbound):
        if self.closed:
            outbound.transport.abortConnection()
            return
        self.outbound = outbound
        self.to_server.target = outbound.transport
        self.to_server.pump()

    def close(self):
        if self.closed:
            return
        self.closed = True
        self.to_server.stop()
        self.to_client.stop()
        self.proxy.links.discard(self)
        for side in (self.inbound, self.outbound):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()


class _Inbound(Protocol):
    def connectionMade(self):
        proxy = self.factory.proxy
        self.link = _Link(proxy, self)
        proxy.links.add(self.link)
        proxy.counters["accepted"] += 1
        if proxy.mode is not ProxyMode.BLACKHOLE:
            self.link.connect_upstream()

    def dataReceived(self, data):
        self.factory.proxy.counters["from_client"] += len(data)
        self.link.to_server.push(data)

    def connectionLost(self, reason):
        self.link.close()


class _Outbound(Protocol):
    def connectionMade(self):
        self.factory.link.upstream_made(self)

    def dataReceived(self, data):
        link = self.factory.link
        link.proxy.counters["from_server"] += len(data)
        link.to_client.push(data)

    def connectionLost(self, reason):
        self.factory.link.close()


class RedisProxy:
    """
    A fault-injecting proxy to C{127.0.0.1:target_port}.

    @param clock: times delays; the reactor by default (a C{task.Clock}
        makes delays step by step in unit tests).
    """

    def __init__(self, target_port, reactor=None, clock=None, target_host="127.0.0.1"):
        if reactor is None:
            from twisted.internet import reactor
        if target_host not in ("127.0.0.1", "::1", "localhost"):
            raise ValueError(f"the test proxy only forwards to loopback, not {target_host!r}")
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.target_host = target_host
        self.target_port = target_port
        self.mode = ProxyMode.PASS
        self.delay_s = 0.0
        self.links = set()
        self.counters = collections.Counter()
        self._listening = None

    @property
    def port(self):
        return self._listening.getHost().port

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        factory = Factory.forProtocol(_Inbound)
        factory.proxy = self
        factory.noisy = False
        self._listening = self.reactor.listenTCP(0, factory, interface="127.0.0.1")
        return self

    def delay(self, seconds):
        """
        From now on forward everything C{seconds} late (0: at once); bytes
        already waiting keep their time, and order is kept.
        """
        if not seconds >= 0:
            raise ValueError(f"delay must be >= 0 seconds, not {seconds!r}")
        self.delay_s = float(seconds)

    def blackhole(self):
        """
        Accept, hold and forward nothing, until L{heal}.
        """
        self.mode = ProxyMode.BLACKHOLE

    def heal(self):
        """
        Pass again, with no delay; held bytes go first, in order.
        """
        self.mode = ProxyMode.PASS
        self.delay_s = 0.0
        for link in list(self.links):
            link.connect_upstream()
            link.to_server.release()
            link.to_client.release()

    def cut(self):
        """
        Abort every current connection, on both sides.
        """
        for link in list(self.links):
            link.close()

    def stop(self):
        self.cut()
        listening, self._listening = self._listening, None
        if listening is None:
            return defer.succeed(None)
        return defer.maybeDeferred(listening.stopListening)
