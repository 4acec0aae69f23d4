"""
Leaving without losing anything: the drain on SIGTERM, the reload on SIGHUP
(L{mpush.server.ops}), first on a node over StringTransport and a
fake clock, then on real C{twistd} processes: a drained node exits 0, and a
node restarted under a continuous pusher loses no message and duplicates
none.

The node on a fake clock is wired by C{mpush.tap}'s own steps
(L{tap.build_node}, L{tap.build_lifecycle}); the process tests run
C{twistd mpush} itself.
"""

import collections
import dataclasses
import gc
import json
import os
import signal
import socket
import subprocess

from twisted.internet import defer, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ReactorNotRunning
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, LogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush import tap
from mpush.client.protocol import ClientError, connect_client
from mpush.config import BindConfig, CoreConfig, LimitsConfig, NetConfig, PushConfig, load_config
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import ErrorMessage, GatewayPushMessage, OkMessage, PushMessage
from mpush.protocol.packet import Command, Flags, PacketDecoder, encode_packet
from mpush.protocol.body import make_raw_packet
from mpush.protocol.routing import NodeInfo
from mpush.push import AckModel, PushClient, PushStatus
from mpush.server.ops import drain
from mpush.server.ws.websocket import WebSocketConnection, make_ws_dispatcher
from mpush.server.device.bind_validator import AcceptAll, HmacTokenValidator
from mpush.server.gateway.gateway import GatewayFactory
from mpush.server.ops.drain import Drainer
from mpush.server.ops.log_gate import LogLevelError, LogLevelGate, parse_log_level, read_log_level
from mpush.server.ops.push_tracking import DRAINING_REASON, PushTracker
from mpush.server.ops.reload import Reloader, reload
from mpush.server.ops.signals import ProcessSignals, install_sighup, install_sigterm
from mpush.tap import Backends

from tests.polling import sleep, wait_until
from tests.process_support import NodeProcess, free_port, node_environment
from tests.redis_server import start_redis_server
from tests.server_support import EPOCH, demo_config
from tests.test_bind_push import Device
from tests.test_faults import DEVICE_TIMEOUT, client_config, http_json, node_config

#: Seconds a test node's drain waits for in-flight pushes and acks.
DRAIN_DEADLINE = 5.0


# -- a node on a fake clock ---------------------------------------------------------


class Listener:
    """
    A listening port that records being stopped.
    """

    def __init__(self, fail=False):
        self.stopped = 0
        self.fail = fail

    def stopListening(self):
        self.stopped += 1
        if self.fail:
            raise OSError("cannot stop")
        return defer.succeed(None)


class ListenerService:
    """
    A strports-like service that records being stopped.
    """

    def __init__(self):
        self.stopped = 0

    def stopService(self):
        self.stopped += 1


class GatewayLink:
    """
    A pusher's connection to a gateway built on a L{PushTracker}.
    """

    def __init__(self, tracker):
        self.protocol = GatewayFactory(tracker, 1 << 20).buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.protocol.makeConnection(self.transport)
        self.decoder = PacketDecoder(None)
        self.next_id = 0

    def push(self, user_id, content=b"hi", flags=0, timeout=2500, client_type=1):
        self.next_id += 1
        message = GatewayPushMessage(user_id, client_type, timeout, content)
        self.protocol.dataReceived(
            encode_packet(make_raw_packet(Command.GATEWAY_PUSH, message, self.next_id, flags))
        )
        return self.next_id

    def replies(self):
        data = self.transport.value()
        self.transport.clear()
        answers = []
        for packet in self.decoder.feed(data):
            kind = OkMessage if packet.cmd == Command.OK else ErrorMessage
            answers.append((packet.session_id, packet.cmd, kind.decode(packet.body)))
        return answers


class NodeHarness:
    """
    One node on in-memory backends and a fake clock, with a tracked gateway,
    wired as C{twistd mpush} wires it (L{tap.build_node},
    L{tap.build_lifecycle}) over listeners that record being stopped.
    """

    def __init__(self, config=None):
        self.clock = task.Clock()
        self.clock.advance(EPOCH)
        config = demo_config(config)
        drain_ms = int(DRAIN_DEADLINE * 1000)
        self.config = config.replace(cluster=dataclasses.replace(config.cluster, drain_timeout=drain_ms))
        self.backends = Backends(self.config, self.clock)
        self.node, _, _ = tap.build_node(self.config, self.clock, self.backends)
        host, port = self.node.router_center.gateway
        self.info = NodeInfo(host=host, port=port, connect_host=host, connect_port=3000, started_ms=0)
        self.backends.registry.register(self.info)
        self.tracker = tap.track_pushes(self.node)
        self.gateway = GatewayLink(self.tracker)
        self.listeners = [Listener(), ListenerService()]

    def drainer(self, **kwargs):
        """
        A fresh drainer of this node: C{twistd mpush}'s, or one with other
        parts (C{kwargs} as L{Drainer} takes them).
        """
        if kwargs:
            kwargs.setdefault("pushes", self.tracker)
            kwargs.setdefault("registry", self.backends.registry)
            kwargs.setdefault("remote", self.node.router_center.remote)
            return Drainer(self.listeners, DRAIN_DEADLINE, **self.node_parts(), **kwargs)
        listeners = tap.NodeListeners(accepting=tuple(self.listeners))
        lifecycle = tap.build_lifecycle(
            self.node, self.backends, listeners, self.tracker, self.clock,
            reload=lambda: self.config, config_path=None,
        )
        return lifecycle.drainer

    def node_parts(self):
        """What a L{Drainer} drains of this node."""
        node = self.node
        return {"connections": node.connections, "acks": node.acks, "clock": self.clock,
                "gateway": lambda: node.router_center.gateway}

    def device(self, user_id, port=40000):
        device = Device(self.node, f"dev-of-{user_id}", port=port)
        device.bind(user_id)
        return device

    def alive(self):
        answer = []
        self.backends.registry.is_alive(*self.node.router_center.gateway).addCallback(answer.append)
        return answer[0]

    def route(self, user_id):
        answer = []
        self.backends.remote.lookup(user_id).addCallback(answer.append)
        return answer[0]


def lose(device):
    device.protocol.connectionLost(Failure(ConnectionDone()))


def fired(deferred):
    results = []
    deferred.addBoth(results.append)
    return results


class DrainTests(SynchronousTestCase):
    def setUp(self):
        self.harness = NodeHarness()
        self.node = self.harness.node
        self.clock = self.harness.clock

    def test_waits_for_acks_then_closes_marks_offline_and_unregisters(self):
        harness = self.harness
        device = harness.device("alice")
        harness.gateway.push("alice", b"ack me", flags=Flags.AUTO_ACK)
        [(cmd, _, _, body)] = device.received()
        self.assertEqual((cmd, PushMessage.decode(body).content), (Command.PUSH, b"ack me"))
        self.assertEqual((harness.tracker.in_flight, len(self.node.acks)), (1, 1))

        done = fired(harness.drainer().drain())
        self.assertEqual([listener.stopped for listener in harness.listeners], [1, 1])
        self.clock.advance(1.0)
        self.assertEqual(done, [])
        self.assertFalse(device.transport.disconnecting)  # still delivering what it started

        [packet_id] = list(self.node.acks._waiting)
        device.ack(packet_id)
        [(_, cmd, ok)] = harness.gateway.replies()
        self.assertEqual((cmd, ok.cmd), (Command.OK, Command.GATEWAY_PUSH))
        self.clock.advance(0.05)
        self.assertTrue(device.transport.disconnecting)  # closed, to reconnect elsewhere
        self.assertEqual(done, [])
        lose(device)
        self.clock.advance(0.05)
        [report] = done
        self.assertFalse(report.timed_out)
        self.assertEqual((report.pushes_left, report.acks_left), (0, 0))
        self.assertEqual((report.connections_closed, report.connections_aborted), (1, 0))
        self.assertEqual(report.listeners, 2)
        self.assertTrue(report.unregistered)
        self.assertIsNotNone(report.routes_marked)
        self.assertFalse(harness.alive())
        self.assertFalse(harness.route("alice")[1].online)

    def test_new_pushes_answered_offline_while_draining(self):
        harness = self.harness
        device = harness.device("alice")
        harness.gateway.push("alice", b"first", flags=Flags.AUTO_ACK)
        device.received()
        drainer = harness.drainer()
        drainer.drain()
        self.assertTrue(drainer.draining)
        single = harness.gateway.push("alice", b"during the drain", flags=Flags.AUTO_ACK)
        harness.gateway.protocol.dataReceived(
            encode_packet(make_raw_packet(Command.GATEWAY_PUSH, GatewayPushMessage(None, 0, 0, b"all"), 99))
        )
        answers = {sid: (cmd, message) for sid, cmd, message in harness.gateway.replies()}
        cmd, offline = answers[single]
        self.assertEqual((cmd, offline.cmd, offline.code), (Command.ERROR, Command.GATEWAY_PUSH, ErrorCode.OFFLINE))
        self.assertEqual(offline.reason, DRAINING_REASON)
        self.assertEqual(json.loads(offline.data)["userId"], "alice")
        cmd, broadcast = answers[99]
        self.assertEqual((cmd, broadcast.code, broadcast.reason), (Command.ERROR, ErrorCode.PUSH_CLIENT_FAILURE, DRAINING_REASON))
        self.assertEqual(device.received(), [])  # nothing more written to a leaving connection
        self.assertEqual((harness.tracker.refused, harness.tracker.in_flight), (2, 1))

    def test_deadline_bounds_the_wait(self):
        harness = self.harness
        device = harness.device("alice")
        harness.gateway.push("alice", b"never acked", flags=Flags.BIZ_ACK, timeout=60000)
        done = fired(harness.drainer().drain())
        self.clock.advance(DRAIN_DEADLINE - 0.1)
        self.assertEqual(done, [])
        self.clock.advance(0.1)
        self.assertTrue(device.transport.disconnecting)
        self.clock.advance(drain.CLOSE_GRACE)  # the device never finishes closing
        [report] = done
        self.assertTrue(report.timed_out)
        self.assertEqual((report.pushes_left, report.acks_left), (1, 1))
        self.assertEqual((report.connections_closed, report.connections_aborted), (1, 1))
        self.assertTrue(device.transport.disconnected)  # aborted

    def test_a_browser_that_does_not_close_is_aborted(self):
        """
        A WebSocket connection that has not closed by the end of the grace
        is dropped as a TCP one is: the drain reaches both through
        IDeviceConnection.
        """
        from tests.test_websocket import FakeChannel

        channel = FakeChannel()
        browser = WebSocketConnection(self.node, make_ws_dispatcher(self.node), channel)
        browser.opened()
        done = fired(self.harness.drainer().drain())
        self.clock.advance(0.05)
        self.assertEqual(channel.closed_with, 1000)  # asked to close first
        self.assertFalse(channel.dropped)
        self.clock.advance(drain.CLOSE_GRACE)  # the browser never finishes closing
        self.assertTrue(channel.dropped)
        self.node.connection_lost(browser)
        self.clock.advance(drain.CLOSE_GRACE)
        [report] = done
        self.assertEqual((report.connections_closed, report.connections_aborted), (1, 1))

    def test_drains_once(self):
        first = fired(self.harness.drainer().drain())
        self.assertEqual(len(first), 1)
        drainer = self.harness.drainer()
        one, two = fired(drainer.drain()), fired(drainer.drain())
        self.assertIs(one[0], two[0])
        self.assertEqual([listener.stopped for listener in self.harness.listeners], [2, 2])

    def test_idle_node_drains_at_once(self):
        [report] = fired(self.harness.drainer().drain())
        self.assertEqual((report.connections_closed, report.timed_out, report.seconds), (0, False, 0.0))

    def test_backend_failures_do_not_stop_the_drain(self):
        class BrokenRemote:
            def mark_node_offline(self, host, port):
                return defer.fail(RuntimeError("redis down"))

        class HangingRegistry:
            def unregister(self):
                return defer.Deferred()

        harness = self.harness
        harness.listeners.append(Listener(fail=True))
        done = fired(harness.drainer(remote=BrokenRemote(), registry=HangingRegistry()).drain())
        self.assertEqual(done, [])
        self.clock.advance(drain.STEP_TIMEOUT)
        [report] = done
        self.assertIsNone(report.routes_marked)
        self.assertFalse(report.unregistered)
        self.assertEqual(report.listeners, 3)

    def test_without_a_tracker_only_acks_are_waited_for(self):
        harness = self.harness
        device = harness.device("alice")
        harness.gateway.push("alice", b"x", flags=Flags.AUTO_ACK)
        done = fired(Drainer([], 1.0, **harness.node_parts()).drain())
        self.clock.advance(1.0)
        self.assertTrue(device.transport.disconnecting)
        lose(device)
        self.clock.advance(0.05)
        [report] = done
        self.assertEqual((report.timed_out, report.acks_left, report.refused_pushes), (True, 1, 0))
        self.assertFalse(report.unregistered)

    def test_bad_settings_refused(self):
        parts = self.harness.node_parts()
        for bad in (0, -1, float("inf"), "5", True, None):
            self.assertRaises(ValueError, Drainer, [], bad, **parts)
        self.assertRaises(ValueError, Drainer, [], 1, close_grace_s=0, **parts)


class PushTrackerTests(SynchronousTestCase):
    def setUp(self):
        self.harness = NodeHarness()
        self.tracker = self.harness.tracker

    def test_no_ack_push_done_at_once(self):
        self.harness.device("alice")
        self.harness.gateway.push("alice")
        self.assertEqual(self.tracker.in_flight, 0)
        [(_, cmd, _)] = self.harness.gateway.replies()
        self.assertEqual(cmd, Command.OK)

    def test_offline_user_done_at_once(self):
        self.harness.gateway.push("nobody")
        self.assertEqual(self.tracker.in_flight, 0)

    def test_silent_ack_timeout_still_ends(self):
        """
        A Java-style pusher (no REPORT_TIMEOUTS) is told nothing on an ack
        timeout; the push still stops counting.
        """
        self.harness.device("alice")
        self.harness.gateway.push("alice", flags=Flags.AUTO_ACK, timeout=1000)
        self.assertEqual(self.tracker.in_flight, 1)
        self.harness.clock.advance(1.0)
        self.assertEqual((self.tracker.in_flight, self.harness.gateway.replies()), (0, []))

    def test_push_parked_by_flow_control(self):
        harness = NodeHarness(load_config(None).replace(push=PushConfig(global_limit=1)))
        device = harness.device("alice")
        harness.gateway.push("alice", b"one")
        harness.gateway.push("alice", b"two", flags=Flags.AUTO_ACK, timeout=3000)
        self.assertEqual(harness.tracker.in_flight, 1)
        harness.clock.advance(1.0)  # the next window: written, waiting for its ack
        [(_, _, _, first), (_, _, _, second)] = device.received()
        self.assertEqual(PushMessage.decode(second).content, b"two")
        # Counted until its handle ends: here at its deadline, unacked.
        harness.clock.advance(1.9)
        self.assertEqual(harness.tracker.in_flight, 1)
        harness.clock.advance(0.1)
        self.assertEqual(harness.tracker.in_flight, 0)

    def test_parked_push_acked_ends_when_answered(self):
        harness = NodeHarness(load_config(None).replace(push=PushConfig(global_limit=1)))
        device = harness.device("alice")
        harness.gateway.push("alice", b"one")
        harness.gateway.push("alice", b"two", flags=Flags.AUTO_ACK)
        harness.clock.advance(1.0)
        device.received()
        [packet_id] = list(harness.node.acks._waiting)
        device.ack(packet_id)
        self.assertEqual(harness.tracker.in_flight, 0)

    def test_push_center_error_is_not_counted(self):
        class Exploding:
            def push(self, message, flags, reply):
                raise RuntimeError("bug")

        node = self.harness.node
        tracker = PushTracker(Exploding(), clock=node.clock, metrics=node.metrics)
        message = GatewayPushMessage("alice", 1, 1000, b"x")
        self.assertRaises(RuntimeError, tracker.push, message, 0, None)
        self.assertEqual(tracker.in_flight, 0)


# -- reload -------------------------------------------------------------------------


class ReloadTests(SynchronousTestCase):
    def setUp(self):
        self.harness = NodeHarness()
        self.node = self.harness.node
        self.base = self.node.config

    def test_push_settings_applied(self):
        new = self.base.replace(push=PushConfig(global_limit=7, global_duration=2000, global_max=9,
                                                tag_match="exact", default_timeout=1234))
        report = reload(self.node, new)
        self.assertEqual(self.node.config.push, new.push)
        flow = self.node.push_center.flow
        self.assertEqual((flow.limit, flow.duration, flow.total), (7, 2.0, 9))
        self.assertEqual(report.needs_restart, ())
        [applied] = report.applied
        self.assertTrue(applied.startswith("[push] global-limit, global-max, global-duration"))

    def test_default_timeout_used_by_next_push(self):
        self.harness.device("alice")
        reload(self.node, self.base.replace(push=PushConfig(default_timeout=500)))
        self.harness.gateway.push("alice", flags=Flags.AUTO_ACK, timeout=0)
        self.harness.clock.advance(0.5)
        self.assertEqual(len(self.node.acks), 0)  # the new default, not 3000 ms

    def test_bind_validator_replaced(self):
        new = self.base.replace(bind=BindConfig(validator="hmac", hmac_secret="s3cret"))
        report = reload(self.node, new)
        self.assertIsInstance(self.node.router_center.validator, HmacTokenValidator)
        self.assertEqual(report.applied, ("[bind] validator, hmac-secret",))
        device = Device(self.node, "dev-1")
        [refused] = device.bind("alice")
        self.assertEqual(ErrorMessage.decode(refused.body).reason, "bind failed")
        token = HmacTokenValidator("s3cret").token_for("bob")
        other = Device(self.node, "dev-2", port=40001)
        [ok] = other.bind("bob", data=token)
        self.assertEqual(OkMessage.decode(ok.body).data, "bind success")

    def test_unloadable_validator_keeps_the_old_one(self):
        new = self.base.replace(bind=BindConfig(validator="no.such.module:Validator"))
        report = reload(self.node, new)
        self.assertIsInstance(self.node.router_center.validator, AcceptAll)
        self.assertEqual(self.node.config.bind, self.base.bind)
        [error] = report.errors
        self.assertIn("[bind] validator", error)

    def test_restart_only_changes_named_not_applied(self):
        new = self.base.replace(
            net=NetConfig(connect_server_port=4000), core=CoreConfig(max_packet_size=20480),
            state_dir="/elsewhere",
        )
        report = reload(self.node, new)
        self.assertEqual(report.needs_restart, ("[core]", "[net]", "[mpush] state-dir"))
        self.assertEqual(report.applied, ())
        self.assertEqual(self.node.config, self.base)

    def test_limits_applied_where_read(self):
        new = self.base.replace(limits=LimitsConfig(max_connections=5, pre_handshake_timeout=1000))
        report = reload(self.node, new)
        self.assertEqual(self.node.config.limits, new.limits)
        self.assertEqual(self.node.limits.config, new.limits)
        self.assertEqual(report.applied, ("[limits] max-connections, pre-handshake-timeout",))

    def test_handshake_rate_applied_to_the_node_limits(self):
        self.assertTrue(self.node.limits.allow_rsa() and self.node.limits.allow_rsa())  # no rate yet
        new = self.base.replace(limits=LimitsConfig(handshake_rate=1, handshake_burst=1))
        report = reload(self.node, new)
        self.assertEqual(report.applied, ("[limits] handshake-rate, handshake-burst",))
        self.assertEqual(self.node.limits.config, new.limits)
        self.assertEqual((self.node.limits.allow_rsa(), self.node.limits.allow_rsa()), (True, False))

    def test_log_level(self):
        gate = LogLevelGate()
        publisher = LogPublisher()
        gate.install(publisher)
        self.addCleanup(gate.uninstall)
        report = reload(self.node, self.base, log_gate=gate, log_level=LogLevel.warn)
        self.assertEqual(gate.level, LogLevel.warn)
        self.assertEqual(report.applied, ("[mpush] log-level = warn",))
        again = reload(self.node, self.base, log_gate=gate, log_level=LogLevel.warn)
        self.assertEqual(again.applied, ())

    def test_log_level_without_gate(self):
        report = reload(self.node, self.base, log_level=LogLevel.info)
        self.assertEqual(report.errors, ("[mpush] log-level: this node has no log level gate",))

    def test_not_a_config(self):
        self.assertRaises(TypeError, reload, self.node, {"push": {}})


class ReloaderTests(SynchronousTestCase):
    def setUp(self):
        self.harness = NodeHarness()
        self.node = self.harness.node

    def write(self, text):
        path = self.mktemp()
        with open(path, "w") as config:
            config.write(text)
        return path

    def test_reads_the_file_again(self):
        path = self.write('[push]\ntag-match = "exact"\n[mpush]\nlog-level = "error"\n')
        gate = LogLevelGate()
        gate.install(LogPublisher())
        self.addCleanup(gate.uninstall)
        config = self.node.config

        def load():
            return load_config(path).replace(security=config.security)

        report = Reloader(self.node, load, log_gate=gate, log_level=lambda: read_log_level(path))()
        self.assertEqual(self.node.config.push.tag_match, "exact")
        self.assertEqual(gate.level, LogLevel.error)
        self.assertEqual(report.errors, ())

    def test_bad_file_keeps_everything(self):
        path = self.write("[core]\nmax-packet-size = \"lots\"\n")
        before = self.node.config
        self.assertIsNone(Reloader(self.node, lambda: load_config(path))())
        self.assertIs(self.node.config, before)

    def test_bad_log_level_keeps_everything(self):
        path = self.write('[mpush]\nlog-level = "loud"\n')
        before = self.node.config
        reloader = Reloader(self.node, lambda: before, log_gate=LogLevelGate(), log_level=lambda: read_log_level(path))
        self.assertIsNone(reloader())

    def test_read_log_level(self):
        self.assertEqual(read_log_level(None), LogLevel.info)
        self.assertEqual(read_log_level(self.write("[core]\n")), LogLevel.info)
        self.assertEqual(read_log_level(self.write('[mpush]\nlog-level = "WARN"\n')), LogLevel.warn)
        self.assertRaises(LogLevelError, read_log_level, self.write("[mpush]\nlog-level = 3\n"))


class LogLevelTests(SynchronousTestCase):
    def test_parse(self):
        for name, level in (("debug", LogLevel.debug), ("Trace", LogLevel.debug), (" info ", LogLevel.info),
                            ("warning", LogLevel.warn), ("ERROR", LogLevel.error), ("fatal", LogLevel.critical)):
            self.assertEqual(parse_log_level(name), level)
        for bad in ("", "verbose", None, 2):
            self.assertRaises(LogLevelError, parse_log_level, bad)

    def test_gate_filters_and_moves_back(self):
        publisher = LogPublisher()
        seen = []
        publisher.addObserver(seen.append)
        gate = LogLevelGate(LogLevel.info)
        gate.install(publisher)
        gate.install(publisher)  # once only
        publisher({"log_level": LogLevel.debug, "n": 1})
        publisher({"log_level": LogLevel.info, "n": 2})
        publisher({"n": 3})  # no level: passes
        gate.set_level(LogLevel.error)
        publisher({"log_level": LogLevel.warn, "n": 4})
        publisher({"log_level": LogLevel.critical, "n": 5})
        self.assertEqual([event["n"] for event in seen], [2, 3, 5])
        gate.uninstall()
        self.assertFalse(gate.installed)
        publisher({"log_level": LogLevel.debug, "n": 6})
        self.assertEqual(seen[-1]["n"], 6)

    def test_hot_paths_learn_whether_debug_lines_are_wanted(self):
        """
        Handshakes and fast connects build their debug line only when the
        gate would keep it (mpush.debug_log); without a gate, always.
        """
        from mpush import debug_log

        self.addCleanup(debug_log.set_wanted, debug_log.wanted())
        gate = LogLevelGate(LogLevel.info)
        self.assertTrue(debug_log.wanted())
        gate.install(LogPublisher())
        self.assertFalse(debug_log.wanted())
        gate.set_level(LogLevel.debug)
        self.assertTrue(debug_log.wanted())
        gate.set_level(LogLevel.warn)
        self.assertFalse(debug_log.wanted())
        gate.uninstall()
        self.assertTrue(debug_log.wanted())

    def test_gate_refuses_what_it_cannot_filter(self):
        gate = LogLevelGate()
        self.assertRaises(LogLevelError, gate.install, object())
        self.assertRaises(LogLevelError, gate.set_level, "debug")


class FakeReactor:
    def __init__(self):
        self.when_running = []
        self.from_thread = []
        self.stops = 0
        self.running = True

    def callWhenRunning(self, f, *args):
        self.when_running.append((f, args))

    def callFromThread(self, f, *args):
        self.from_thread.append((f, args))

    def stop(self):
        if not self.running:
            raise ReactorNotRunning()
        self.running = False
        self.stops += 1


class SignalTests(TestCase):
    timeout = 20

    @defer.inlineCallbacks
    def test_sighup_runs_the_reload_in_the_reactor(self):
        calls = []
        installed = install_sighup(reactor, lambda: calls.append("reloaded"))
        self.addCleanup(installed.uninstall)
        os.kill(os.getpid(), signal.SIGHUP)
        yield wait_until(lambda: calls, timeout=10)
        self.assertEqual(calls, ["reloaded"])

    @defer.inlineCallbacks
    def test_failing_reload_is_logged(self):
        def broken():
            raise RuntimeError("reload bug")

        installed = install_sighup(reactor, broken)
        self.addCleanup(installed.uninstall)
        os.kill(os.getpid(), signal.SIGHUP)
        yield wait_until(lambda: self.flushLoggedErrors(RuntimeError), timeout=10)
        installed.uninstall()
        self.assertNotEqual(signal.getsignal(signal.SIGHUP), installed.handler)

    def test_sigterm_stops_the_reactor_once(self):
        fake = FakeReactor()
        installed = install_sigterm(fake)
        self.addCleanup(installed.uninstall)
        [(install, args)] = fake.when_running
        install(*args)  # as the reactor does once it runs
        self.assertIs(signal.getsignal(signal.SIGTERM), installed.handler)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        self.assertEqual(len(fake.from_thread), 2)
        for f, args in fake.from_thread:
            f(*args)
        self.assertEqual(fake.stops, 1)  # the second SIGTERM finds it stopping
        installed.uninstall()
        self.assertIsNot(signal.getsignal(signal.SIGTERM), installed.handler)

    def test_signals_withdrawn_before_the_reactor_runs_stay_out(self):
        fake = FakeReactor()
        before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
        signals = ProcessSignals(fake, lambda: None)
        signals.install()
        self.assertTrue(signals.installed)
        self.assertIsNot(signal.getsignal(signal.SIGHUP), before[1])
        signals.uninstall()
        [(install, args)] = fake.when_running
        install(*args)  # the reactor starts after the service has stopped
        self.assertEqual((signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)), before)
        self.assertFalse(signals.installed)


def handlers():
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)


class NodeServiceSignalTests(TestCase):
    """
    C{twistd mpush}'s service installs its signal handlers when it starts,
    not when it is built, and gives the process's back when it has stopped.
    """

    timeout = 30

    def make_service(self):
        options = tap.Options()
        options.parseOptions([
            "--state-dir", self.mktemp(), "--connect-port", str(free_port()), "--gateway-port", "0",
            "--admin-port", "0", "--http-port", "0",
        ])
        return tap.makeService(options)

    def test_building_installs_none(self):
        before = handlers()
        top = self.make_service()
        self.assertEqual(handlers(), before)
        self.assertFalse(top.signals.installed)

    @defer.inlineCallbacks
    def test_start_installs_and_stop_removes(self):
        yield task.deferLater(reactor, 0, lambda: None)  # the reactor runs, its handlers in place
        before = handlers()
        top = self.make_service()
        threshold = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *threshold)
        self.addCleanup(gc.unfreeze)  # the node freezes what exists at start
        self.addCleanup(top.log_gate.uninstall)
        top.privilegedStartService()
        top.startService()
        stopping = []

        def stop():
            if not stopping:
                stopping.append(top.stopService())
            return stopping[0]

        self.addCleanup(stop)
        # SIGTERM's goes in once the reactor runs, after the reactor's own.
        yield task.deferLater(reactor, 0, lambda: None)
        self.assertTrue(top.signals.installed)
        term, hup = handlers()
        self.assertNotIn(term, before)
        self.assertNotIn(hup, before)
        yield stop()
        self.assertFalse(top.signals.installed)
        self.assertEqual(handlers(), before)


# -- real processes -----------------------------------------------------------------


class DrainingNode(NodeProcess):
    """
    A node process that drains on SIGTERM, started and stopped without
    blocking the reactor (its devices and pushers live in this process).
    """

    def _listening(self):
        for port in (self.port, self.gateway_port, self.http_port):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
        return True

    @defer.inlineCallbacks
    def spawn(self, timeout=30.0):
        self.process = subprocess.Popen(
            self.command(), cwd=self.directory, env=node_environment(),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )

        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"node exited with {self.process.returncode}: {self.log()}")
            return self._listening()

        yield wait_until(ready, timeout=timeout, what="the node listening")
        return self

    @defer.inlineCallbacks
    def terminate(self, timeout=30.0):
        """
        SIGTERM, and the exit status once it has exited.
        """
        self.process.send_signal(signal.SIGTERM)
        yield wait_until(lambda: self.process.poll() is not None, timeout=timeout, what="the node exiting")
        self.process.stdout.close()
        return self.process.returncode


class MovingDevice:
    """
    A device that, when its node closes the connection, reconnects to the
    next node of its list with its stored session (a fast connect), as the
    Java client does with its allot list.
    """

    def __init__(self, case, user_id, nodes):
        self.case = case
        self.user_id = user_id
        self.nodes = nodes
        self.session_file = case.session_path()
        self.received = []
        self.client = None
        self.at = None
        self.moves = []
        self.stopping = False

    @defer.inlineCallbacks
    def connect(self, index):
        node = self.nodes[index]
        client = yield connect_client(
            client_config(node.port, self.user_id, self.session_file), reactor,
            prepare=lambda protocol: setattr(protocol, "on_push", self._on_push),
        )
        self.case.addCleanup(self._close, client)
        client.on_close = self._on_close
        self.client, self.at = client, index
        return client

    def _close(self, client):
        self.stopping = True
        return client.close()

    def _on_push(self, content, session_id, flags):
        self.received.append(content.decode())

    def _on_close(self, reason):
        if not self.stopping:
            defer.ensureDeferred(self._move())

    async def _move(self):
        target = (self.at + 1) % len(self.nodes)
        for _ in range(100):
            try:
                client = await self.connect(target)
            except ClientError:
                await sleep(0.1)
                continue
            self.moves.append((target, client.resumed))
            return

    def stop(self):
        return self._close(self.client)


class ProcessTests(TestCase):
    timeout = 240

    def setUp(self):
        self.redis = start_redis_server(self)

    def session_path(self):
        return os.path.abspath(self.mktemp())

    def start_node(self, extra=""):
        node = DrainingNode(node_config(self.redis.port, extra=extra))
        self.addCleanup(node.stop)
        return node

    def redis_pusher(self):
        pusher = PushClient(reactor, redis_url=self.redis.url, timeout=5.0)
        self.addCleanup(pusher.close)
        return pusher

    @defer.inlineCallbacks
    def test_sigterm_drains_and_exits_zero(self):
        node = yield self.start_node().spawn()
        device = MovingDevice(self, "gina", [node])
        device.stopping = True  # no other node to move to
        client = yield device.connect(0)
        pusher = self.redis_pusher()
        [before] = yield pusher.push("gina", b"before", ack=AckModel.AUTO_ACK)
        self.assertIs(before.status, PushStatus.SUCCESS)
        closed = defer.Deferred()
        client.on_close = lambda reason: closed.callback(None)
        status = yield node.terminate()
        self.assertEqual(status, 0, node.log())
        yield closed
        log = node.log()
        for line in ("drain: no longer accepting on 4 listener(s); 1 client connection(s)",
                     "drain: closed 1 client connection(s), 0 aborted",
                     "drain: unregistered from the node registry",
                     "drain: done in"):
            self.assertIn(line, log)
        [after] = yield pusher.push("gina", b"after")
        self.assertEqual((after.status, after.reason), (PushStatus.OFFLINE, "route offline"))
        registered = yield pusher._registry.is_alive("127.0.0.1", node.gateway_port)
        self.assertFalse(registered)

    @defer.inlineCallbacks
    def test_sighup_reloads_what_it_can(self):
        node = yield self.start_node().spawn()
        device = MovingDevice(self, "hank", [node])
        device.stopping = True
        yield device.connect(0)
        with open(node.config_path, "a") as config:
            config.write(
                '[bind]\nvalidator = "hmac"\nhmac-secret = "s3cret"\n'
                '[core]\nmax-packet-size = "20k"\n'
                '[mpush]\nlog-level = "debug"\n'
            )
        node.process.send_signal(signal.SIGHUP)
        yield wait_until(lambda: "reload: applied" in node.log(), what="the reload")
        log = node.log()
        self.assertIn("reload: applied [bind] validator, hmac-secret; [mpush] log-level = debug", log)
        self.assertIn("reload: [core] changed; it takes effect after a restart", log)
        self.assertIsNone(node.process.poll())  # SIGHUP does not kill it
        refused = connect_client(client_config(node.port, "ivan"), reactor)
        error = yield self.assertFailure(refused, ClientError)
        self.assertIn("bind failed", str(error))

    @defer.inlineCallbacks
    def test_restart_under_load_loses_nothing(self):
        """
        Two nodes, devices on both, a pusher sending continuously through
        node B's HTTP API with AUTO_ACK and an offline TTL; node A is
        restarted in the middle.  Every message ends acked or reported;
        every stored one reaches its device after the reconnect; nothing is
        received twice, nothing lost.
        """
        node_a = yield self.start_node().spawn()
        node_b = yield self.start_node().spawn()
        devices = {}
        for i in range(4):
            devices[f"ua{i}"] = MovingDevice(self, f"ua{i}", [node_a, node_b])
            yield devices[f"ua{i}"].connect(0)
        for i in range(2):
            devices[f"ub{i}"] = MovingDevice(self, f"ub{i}", [node_b, node_a])
            yield devices[f"ub{i}"].connect(0)
        outcomes = {}  # content -> list of statuses
        message_ids = {}  # content -> the API's message id (the offline store's)
        by_user = collections.defaultdict(list)
        pushing = {"on": True}

        async def push_loop(user):
            seq = 0
            while pushing["on"]:
                seq += 1
                content = f"{user}:{seq}"
                by_user[user].append(content)
                try:
                    code, body = await http_json(node_b.http_port, "/v1/push", {
                        "users": [user], "content": content, "ack": "auto",
                        "offline_ttl": 120, "timeout_ms": 3000,
                    }, timeout=20)
                    outcomes[content] = [result["status"] for result in body["results"]] if code == 200 else [f"http {code}"]
                    message_ids[content] = body.get("message_id") if code == 200 else None
                except Exception as error:
                    outcomes[content] = [f"error: {error}"]
                await sleep(0.01)

        loops = [defer.ensureDeferred(push_loop(user)) for user in devices]

        def successes(after=0):
            return lambda: all(
                sum(outcomes.get(c) == ["success"] for c in by_user[user][after:]) >= 3 for user in devices
            )

        yield wait_until(successes(), timeout=30, what="pushes flowing")
        status = yield node_a.terminate()
        self.assertEqual(status, 0, node_a.log())
        moved = [devices[f"ua{i}"] for i in range(4)]
        yield wait_until(lambda: all(device.moves for device in moved), timeout=30, what="devices moved to B")
        yield node_a.spawn()
        marks = {user: len(by_user[user]) for user in devices}
        yield wait_until(
            lambda: all(sum(outcomes.get(c) == ["success"] for c in by_user[u][marks[u]:]) >= 3 for u in devices),
            timeout=30, what="pushes flowing after the restart",
        )
        pushing["on"] = False
        yield defer.gatherResults(loops)

        sent = [content for user in devices for content in by_user[user]]
        reported = {"failure", "timeout", "ack_timeout"}  # not confirmed: delivered at most once
        for content in sent:
            self.assertEqual(len(outcomes[content]), 1, (content, outcomes[content]))
            self.assertIn(outcomes[content][0], {"success", "stored_offline"} | reported, content)
        stored = {c for c in sent if outcomes[c] == ["stored_offline"]}

        def seen():
            return collections.Counter(c for device in devices.values() for c in device.received)

        # Stored ones come with the bind after the move, including those
        # stored while that bind ran (the API nudges the user's node).
        yield wait_until(lambda: stored <= set(seen()), timeout=30,
                         what="every stored message delivered on the bind after the move")
        yield sleep(0.5)  # anything delivered twice would come now
        counts = seen()
        for content in sent:
            status = outcomes[content][0]
            expected = "once" if status in ("success", "stored_offline") else "at most once"
            got = counts[content]
            self.assertTrue(got == 1 if expected == "once" else got <= 1,
                            f"{content} reported {status} was received {got} times, expected {expected}")
        for user, device in devices.items():
            self.assertTrue(set(device.received) <= set(by_user[user]), f"{user} got messages never sent to it")
        self.assertTrue(all(device.moves[0] == (1, True) for device in moved))  # fast connects to B
        log = node_a.log()
        self.assertIn("drain: done in", log)
        self.assertNotIn("Traceback", log)
        for device in devices.values():
            yield device.stop()


class StoredWhileRebindingTests(TestCase):
    """
    A push that finds its user offline is stored by the API after its route
    lookup; if the user binds in between, that bind's claim runs before the
    store.  The API then reads the routes again and nudges the user's node,
    so the message comes on this bind, not the next.  The graceful-restart
    test meets this when a device moves; here it is made to happen every
    time.
    """

    timeout = 30

    @defer.inlineCallbacks
    def stored_while_binding(self, pushing_node, device_node):
        """
        Push to olga through C{pushing_node}'s API, hold its store until
        olga has bound on C{device_node}, then let it store.
        """
        from mpush.node_api import PushRequest

        store = pushing_node.backends.offline
        add = store.add
        adding, release = defer.Deferred(), defer.Deferred()

        def add_when_released(user_id, message):
            adding.callback(None)
            return release.addCallback(lambda _: add(user_id, message))

        store.add = add_when_released
        pushing = pushing_node.api.push(PushRequest(users=("olga",), content=b"late", ack="auto", offline_ttl=60))
        yield adding  # the push found olga offline
        olga = yield connect_client(client_config(device_node.port, "olga"), reactor)
        self.addCleanup(olga.close)
        release.callback(None)  # stored after olga's bind claimed her queue
        outcome = yield pushing
        self.assertEqual([r["status"] for r in outcome.results], ["stored_offline"])
        received = yield olga.wait_for_push(timeout=DEVICE_TIMEOUT)
        self.assertEqual(received.content, b"late")
        # Acked (AUTO_ACK) and so removed: nothing waits for the next bind.
        yield wait_until(lambda: store.count("olga").addCallback(lambda n: n == 0), what="the acked message removed")

    def test_stored_while_the_user_rebinds(self):
        from tests.loopback_support import LoopbackNode

        server = LoopbackNode(self)
        return self.stored_while_binding(server, server)

    @defer.inlineCallbacks
    def test_routes_unreadable_after_storing(self):
        """
        The second lookup failing changes nothing for the pusher: the
        message is stored and reported so; the next bind delivers it.
        """
        from mpush.node_api import PushRequest
        from mpush.router.interfaces import RouterUnavailable

        from tests.loopback_support import LoopbackNode

        server = LoopbackNode(self)
        remote = server.backends.remote
        lookup = remote.lookup
        lookups = []

        def after_storing(user_id):
            # The push reads routes with lookup_many; this is the look again
            # after storing.
            lookups.append(user_id)
            return defer.fail(RouterUnavailable("routes down"))

        remote.lookup = after_storing
        outcome = yield server.api.push(PushRequest(users=("olga",), content=b"kept", ack="auto", offline_ttl=60))
        self.assertEqual(([r["status"] for r in outcome.results], lookups), (["stored_offline"], ["olga"]))
        remote.lookup = lookup
        olga = yield connect_client(client_config(server.port, "olga"), reactor)
        self.addCleanup(olga.close)
        received = yield olga.wait_for_push(timeout=DEVICE_TIMEOUT)
        self.assertEqual(received.content, b"kept")

    @defer.inlineCallbacks
    def test_stored_while_the_user_binds_on_another_node(self):
        """
        The user's node is not the pusher's: the nudge goes through Redis.
        """
        from mpush.config import RedisConfig

        from tests.loopback_support import LoopbackNode

        redis = start_redis_server(self)
        config = load_config(None).replace(redis=RedisConfig(nodes=(f"127.0.0.1:{redis.port}",)))
        pushing_node, device_node = LoopbackNode(self, config=config), LoopbackNode(self, config=config)
        yield device_node.nudges_heard
        yield self.stored_while_binding(pushing_node, device_node)
