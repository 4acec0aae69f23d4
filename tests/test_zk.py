"""
Tests for L{mpush.zk}: MPush's node JSON, the config it reads, the
registration's state machine over a scripted kazoo client and a fake clock,
and the registration against a real ZooKeeper (tests/zookeeper_server.py).
"""

import dataclasses
import json
import logging
import math
import time
import uuid

from kazoo.exceptions import ConnectionLoss, NodeExistsError, NoAuthError, NoNodeError
from kazoo.protocol.states import KazooState, KeeperState, ZnodeStat
from kazoo.security import CREATOR_ALL_ACL, OPEN_ACL_UNSAFE
from twisted.internet import defer, reactor, task, threads
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush.config import Config, ConfigError, ZkConfig
from mpush.zk import (
    DEFAULT_CS_ATTRS,
    RETRY_DELAY,
    ZkError,
    ZkNodeError,
    ZkRegistration,
    ZkTimeout,
    cluster_nodes,
    mpush_node_json,
    parse_namespace,
    parse_server_address,
)

from tests.zookeeper_server import ZooKeeperServer, kazoo_client, start_zookeeper_server


def zk_config(net=None, **zk):
    """A default Config with ZooKeeper registration on and C{zk} overrides."""
    zk.setdefault("enabled", True)
    config = Config(zk=ZkConfig(**zk))
    if net:
        config = config.replace(net=dataclasses.replace(config.net, **net))
    return config


#: The digest the tests register with: not MPush's public default, which is
#: warned about at every start.
DIGEST = "ops:s3cret"

NODES = [
    ("cs", {"host": "10.0.0.5", "port": 3000, "attrs": {"weight": 1}}),
    ("gs", {"host": "10.0.0.6", "port": 3001}),
]


class LogCapture:
    """Twisted log events seen during a test."""

    def __init__(self, test_case):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        test_case.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def texts(self, level=None, containing=""):
        return [
            formatEvent(e) for e in self.events
            if (level is None or e.get("log_level") == level) and containing in formatEvent(e)
        ]


# --- MPush's JSON ---


class MpushNodeJsonTests(SynchronousTestCase):
    """fastjson's rendering of CommonServiceNode, byte for byte (spec 19.3)."""

    def test_connection_server(self):
        self.assertEqual(
            mpush_node_json("cs", "10.0.0.5", 3000, {"weight": 1}),
            '{"attrs":{"weight":1},"host":"10.0.0.5","port":3000}',
        )

    def test_gateway_server(self):
        self.assertEqual(mpush_node_json("gs", "10.0.0.5", 3001), '{"host":"10.0.0.5","port":3001}')

    def test_websocket_server(self):
        self.assertEqual(mpush_node_json("ws", "203.0.113.7", 8089), '{"host":"203.0.113.7","port":8089}')

    def test_attrs_sorted_and_nulls_left_out(self):
        text = mpush_node_json("cs", "h", 1, {"zone": "b", "gone": None, "weight": 2, "ab": True})
        self.assertEqual(text, '{"attrs":{"ab":true,"weight":2,"zone":"b"},"host":"h","port":1}')

    def test_empty_attrs_kept_as_object(self):
        # fastjson writes an empty map as {} (only null is left out).
        self.assertEqual(mpush_node_json("cs", "h", 1, {}), '{"attrs":{},"host":"h","port":1}')

    def test_non_ascii_written_as_utf8(self):
        text = mpush_node_json("cs", "h", 1, {"region": "北京"})
        self.assertEqual(text, '{"attrs":{"region":"北京"},"host":"h","port":1}')
        self.assertEqual(json.loads(text)["attrs"]["region"], "北京")

    def test_ipv6_host(self):
        self.assertEqual(mpush_node_json("gs", "::1", 3001), '{"host":"::1","port":3001}')

    def test_bad_kind(self):
        for kind in ("xs", "", None, "CS", 1):
            with self.assertRaises(ZkNodeError, msg=repr(kind)):
                mpush_node_json(kind, "h", 1)

    def test_bad_host(self):
        for host in ("", None, 5, "a b", "a\x00", "a\n", "x" * 254, b"h"):
            with self.assertRaises(ZkNodeError, msg=repr(host)):
                mpush_node_json("cs", host, 1)

    def test_bad_port(self):
        for port in (0, -1, 65536, True, "3000", 3000.0, None):
            with self.assertRaises(ZkNodeError, msg=repr(port)):
                mpush_node_json("cs", "h", port)

    def test_bad_attrs(self):
        for attrs in ([("weight", 1)], "weight=1", {1: 2}, {"": 1}, {"a": {"b": 1}}, {"a": [1]},
                      {"a": math.nan}, {"a": math.inf}, {"a": b"x"}):
            with self.assertRaises(ZkNodeError, msg=repr(attrs)):
                mpush_node_json("cs", "h", 1, attrs)

    def test_error_is_value_error(self):
        with self.assertRaises(ValueError):
            mpush_node_json("cs", "h", 0)
        self.assertTrue(issubclass(ZkNodeError, ZkError))


class ClusterNodesTests(SynchronousTestCase):
    """What a node registers, from its config."""

    def test_default_connect_and_gateway(self):
        nodes = cluster_nodes(Config(), connect_host="203.0.113.7", gateway_host="10.0.0.5")
        self.assertEqual(nodes, [
            ("cs", {"host": "203.0.113.7", "port": 3000, "attrs": {"weight": 1}}),
            ("gs", {"host": "10.0.0.5", "port": 3001}),
        ])

    def test_websocket_when_enabled_in_mpush_order(self):
        config = zk_config(net={"ws_server_port": 8089, "connect_server_port": 4000,
                                "gateway_server_port": 4001})
        nodes = cluster_nodes(config, connect_host="a", gateway_host="b")
        self.assertEqual([kind for kind, _ in nodes], ["cs", "ws", "gs"])
        self.assertEqual(nodes[1], ("ws", {"host": "a", "port": 8089}))
        self.assertEqual(nodes[2], ("gs", {"host": "b", "port": 4001}))

    def test_no_gateway_when_disabled(self):
        config = zk_config(net={"gateway_server_port": 0})
        nodes = cluster_nodes(config, connect_host="a", gateway_host="b")
        self.assertEqual([kind for kind, _ in nodes], ["cs"])

    def test_attrs_override_and_none(self):
        nodes = cluster_nodes(Config(), connect_host="a", gateway_host="b", cs_attrs={"weight": 5})
        self.assertEqual(nodes[0][1]["attrs"], {"weight": 5})
        nodes = cluster_nodes(Config(), connect_host="a", gateway_host="b", cs_attrs=None)
        self.assertNotIn("attrs", nodes[0][1])
        self.assertEqual(DEFAULT_CS_ATTRS, {"weight": 1})

    def test_registration_data_from_config(self):
        nodes = cluster_nodes(Config(), connect_host="203.0.113.7", gateway_host="10.0.0.5")
        registration = ZkRegistration(zk_config(), nodes, task.Clock(), reactor=InlineThreads())
        self.assertEqual([(n.kind, n.data) for n in registration.nodes], [
            ("cs", b'{"attrs":{"weight":1},"host":"203.0.113.7","port":3000}'),
            ("gs", b'{"host":"10.0.0.5","port":3001}'),
        ])


class ParseTests(SynchronousTestCase):
    """[zk] server-address and namespace, checked before anything connects."""

    def test_server_address(self):
        self.assertEqual(parse_server_address("127.0.0.1:2181"), (("127.0.0.1", 2181),))
        self.assertEqual(parse_server_address(" zk1:1, zk2:2 "), (("zk1", 1), ("zk2", 2)))
        self.assertEqual(parse_server_address("zk"), (("zk", 2181),))
        self.assertEqual(parse_server_address("[::1]:2182,[::1]"), (("::1", 2182), ("::1", 2181)))

    def test_bad_server_address(self):
        for text in ("", " ", "a:0", "a:65536", "a:x", "a:", "a:-1", "a:1,,b:2", "a:1,", "a:1/chroot",
                     "::1:2181", "[::1", "[::1]x", "[]:1", "a b:1", ":2181", "a:２１８１", None):
            with self.assertRaises(ConfigError, msg=repr(text)) as caught:
                parse_server_address(text)
            self.assertEqual(caught.exception.key, "[zk] server-address")

    def test_namespace(self):
        self.assertEqual(parse_namespace("mpush"), "/mpush")
        self.assertEqual(parse_namespace("a/b"), "/a/b")
        self.assertEqual(parse_namespace(""), "")

    def test_bad_namespace(self):
        for text in ("/mpush", "mpush/", "a//b", ".", "a/../b", "a\x00", "a\x7f", "a\ufff5", 5):
            with self.assertRaises(ConfigError, msg=repr(text)) as caught:
                parse_namespace(text)
            self.assertEqual(caught.exception.key, "[zk] namespace")

    def test_registration_refuses_bad_config(self):
        clock = task.Clock()
        with self.assertRaises(ConfigError):
            ZkRegistration(zk_config(server_address="zk:notaport"), NODES, clock)
        with self.assertRaises(ConfigError):
            ZkRegistration(zk_config(namespace="/mpush"), NODES, clock)

    def test_registration_refuses_bad_nodes(self):
        clock = task.Clock()
        for nodes in ([("xs", {"host": "h", "port": 1})],
                      [("cs", {"host": "h"})],
                      [("cs", {"host": "h", "port": 1, "weight": 1})],
                      [("cs", ["h", 1])],
                      ["cs"],
                      [("cs", {"host": "h", "port": 1}, "extra")],
                      [("gs", {"host": "", "port": 1})],
                      [],
                      None,
                      "cs",
                      {"cs": {"host": "h", "port": 1}}):
            with self.assertRaises(ZkNodeError, msg=repr(nodes)):
                ZkRegistration(zk_config(), nodes, clock)

    def test_paths(self):
        registration = ZkRegistration(zk_config(namespace="a/b"), NODES, task.Clock())
        cs, gs = registration.paths
        self.assertTrue(cs.startswith("/a/b/cluster/cs/"))
        self.assertTrue(gs.startswith("/a/b/cluster/gs/"))
        # MPush's node ids: UUID.randomUUID().toString().
        self.assertEqual(str(uuid.UUID(cs.rsplit("/", 1)[1])), cs.rsplit("/", 1)[1])
        self.assertNotEqual(cs.rsplit("/", 1)[1], gs.rsplit("/", 1)[1])
        root = ZkRegistration(zk_config(namespace=""), NODES, task.Clock())
        self.assertTrue(root.paths[0].startswith("/cluster/cs/"))


# --- The state machine, over a scripted kazoo client ---


class InlineThreads:
    """callFromThread / callInThread that run at once, in the test's thread."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)

    def callInThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


class FakeResult:
    """kazoo's IAsyncResult, completed by the test."""

    def __init__(self):
        self._links = []
        self._outcome = None

    def rawlink(self, callback):
        if self._outcome is None:
            self._links.append(callback)
        else:
            callback(self)

    def set(self, value=None):
        self._finish(("value", value))

    def set_exception(self, error):
        self._finish(("error", error))

    def _finish(self, outcome):
        assert self._outcome is None, "completed twice"
        self._outcome = outcome
        for callback in self._links:
            callback(self)

    def get(self, block=True, timeout=None):
        assert self._outcome is not None and not block
        kind, value = self._outcome
        if kind == "error":
            raise value
        return value


def stat(owner, version=0):
    return ZnodeStat(1, 1, 0, 0, version, 0, 0, owner, 2, 0, 1)


class FakeKazoo:
    """The part of KazooClient that ZkRegistration uses, scripted by the test."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.listeners = []
        self.calls = []
        self.session = None
        self.connected = False
        self.client_state = KeeperState.CLOSED
        self.started = self.stopped = self.closed = False

    def add_listener(self, listener):
        self.listeners.append(listener)

    def start_async(self):
        self.started = True

    @property
    def client_id(self):
        return (self.session, b"secret") if self.connected else None

    def _record(self, name, *args, **kwargs):
        result = FakeResult()
        self.calls.append((name, args, kwargs, result))
        return result

    def create_async(self, path, value=b"", acl=None, ephemeral=False, sequence=False, makepath=False):
        return self._record("create", path, value, acl=acl, ephemeral=ephemeral, makepath=makepath)

    def exists_async(self, path, watch=None):
        return self._record("exists", path)

    def delete_async(self, path, version=-1):
        return self._record("delete", path, version=version)

    def stop(self):
        self.stopped = True
        self.connected = False

    def close(self):
        self.closed = True

    # -- script --

    def _tell(self, state):
        for listener in list(self.listeners):
            listener(state)

    def connect(self, session):
        self.session = session
        self.connected = True
        self.client_state = KeeperState.CONNECTED
        self._tell(KazooState.CONNECTED)

    def suspend(self):
        self.connected = False
        self.client_state = KeeperState.CONNECTING
        self._tell(KazooState.SUSPENDED)

    def lose(self, auth_failed=False):
        self.connected = False
        self.client_state = KeeperState.AUTH_FAILED if auth_failed else KeeperState.EXPIRED_SESSION
        self._tell(KazooState.LOST)

    def take(self, name):
        """The oldest unanswered call named C{name}."""
        for call in self.calls:
            if call[0] == name and call[3]._outcome is None:
                return call
        raise AssertionError(f"no pending {name} in {[c[0] for c in self.calls]}")

    def pending(self, name=None):
        return [c for c in self.calls if c[3]._outcome is None and (name is None or c[0] == name)]


class StateMachineTests(SynchronousTestCase):
    """ZkRegistration's reactions, with a fake clock and a scripted client."""

    def setUp(self):
        self.clock = task.Clock()
        self.logs = LogCapture(self)
        self.clients = []

    def make(self, nodes=NODES, **zk):
        zk.setdefault("connection_timeout", 2000)
        zk.setdefault("session_timeout", 4000)
        zk.setdefault("digest", DIGEST)

        def factory(**kwargs):
            client = FakeKazoo(**kwargs)
            self.clients.append(client)
            return client

        registration = ZkRegistration(
            zk_config(**zk), nodes, self.clock, reactor=InlineThreads(), client_factory=factory
        )
        registration.startService()
        return registration, self.clients[-1]

    def answer_creates(self, client):
        while client.pending("create"):
            client.take("create")[3].set("/created")

    def stop(self, registration):
        """Stop, ZooKeeper answering the deletes."""
        d = registration.stopService()
        for client in self.clients:
            for call in client.pending("delete"):
                call[3].set(True)
        return self.successResultOf(d)

    def test_client_built_from_config(self):
        registration, client = self.make(server_address="zk1:2181,[::1]:2182", session_timeout=7000)
        self.assertEqual(client.kwargs["hosts"], "zk1:2181,[::1]:2182")
        self.assertEqual(client.kwargs["timeout"], 7.0)
        self.assertEqual(client.kwargs["auth_data"], [("digest", DIGEST)])
        self.assertEqual(client.kwargs["default_acl"], CREATOR_ALL_ACL)
        self.assertIsInstance(client.kwargs["logger"], logging.Logger)
        self.assertTrue(client.started)
        self.assertEqual(client.calls, [])

    def test_default_or_empty_digest_is_warned_at_start(self):
        self.make(digest=ZkConfig().digest)
        [warning] = self.logs.texts(LogLevel.warn, "[zk] digest")
        self.assertIn('public default "mpush"', warning)
        self.make(digest="")
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "[zk] digest is empty")), 1)
        self.make(digest="ops:9f2c6b1e")
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "[zk] digest")), 2)
        self.assertEqual(self.logs.texts(containing="9f2c6b1e"), [])

    def test_no_digest_means_open_acl(self):
        registration, client = self.make(digest="")
        self.assertIsNone(client.kwargs["auth_data"])
        self.assertEqual(client.kwargs["default_acl"], OPEN_ACL_UNSAFE)
        client.connect(1)
        self.assertEqual(client.take("create")[2]["acl"], OPEN_ACL_UNSAFE)

    def test_registers_every_node_on_connect(self):
        registration, client = self.make()
        client.connect(42)
        self.assertFalse(registration.registered)
        name, args, kwargs, _ = client.take("create")
        self.assertEqual(args, (registration.nodes[0].path, registration.nodes[0].data))
        self.assertEqual(kwargs, {"acl": CREATOR_ALL_ACL, "ephemeral": True, "makepath": True})
        self.answer_creates(client)  # the gs node is asked once cs is in
        self.answer_creates(client)
        self.assertEqual([c[1][0] for c in client.calls], list(registration.paths))
        self.assertTrue(registration.registered)
        self.assertEqual(len(self.logs.texts(LogLevel.info, "registered in ZooKeeper")), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_node_already_ours(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(stat(owner=42))
        self.assertTrue(registration.registered)
        self.assertEqual([c[0] for c in client.calls], ["create", "exists"])

    def test_node_of_another_session_replaced(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(stat(owner=7, version=3))
        name, args, kwargs, result = client.take("delete")
        self.assertEqual((args, kwargs), ((registration.paths[0],), {"version": 3}))
        result.set(True)
        client.take("create")[3].set("/created")
        self.assertTrue(registration.registered)

    def test_node_gone_between_calls(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(None)
        client.take("create")[3].set("/created")
        self.assertTrue(registration.registered)

    def test_node_kept_by_another_session_is_an_error(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        for _ in range(3):
            client.take("create")[3].set_exception(NodeExistsError())
            client.take("exists")[3].set(stat(owner=7))
            client.take("delete")[3].set_exception(NoNodeError())
        self.assertFalse(registration.registered)
        [warning] = self.logs.texts(LogLevel.warn, "registration failed")
        self.assertIn("keeps being created by another session", warning)
        self.stop(registration)

    def test_no_answer_times_out_then_retries(self):
        registration, client = self.make()
        client.connect(42)
        self.clock.advance(1.999)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])
        self.clock.advance(0.001)
        [warning] = self.logs.texts(LogLevel.warn, "registration failed")
        self.assertIn(ZkTimeout.__name__, warning)
        self.assertTrue(issubclass(ZkTimeout, ZkError))
        self.assertEqual(len(client.pending("create")), 1)  # the late call is still out there
        self.clock.advance(RETRY_DELAY)
        self.assertEqual(len(client.pending("create")), 2)
        # The first call's late answer is ignored; the retry's counts.
        client.calls[0][3].set("/created")
        client.calls[1][3].set("/created")
        self.answer_creates(client)
        self.assertTrue(registration.registered)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_repeated_failures_back_off_and_log_once(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        delays = []
        for _ in range(4):
            client.take("create")[3].set_exception(NoAuthError())
            [retry] = self.clock.getDelayedCalls()
            delays.append(retry.getTime() - self.clock.seconds())
            self.clock.advance(delays[-1])
        self.assertEqual(delays, [RETRY_DELAY, 2 * RETRY_DELAY, 4 * RETRY_DELAY, 8 * RETRY_DELAY])
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "NoAuthError")), 1)
        self.assertFalse(registration.registered)
        self.stop(registration)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_connection_loss_waits_for_reconnect(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        client.suspend()
        client.take("create")[3].set_exception(ConnectionLoss())
        self.assertEqual(client.pending(), [])
        self.clock.advance(3)  # no retry while disconnected (within the session timeout)
        self.assertEqual(client.pending(), [])
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(stat(owner=42))
        self.assertTrue(registration.registered)

    def test_reconnect_during_registration_runs_again(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        first = client.take("create")
        client.lose()
        client.connect(43)  # a new session while the first round is still out
        first[3].set_exception(ConnectionLoss())
        self.assertFalse(registration.registered)
        client.take("create")[3].set("/created")
        self.assertTrue(registration.registered)

    def test_session_loss_registers_same_paths_again(self):
        registration, client = self.make()
        client.connect(42)
        self.answer_creates(client)
        self.answer_creates(client)
        self.assertTrue(registration.registered)
        client.lose()
        self.assertFalse(registration.registered)
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "session lost")), 1)
        client.connect(43)
        self.answer_creates(client)
        self.answer_creates(client)
        self.assertTrue(registration.registered)
        paths = [c[1][0] for c in client.calls if c[0] == "create"]
        self.assertEqual(paths, list(registration.paths) * 2)
        self.assertEqual(len(self.logs.texts(LogLevel.info, "registered in ZooKeeper")), 2)

    def test_disconnected_for_a_session_timeout_starts_a_new_client(self):
        registration, first = self.make(nodes=NODES[:1])
        first.connect(42)
        self.answer_creates(first)
        first.suspend()
        self.clock.advance(3.999)
        self.assertEqual(len(self.clients), 1)
        self.assertTrue(registration.registered)
        self.clock.advance(0.001)
        self.assertEqual(len(self.clients), 2)
        self.assertFalse(registration.registered)
        self.assertTrue(first.stopped and first.closed)
        [warning] = self.logs.texts(LogLevel.warn, "presumed expired")
        second = self.clients[-1]
        self.assertTrue(second.started)
        first.connect(42)  # the old client's events no longer count
        self.assertEqual(first.pending(), [])
        second.connect(77)
        # The old session's entry may still be there: replaced.
        second.take("create")[3].set_exception(NodeExistsError())
        second.take("exists")[3].set(stat(owner=42, version=0))
        second.take("delete")[3].set(True)
        second.take("create")[3].set("/created")
        self.assertTrue(registration.registered)
        self.clock.advance(100)
        self.assertEqual(len(self.clients), 2)
        self.stop(registration)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_reconnected_in_time_keeps_the_client(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        self.answer_creates(client)
        client.suspend()
        self.clock.advance(3)
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(stat(owner=42))
        self.clock.advance(100)
        self.assertEqual(len(self.clients), 1)
        self.assertTrue(registration.registered)

    def test_never_connected_keeps_the_client(self):
        # No session yet, so none to lose: kazoo keeps reconnecting.
        registration, client = self.make(nodes=NODES[:1])
        self.clock.advance(1000)
        self.assertEqual(len(self.clients), 1)

    def test_suspend_keeps_entries(self):
        registration, client = self.make(nodes=NODES[:1])
        client.connect(42)
        self.answer_creates(client)
        client.suspend()
        self.assertTrue(registration.registered)  # until the session is known lost
        client.connect(42)
        client.take("create")[3].set_exception(NodeExistsError())
        client.take("exists")[3].set(stat(owner=42))
        self.assertTrue(registration.registered)
        self.assertEqual(len(self.logs.texts(LogLevel.info, "registered in ZooKeeper")), 1)

    def test_down_at_start_logs_once(self):
        registration, client = self.make()
        self.clock.advance(1.9)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])
        self.clock.advance(0.1)
        for _ in range(20):
            self.clock.advance(5)
        [warning] = self.logs.texts(LogLevel.warn)
        self.assertIn("not reachable", warning)
        self.assertIn("keeps trying", warning)
        client.connect(42)
        self.assertEqual(len(self.logs.texts(LogLevel.info, "answers again")), 1)
        self.answer_creates(client)
        self.answer_creates(client)
        self.assertTrue(registration.registered)
        # A later outage is a new one: logged once again.
        client.suspend()
        for _ in range(20):
            self.clock.advance(5)
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "not reachable")), 2)

    def test_up_in_time_logs_nothing(self):
        registration, client = self.make(nodes=NODES[:1])
        self.clock.advance(1)
        client.connect(42)
        self.answer_creates(client)
        self.clock.advance(100)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])

    def test_auth_failed(self):
        registration, client = self.make()
        client.lose(auth_failed=True)
        [error] = self.logs.texts(LogLevel.error)
        self.assertIn("refused the [zk] digest credentials", error)
        self.clock.advance(100)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])
        self.assertFalse(registration.registered)
        self.stop(registration)

    def test_stop_deletes_then_closes(self):
        registration, client = self.make()
        client.connect(42)
        self.answer_creates(client)
        self.answer_creates(client)
        d = registration.stopService()
        self.assertNoResult(d)
        deletes = client.pending("delete")
        self.assertEqual([c[1][0] for c in deletes], list(registration.paths))
        self.assertFalse(client.stopped)
        deletes[0][3].set(True)
        deletes[1][3].set_exception(NoNodeError())  # already gone: fine
        self.successResultOf(d)
        self.assertTrue(client.stopped and client.closed)
        self.assertFalse(registration.registered)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_bounded_when_deletes_hang(self):
        registration, client = self.make()
        client.connect(42)
        self.answer_creates(client)
        self.answer_creates(client)
        d = registration.stopService()
        self.clock.advance(2)
        self.successResultOf(d)
        self.assertTrue(client.stopped and client.closed)
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "not deleted")), 2)
        # Answers after the stop are ignored.
        for call in client.pending():
            call[3].set(True)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_bounded_when_close_hangs(self):
        registration, client = self.make(nodes=NODES[:1])
        parked = []
        registration._reactor = type("ParkedThreads", (), {
            "callFromThread": lambda self, f, *a, **k: f(*a, **k),
            "callInThread": lambda self, f, *a, **k: parked.append(f),
        })()
        d = registration.stopService()
        self.clock.advance(5.999)  # session timeout + connection timeout
        self.assertNoResult(d)
        self.clock.advance(0.001)
        self.successResultOf(d)
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "not closed cleanly")), 1)
        parked[0]()  # the close ends late: ignored
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_while_disconnected_only_closes(self):
        registration, client = self.make()
        self.stop(registration)
        self.assertEqual(client.calls, [])
        self.assertTrue(client.stopped and client.closed)

    def test_stop_during_registration(self):
        registration, client = self.make()
        client.connect(42)
        create = client.take("create")
        client.connected = False  # as kazoo: the close is under way
        self.stop(registration)
        create[3].set("/created")  # late answer, after stop
        client.connect(42)  # a stopped client's last event
        self.assertFalse(registration.registered)
        self.assertEqual(len(client.pending()), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_before_start(self):
        registration = ZkRegistration(zk_config(), NODES, self.clock)
        self.successResultOf(registration.stopService())

    def test_restart_keeps_paths(self):
        registration, first = self.make(nodes=NODES[:1])
        first.connect(1)
        self.answer_creates(first)
        self.stop(registration)
        registration.startService()
        second = self.clients[-1]
        self.assertIsNot(first, second)
        second.connect(2)
        self.assertEqual(second.take("create")[1][0], registration.paths[0])

    def test_kazoo_log_forwarded_quietly(self):
        registration, client = self.make()
        logger = client.kwargs["logger"]
        logger.warning("Connection dropped: %s", "refused")
        logger.error("Unhandled exception in connection loop")
        [debug] = self.logs.texts(LogLevel.debug, "kazoo:")
        self.assertIn("Connection dropped: refused", debug)
        [warning] = self.logs.texts(LogLevel.warn, "kazoo:")
        self.assertIn("Unhandled exception", warning)


# --- Against a real ZooKeeper ---


async def eventually(what, predicate, deadline=60.0):
    """
    Wait until C{predicate()} (run in a thread: it may block on kazoo) is
    true; the deadline only guards against a hang.
    """
    end = time.monotonic() + deadline
    while True:
        value = await threads.deferToThread(predicate)
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"still not {what} after {deadline:g} s")
        await task.deferLater(reactor, 0.05, lambda: None)


class RealZooKeeperTests(TestCase):
    """ZkRegistration and a real ZooKeeper on a loopback port."""

    timeout = 120

    def setUp(self):
        self.server = start_zookeeper_server(self)
        self.logs = LogCapture(self)

    def reader(self, digest=DIGEST):
        """A separate kazoo client, as MPush's PushSender (same digest)."""
        auth = [("digest", digest)] if digest else None
        client = kazoo_client(self.server.address, auth_data=auth)
        client.start(timeout=30)
        self.addCleanup(lambda: threads.deferToThread(_close, client))
        return client

    def registration(self, nodes=None, address=None, **zk):
        zk.setdefault("session_timeout", 4000)
        zk.setdefault("connection_timeout", 3000)
        zk.setdefault("digest", DIGEST)
        config = zk_config(server_address=address or self.server.address, **zk)
        nodes = nodes if nodes is not None else cluster_nodes(
            zk_config(net={"ws_server_port": 8089}), connect_host="127.0.0.1", gateway_host="127.0.0.2"
        )
        registration = ZkRegistration(config, nodes, reactor)
        registration.startService()
        self.addCleanup(lambda: registration.running and registration.stopService())
        return registration

    @staticmethod
    def snapshot(client, root="/mpush"):
        """{path: (data, ephemeral owner)} of every registration under C{root}."""
        found = {}
        for kind in ("cs", "gs", "ws"):
            parent = f"{root}/cluster/{kind}"
            try:
                children = client.get_children(parent)
            except NoNodeError:
                continue
            for child in children:
                data, node_stat = client.get(f"{parent}/{child}")
                found[f"{parent}/{child}"] = (data, node_stat.ephemeralOwner)
        return found

    def wait_registered(self, client, registration, root="/mpush"):
        def check():
            found = self.snapshot(client, root)
            return found if registration.registered and set(found) == set(registration.paths) else None

        return eventually("registered", check)

    @defer.inlineCallbacks
    def test_registration_visible(self):
        registration = self.registration()
        client = self.reader()
        found = yield defer.ensureDeferred(self.wait_registered(client, registration))
        by_kind = {path.split("/")[3]: data for path, (data, _) in found.items()}
        self.assertEqual(by_kind, {
            "cs": b'{"attrs":{"weight":1},"host":"127.0.0.1","port":3000}',
            "ws": b'{"host":"127.0.0.1","port":8089}',
            "gs": b'{"host":"127.0.0.2","port":3001}',
        })
        session = registration._client.client_id[0]  # the registration's own session
        self.assertEqual({owner for _, owner in found.values()}, {session})
        # MPush's ACL: only clients with the same digest may read.
        acls, _ = yield threads.deferToThread(client.get_acls, registration.paths[0])
        self.assertEqual([(a.perms, a.id.scheme, a.id.id.split(":")[0]) for a in acls], [(31, "digest", "ops")])
        stranger = self.reader(digest=None)
        with self.assertRaises(NoAuthError):
            yield threads.deferToThread(stranger.get, registration.paths[0])
        self.assertEqual(len(self.logs.texts(LogLevel.info, "registered in ZooKeeper")), 1)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])

    @defer.inlineCallbacks
    def test_no_digest_is_readable_by_anyone(self):
        registration = self.registration(nodes=NODES, digest="", namespace="open/ns")
        client = self.reader(digest=None)
        found = yield defer.ensureDeferred(self.wait_registered(client, registration, root="/open/ns"))
        self.assertEqual(sorted(data for data, _ in found.values()), [
            b'{"attrs":{"weight":1},"host":"10.0.0.5","port":3000}',
            b'{"host":"10.0.0.6","port":3001}',
        ])

    @defer.inlineCallbacks
    def test_removed_on_stop(self):
        registration = self.registration()
        client = self.reader()
        yield defer.ensureDeferred(self.wait_registered(client, registration))
        yield registration.stopService()
        # Gone as soon as the stop is done: deleted, and the session closed.
        found = yield threads.deferToThread(self.snapshot, client)
        self.assertEqual(found, {})
        self.assertFalse(registration.registered)
        self.assertEqual(self.logs.texts(LogLevel.warn), [])

    @defer.inlineCallbacks
    def test_registered_again_after_session_expired(self):
        registration = self.registration()
        client = self.reader()
        before = yield defer.ensureDeferred(self.wait_registered(client, registration))
        old_session = registration._client.client_id
        # Curator's and kazoo's trick: another client takes over the session and
        # closes it, so ZooKeeper expires it and drops its ephemeral nodes.
        yield threads.deferToThread(_expire, self.server.address, old_session)
        gone = yield threads.deferToThread(self.snapshot, client)
        self.assertEqual(gone, {})

        def renewed():
            identity = registration._client.client_id
            return identity is not None and identity[0] != old_session[0]

        yield defer.ensureDeferred(eventually("a new session", renewed))
        after = yield defer.ensureDeferred(self.wait_registered(client, registration))
        self.assertEqual(set(after), set(before))  # same UUIDs
        self.assertEqual({data for data, _ in after.values()}, {data for data, _ in before.values()})
        self.assertEqual({owner for _, owner in after.values()}, {registration._client.client_id[0]})
        self.assertEqual(len(self.logs.texts(LogLevel.warn, "session lost")), 1)

    @defer.inlineCallbacks
    def test_registered_again_after_zookeeper_replaced(self):
        registration = self.registration(nodes=NODES)
        client = self.reader()
        before = yield defer.ensureDeferred(self.wait_registered(client, registration))
        # A new, empty ZooKeeper on the same address: every session is unknown to it.
        yield threads.deferToThread(_close, client)
        yield threads.deferToThread(self.server.restart, True)
        client = self.reader()
        after = yield defer.ensureDeferred(self.wait_registered(client, registration))
        self.assertEqual(set(after), set(before))

    @defer.inlineCallbacks
    def test_entries_survive_a_zookeeper_restart(self):
        registration = self.registration(nodes=NODES)
        client = self.reader()
        before = yield defer.ensureDeferred(self.wait_registered(client, registration))
        yield threads.deferToThread(_close, client)
        yield threads.deferToThread(self.server.restart)
        client = self.reader()
        after = yield defer.ensureDeferred(self.wait_registered(client, registration))
        self.assertEqual({p: d for p, (d, _) in after.items()}, {p: d for p, (d, _) in before.items()})

    @defer.inlineCallbacks
    def test_down_at_start_then_up(self):
        down = ZooKeeperServer()
        self.addCleanup(down.stop)
        port = down.reserve_port()
        registration = self.registration(nodes=NODES, address=f"127.0.0.1:{port}", connection_timeout=500)

        def attempts():
            return len(self.logs.texts(LogLevel.debug, f"kazoo: Connecting to 127.0.0.1(127.0.0.1):{port}"))

        # Several reconnect attempts, one warning.
        yield defer.ensureDeferred(eventually("retrying", lambda: attempts() >= 3))
        yield defer.ensureDeferred(eventually("warned", lambda: self.logs.texts(LogLevel.warn)))
        [warning] = self.logs.texts(LogLevel.warn)
        self.assertIn(f"ZooKeeper at 127.0.0.1:{port} not reachable", warning)
        self.assertFalse(registration.registered)
        yield threads.deferToThread(down.start)
        client = kazoo_client(down.address, auth_data=[("digest", DIGEST)])
        yield threads.deferToThread(client.start, 30)
        self.addCleanup(lambda: threads.deferToThread(_close, client))
        found = yield defer.ensureDeferred(self.wait_registered(client, registration))
        self.assertEqual(len(found), 2)
        self.assertEqual(len(self.logs.texts(LogLevel.warn)), 1)
        self.assertEqual(len(self.logs.texts(LogLevel.info, "answers again")), 1)

    @defer.inlineCallbacks
    def test_namespace_of_another_digest(self):
        owner = self.registration(nodes=NODES[:1])
        client = self.reader()
        yield defer.ensureDeferred(self.wait_registered(client, owner))
        intruder = self.registration(nodes=NODES[1:], digest="other")
        yield defer.ensureDeferred(eventually(
            "refused", lambda: self.logs.texts(LogLevel.warn, "NoAuthError")
        ))
        self.assertFalse(intruder.registered)
        yield intruder.stopService()
        found = yield threads.deferToThread(self.snapshot, client)
        self.assertEqual(set(found), set(owner.paths))


def _close(client):
    client.stop()
    client.close()


def _expire(address, session):
    thief = kazoo_client(address, client_id=session)
    thief.start(timeout=30)
    _close(thief)
