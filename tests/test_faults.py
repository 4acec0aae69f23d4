"""
Faults, on real C{twistd mpush} processes: Redis killed and restarted,
slowed and black-holed (through L{tests.redis_proxy.RedisProxy}), and a node
killed with SIGKILL.  What must hold: handshakes keep working, fast connect
degrades to a handshake, pushes that need Redis fail fast with a clear
result, everything recovers by itself when Redis is back, a dead node's
users are reported OFFLINE (or their pushes stored) by the node that
survives, and nothing waits forever.

Every wait is bounded; nothing here asserts how long something took.
"""

import io
import json
import os
import signal

from twisted.internet import defer, reactor, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.errors import ErrorCode
from mpush.push import AckModel, PushClient, PushStatus

from tests.polling import sleep, wait_until
from tests.process_support import NodeProcess
from tests.redis_proxy import RedisProxy
from tests.redis_server import start_redis_server

#: Seconds a device waits for each answer: above the node's 2 s Redis
#: deadline, so a fast connect refused after that deadline is still seen.
DEVICE_TIMEOUT = 5.0
#: Seconds a pusher waits; a push that needs a Redis the node cannot reach
#: must be answered (FAILURE) before this, never left to time out.
PUSH_TIMEOUT = 6.0


def node_config(redis_port, node_ttl="2s", node_refresh="500ms", extra=""):
    return (
        "[security]\n"
        f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
        f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n'
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
        f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n'
        f'[cluster]\nnode-ttl = "{node_ttl}"\nnode-refresh = "{node_refresh}"\n' + extra
    )


@defer.inlineCallbacks
def http_request(port, path, body=None, timeout=15.0):
    """
    One request to a node's HTTP API: C{(status code, body bytes)}.  A
    POST of C{body} as JSON when it is given.
    """
    agent = Agent(reactor, connectTimeout=5, pool=HTTPConnectionPool(reactor, persistent=False))
    headers = Headers({b"content-type": [b"application/json"]})
    producer = None
    method = b"GET"
    if body is not None:
        method = b"POST"
        producer = FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
    requested = agent.request(method, f"http://127.0.0.1:{port}{path}".encode(), headers, producer)
    requested.addTimeout(timeout, reactor)
    response = yield requested
    reading = readBody(response)
    reading.addTimeout(timeout, reactor)
    return response.code, (yield reading)


@defer.inlineCallbacks
def http_json(port, path, body=None, timeout=15.0):
    """L{http_request}, its body decoded as JSON."""
    code, data = yield http_request(port, path, body, timeout)
    return code, (json.loads(data) if data else None)


def http_allot(port):
    """C{(status code, body)} of the node's plain-text allot list."""
    return http_request(port, "/v1/allot")


def client_config(port, user_id, session_file=None, device_id=None):
    return ClientConfig(
        host="127.0.0.1",
        port=port,
        public_key=MPUSH_DEMO_PUBLIC_KEY,
        device_id=device_id or f"device-of-{user_id}",
        user_id=user_id,
        session_file=session_file,
        handshake_timeout=DEVICE_TIMEOUT,
        bind_timeout=DEVICE_TIMEOUT,
    )


class FaultCase(TestCase):
    timeout = 180

    def start_node(self, config_text):
        node = NodeProcess(config_text)
        self.addCleanup(node.stop)
        return node.start()

    def session_path(self):
        return os.path.abspath(self.mktemp())

    @defer.inlineCallbacks
    def device(self, node, user_id, session_file=None):
        client = yield connect_client(client_config(node.port, user_id, session_file), reactor)
        self.addCleanup(client.close)
        return client

    def gateway_pusher(self, node):
        pusher = PushClient(reactor, gateway=("127.0.0.1", node.gateway_port), timeout=PUSH_TIMEOUT)
        self.addCleanup(pusher.close)
        return pusher

    def redis_pusher(self, redis):
        pusher = PushClient(reactor, redis_url=redis.url, timeout=PUSH_TIMEOUT)
        self.addCleanup(pusher.close)
        return pusher

    @defer.inlineCallbacks
    def stored_session(self, node, user_id):
        """
        A session file whose session is in Redis: handshake, then prove it
        with a fast connect (the save follows the handshake asynchronously).
        """
        path = self.session_path()
        first = yield self.device(node, user_id, path)
        yield first.close()

        @defer.inlineCallbacks
        def resumes():
            client = yield self.device(node, user_id, path)
            yield client.close()
            return client.resumed

        yield wait_until(resumes, what="a fast connect to the saved session")
        return path

    @defer.inlineCallbacks
    def check_degraded(self, node, session_file):
        """
        Redis unreachable: a handshake and a bind work, a fast connect is
        refused SESSION_EXPIRED and the device handshakes on the same
        connection, a push that needs the routes fails fast with a reason,
        and a push to a device bound on this node still gets through.
        """
        fresh = yield self.device(node, "carol")
        self.assertEqual(fresh.handshake_ok_count, 1)
        self.assertEqual(fresh.bind_result.data, "bind success")

        resumed = yield self.device(node, "alice", session_file)
        self.assertFalse(resumed.resumed)
        self.assertEqual([e.code for e in resumed.fast_connect_errors], [ErrorCode.SESSION_EXPIRED])
        self.assertEqual(resumed.handshake_ok_count, 1)
        self.assertEqual(resumed.bind_result.data, "bind success")

        pusher = self.gateway_pusher(node)
        [elsewhere] = yield pusher.push("nobody-here", b"x", ack=AckModel.AUTO_ACK)
        # FAILURE, not TIMEOUT: the node answered before the pusher gave up.
        self.assertIs(elsewhere.status, PushStatus.FAILURE)
        self.assertEqual(elsewhere.code, ErrorCode.PUSH_CLIENT_FAILURE)
        self.assertTrue(elsewhere.reason)

        [local] = yield pusher.push("carol", b"still delivered", ack=AckModel.AUTO_ACK)
        self.assertIs(local.status, PushStatus.SUCCESS)
        received = yield fresh.wait_for_push(timeout=DEVICE_TIMEOUT)
        self.assertEqual(received.content, b"still delivered")

        code, body = yield http_json(node.http_port, "/healthz")
        self.assertEqual((code, body["status"]), (503, "unavailable"))
        yield fresh.close()
        yield resumed.close()

    @defer.inlineCallbacks
    def check_recovered(self, node, redis):
        """
        Redis reachable again, the node not restarted: health, fast
        connect, routes and pushes all work again.
        """
        yield wait_until(
            lambda: http_json(node.http_port, "/healthz").addCallback(lambda r: r[0] == 200),
            timeout=30,
            what="/healthz answering 200",
        )
        session = yield self.stored_session(node, "dave")
        dave = yield self.device(node, "dave", session)
        self.assertTrue(dave.resumed)
        pusher = self.redis_pusher(redis)
        [result] = yield wait_until(
            lambda: pusher.push("dave", b"back", ack=AckModel.AUTO_ACK).addCallback(
                lambda results: results if results[0].status is PushStatus.SUCCESS else None
            ),
            what="a push to a device bound after the recovery",
        )
        self.assertEqual(result.node, f"127.0.0.1:{node.gateway_port}")
        received = yield dave.wait_for_push(timeout=DEVICE_TIMEOUT)
        self.assertEqual(received.content, b"back")
        [offline] = yield self.gateway_pusher(node).push("nobody-here", b"x")
        self.assertIs(offline.status, PushStatus.OFFLINE)


class RedisKilledTests(FaultCase):
    @defer.inlineCallbacks
    def test_redis_killed_then_restarted(self):
        redis = start_redis_server(self)
        node = self.start_node(node_config(redis.port))
        session = yield self.stored_session(node, "alice")
        redis.kill()
        yield self.check_degraded(node, session)
        redis.start()  # same port, empty: sessions and routes are gone
        yield self.check_recovered(node, redis)


class RedisThroughProxyTests(FaultCase):
    def setUp(self):
        self.redis = start_redis_server(self)
        self.proxy = RedisProxy(self.redis.port).start()
        self.addCleanup(self.proxy.stop)
        self.node = self.start_node(node_config(self.proxy.port))

    @defer.inlineCallbacks
    def test_redis_slower_than_the_store_timeout(self):
        session = yield self.stored_session(self.node, "alice")
        self.proxy.delay(3.0)  # the node's Redis calls give up after 2 s
        yield self.check_degraded(self.node, session)
        self.proxy.delay(0)
        yield self.check_recovered(self.node, self.redis)

    @defer.inlineCallbacks
    def test_redis_black_holed(self):
        session = yield self.stored_session(self.node, "alice")
        self.proxy.blackhole()
        yield self.check_degraded(self.node, session)
        held = self.proxy.counters["from_client"] - self.proxy.counters["to_server"]
        self.assertGreater(held, 0)  # the node did ask, and nothing reached Redis
        self.proxy.heal()
        yield self.check_recovered(self.node, self.redis)

    @defer.inlineCallbacks
    def test_allot_while_the_registry_times_out(self):
        """
        The allot list comes from the node registry in Redis: while Redis
        does not answer, a 503 with the API's JSON error, not a bug logged.
        """
        status, endpoints = yield wait_until(
            lambda: http_allot(self.node.http_port).addCallback(lambda reply: reply if reply[0] == 200 else None),
            what="the node registered",
        )
        self.assertEqual(endpoints, f"127.0.0.1:{self.node.port}".encode())
        self.proxy.blackhole()
        status, body = yield http_json(self.node.http_port, "/v1/allot")
        self.assertEqual(status, 503)
        self.assertEqual(body["error"]["code"], "unavailable")
        self.assertIn("redis node registry", body["error"]["message"])
        self.assertNotIn("HTTP API request failed", self.node.log())
        self.proxy.heal()
        status, endpoints = yield http_allot(self.node.http_port)
        self.assertEqual((status, endpoints), (200, f"127.0.0.1:{self.node.port}".encode()))

    @defer.inlineCallbacks
    def test_redis_connections_cut(self):
        """
        Every Redis connection dropped at once: the node reconnects by
        itself and keeps serving.
        """
        session = yield self.stored_session(self.node, "alice")
        accepted = self.proxy.counters["accepted"]
        self.proxy.cut()
        yield wait_until(lambda: self.proxy.counters["accepted"] > accepted, what="the node reconnecting")
        alice = yield self.device(self.node, "alice", session)
        self.assertTrue(alice.resumed)
        yield self.check_recovered(self.node, self.redis)


class KilledNodeTests(FaultCase):
    @defer.inlineCallbacks
    def test_sigkilled_node_users_offline_then_stored_and_delivered(self):
        """
        Node A dies without a word.  Pushes through node B's HTTP API are
        answered at once (FAILURE while A may still be alive, then OFFLINE);
        within node-ttl B marks A's routes offline, and a push with an
        offline TTL is stored and delivered when the device fast-connects
        to B.
        """
        redis = start_redis_server(self)
        node_a = self.start_node(node_config(redis.port))
        node_b = self.start_node(node_config(redis.port))
        session = self.session_path()
        frank = yield self.device(node_a, "frank", session)
        self.assertEqual(frank.bind_result.data, "bind success")
        node_a.process.send_signal(signal.SIGKILL)
        node_a.process.wait(10)
        seen = []

        @defer.inlineCallbacks
        def stored():
            code, body = yield http_json(
                node_b.http_port,
                "/v1/push",
                {"users": ["frank"], "content": f"kept {len(seen)}", "ack": "auto", "offline_ttl": 120,
                 "timeout_ms": 3000},
            )
            self.assertEqual(code, 200)
            [result] = body["results"]
            seen.append(result["status"])
            return result if result["status"] == "stored_offline" else None

        kept = yield wait_until(stored, timeout=20, what="a push stored for frank")
        # Before B noticed, pushes were reported, never left hanging.
        self.assertTrue(set(seen) <= {"failure", "offline", "stored_offline"}, seen)
        self.assertIn("stored for 120s", kept["reason"])
        code, body = yield http_json(
            node_b.http_port, "/v1/push", {"users": ["frank"], "content": "not kept", "ack": "auto"}
        )
        [offline] = body["results"]
        self.assertEqual(offline["status"], "offline")
        code, user = yield wait_until(
            lambda: http_json(node_b.http_port, "/v1/users/frank").addCallback(
                lambda r: r if r[1]["routes"] and not r[1]["online"] else None
            ),
            what="frank's route marked offline by node B",
        )
        self.assertEqual(code, 200)
        back = yield self.device(node_b, "frank", session)
        self.assertTrue(back.resumed)  # the session lives in Redis, not on A
        received = yield back.wait_for_push(timeout=DEVICE_TIMEOUT)
        self.assertEqual(received.content, f"kept {len(seen) - 1}".encode())
        yield sleep(0.3)
        self.assertEqual(back.pushes, [received.content])


# -- the proxy itself ------------------------------------------------------------


class _Echo(Protocol):
    def connectionMade(self):
        self.factory.connections.append(self)

    def dataReceived(self, data):
        self.transport.write(data)


class _Collect(Protocol):
    def __init__(self):
        self.data = b""
        self.lost = defer.Deferred()

    def dataReceived(self, data):
        self.data += data

    def connectionLost(self, reason):
        self.lost.callback(None)


class RedisProxyTests(TestCase):
    """
    The proxy in front of a loopback echo server; delays on a fake clock.
    """

    timeout = 30

    def setUp(self):
        factory = Factory.forProtocol(_Echo)
        factory.connections = []
        self.upstream = factory
        self.echo = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.echo.stopListening)
        self.clock = task.Clock()
        self.proxy = RedisProxy(self.echo.getHost().port, clock=self.clock).start()
        self.addCleanup(self.proxy.stop)

    @defer.inlineCallbacks
    def client(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

        protocol = _Collect()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.port), protocol)
        self.addCleanup(lambda: protocol.transport.abortConnection() if protocol.transport.connected else None)
        return protocol

    def counted(self, name, value):
        return wait_until(lambda: self.proxy.counters[name] >= value, timeout=10, what=f"{name} >= {value}")

    @defer.inlineCallbacks
    def test_passes_through(self):
        client = yield self.client()
        client.transport.write(b"PING")
        yield wait_until(lambda: client.data == b"PING", timeout=10)
        self.assertEqual(self.proxy.url, f"redis://127.0.0.1:{self.proxy.port}/0")

    @defer.inlineCallbacks
    def test_delay_both_ways_in_order(self):
        client = yield self.client()
        yield wait_until(lambda: self.upstream.connections, timeout=10)
        self.proxy.delay(5)
        client.transport.write(b"first ")
        yield self.counted("from_client", 6)
        self.proxy.delay(0)  # later bytes must not overtake earlier ones
        client.transport.write(b"second")
        yield self.counted("from_client", 12)
        self.assertEqual(self.proxy.counters["to_server"], 0)
        self.clock.advance(5)
        self.assertEqual(self.proxy.counters["to_server"], 12)
        yield wait_until(lambda: client.data == b"first second", timeout=10)

    @defer.inlineCallbacks
    def test_reply_delayed_too(self):
        client = yield self.client()
        self.proxy.delay(2)
        client.transport.write(b"ab")
        yield self.counted("from_client", 2)
        self.clock.advance(2)
        yield self.counted("from_server", 2)
        self.assertEqual((self.proxy.counters["to_client"], client.data), (0, b""))
        self.clock.advance(2)
        yield wait_until(lambda: client.data == b"ab", timeout=10)

    @defer.inlineCallbacks
    def test_blackhole_holds_then_heal_forwards(self):
        self.proxy.blackhole()
        client = yield self.client()
        client.transport.write(b"held")
        yield self.counted("from_client", 4)
        self.assertEqual(self.upstream.connections, [])  # no upstream connection either
        self.assertEqual(self.proxy.counters["to_server"], 0)
        self.proxy.heal()
        yield wait_until(lambda: client.data == b"held", timeout=10)

    @defer.inlineCallbacks
    def test_blackhole_stops_an_established_link(self):
        client = yield self.client()
        client.transport.write(b"1")
        yield wait_until(lambda: client.data == b"1", timeout=10)
        self.proxy.blackhole()
        client.transport.write(b"2")
        yield self.counted("from_client", 2)
        self.assertEqual(self.proxy.counters["to_server"], 1)
        self.proxy.heal()
        yield wait_until(lambda: client.data == b"12", timeout=10)

    @defer.inlineCallbacks
    def test_cut_closes_both_sides(self):
        client = yield self.client()
        yield wait_until(lambda: self.upstream.connections, timeout=10)
        [upstream] = self.upstream.connections
        self.proxy.cut()
        yield client.lost
        yield wait_until(lambda: not upstream.transport.connected, timeout=10)
        self.assertEqual(self.proxy.links, set())

    @defer.inlineCallbacks
    def test_upstream_down_closes_the_client(self):
        yield self.echo.stopListening()
        client = yield self.client()
        yield client.lost

    def test_refuses_bad_settings(self):
        self.assertRaises(ValueError, RedisProxy, 6379, target_host="10.0.0.1")
        self.assertRaises(ValueError, self.proxy.delay, -1)


def repeated_within_a_second(log):
    """
    Lines of mpush's own loggers whose text (timestamp and counts aside)
    appears twice within one second.
    """
    import re

    seen, repeats = {}, []
    for line in log.splitlines():
        stamp, _, rest = line.partition(" ")
        if not rest.startswith("[mpush."):
            continue
        text = re.sub(r"\d+", "N", rest)
        second = stamp[:19]
        if seen.get(text) == second:
            repeats.append(line)
        seen[text] = second
    return repeats


class RedisDownSaidPlainlyTests(FaultCase):
    @defer.inlineCallbacks
    def test_one_line_down_one_line_back_and_failures_name_the_operation(self):
        """
        Redis killed under a node: one line says it is unreachable, with
        the address and the OS error; pushes and /healthz say so too,
        naming what failed; no retry chatter, no "no answer" guesses; one
        line when it is back.
        """
        redis = start_redis_server(self)
        node = self.start_node(node_config(redis.port))
        device = yield self.device(node, "carol")
        redis.kill()
        pusher = self.gateway_pusher(node)
        yield sleep(1.5)  # the pool notices and retries
        for attempt in range(6):  # two of everything a second
            [result] = yield pusher.push("nobody-here", b"x")
            self.assertIs(result.status, PushStatus.FAILURE)
            code, body = yield http_json(node.http_port, "/v1/push", {"users": ["nobody-here"], "content": "x"})
            [result] = body["results"]
            self.assertEqual(result["status"], "failure")
            self.assertIn(f"redis 127.0.0.1:{redis.port} unreachable: connection refused", result["reason"])
            code, body = yield http_json(node.http_port, "/healthz")
            self.assertEqual(code, 503)
            self.assertIn("unreachable: connection refused", body["reason"])
            if attempt % 2:
                yield sleep(1.0)
        yield device.close()
        log = node.log()
        down = [line for line in log.splitlines() if "RedisReachability" in line]
        self.assertEqual(len(down), 1, log)
        self.assertIn(f"redis 127.0.0.1:{redis.port} unreachable: connection refused (ECONNREFUSED)", down[0])
        self.assertNotIn("Scheduling retry", log)
        self.assertNotIn("no answer to", log)
        self.assertEqual(repeated_within_a_second(log), [], log)
        redis.start()
        yield wait_until(lambda: "reachable again" in node.log(), timeout=30, what="the line saying Redis is back")
        back = [line for line in node.log().splitlines() if "RedisReachability" in line][1:]
        self.assertEqual(len(back), 1, node.log())
