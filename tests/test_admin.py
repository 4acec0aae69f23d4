"""
The admin console (spec 16): greeting, parsing, every command, bad input,
the order of replies behind a slow command, and the bound on a hung one;
over StringTransport with a fake clock, then once over real loopback TCP.
"""

import dataclasses
import json
import re
from datetime import timedelta, timezone

from twisted.internet import defer, protocol, reactor, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from mpush import tap
from mpush.node_api import NodeAPI, PushOutcome, PushRejected, PushRequest
from mpush.protocol.routing import ClientLocation
from mpush.server.ops.admin import (
    HELP,
    MAX_LINE_LENGTH,
    AdminFactory,
    AdminProtocol,
    format_java_date,
    format_local_date_time,
)

from tests.server_support import demo_config

#: Mon Sep 21 14:13:20 UTC 2026.
NOW = 1_790_000_000.0
#: Two and a half hours before NOW.
STARTED_MS = 1_789_991_000_500
END = b"\r\n\r\n"


class FakeNodeAPI:
    """
    The NodeAPI contract (mpush/node_api.py) with canned answers; the
    Deferred-returning methods can be held open with C{hold}.
    """

    def __init__(self):
        self.started_ms = STARTED_MS
        self.connections = 7
        self.users = 5
        self.online = 42
        self.route_table = {}
        self.pushes = []
        self.kicks = []
        self.push_results = None
        self.error = {}
        self.held = {}
        self.call_waiters = {}
        self.config = {"core": {"max-packet-size": 10240, "compress-threshold": 1024},
                       "security": {"private-key": "***"}, "net": {"local-ip": None}}

    def hold(self, name):
        """Make the next call of C{name} return a Deferred the test fires."""
        self.held[name] = []

    def called(self, name):
        """A Deferred that fires when a held C{name} has been called."""
        if self.held.get(name):
            return defer.succeed(None)
        waiter = defer.Deferred()
        self.call_waiters.setdefault(name, []).append(waiter)
        return waiter

    def _answer(self, name, compute):
        if name in self.held:
            waiting = defer.Deferred()
            self.held[name].append(waiting)
            for waiter in self.call_waiters.pop(name, []):
                waiter.callback(None)
            return waiting
        if name in self.error:
            return defer.fail(self.error[name])
        return defer.succeed(compute())

    def connection_count(self):
        if "connection_count" in self.error:
            raise self.error["connection_count"]
        return self.connections

    def local_users(self):
        return self.users

    def online_count(self):
        return self._answer("online_count", lambda: self.online)

    def routes(self, user_id):
        return self._answer("routes", lambda: dict(self.route_table.get(user_id, {})))

    def push(self, request):
        self.pushes.append(request)

        def outcome():
            results = self.push_results
            if results is None:
                results = [{"user": user, "client_type": 1, "status": "success", "node": "10.0.0.5:3001",
                            "reason": None, "time_points": [["start", 1]]} for user in request.users]
            return PushOutcome("f" * 32, results)

        return self._answer("push", outcome)

    def kick(self, user_id, client_type=None, close=True):
        self.kicks.append((user_id, client_type) if close else (user_id, client_type, "open"))
        return self._answer("kick", lambda: 2 if client_type is None else 1)

    def stats(self):
        if "stats" in self.error:
            raise self.error["stats"]
        return {"node": "10.0.0.5:3001", "connections": self.connections, "local_users": self.users,
                "uptime_s": 9000, "pushes": {"success": 3, "failure": 0}, "tasks": 1}

    def task_stats(self, task_id):
        return None

    def allot(self):
        return defer.succeed(["10.0.0.5:3000"])

    def config_view(self):
        return self.config

    def config_value(self, dotted):
        value = self.config
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(dotted)
            value = value[part]
        return value


ONLINE_PC = ClientLocation(host="10.0.0.5", port=3001, device_id="pc-1", os_name="windows",
                           client_version="1.0", conn_id="c0ffee01")
OFFLINE_PHONE = ClientLocation(host="10.0.0.6", port=3001, device_id="phone-1", os_name="android",
                               client_version="2.0", conn_id=None)


class ConsoleTestsMixin:
    """A console session over StringTransport with a fake clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(NOW)
        self.api = FakeNodeAPI()
        self.factory = AdminFactory(self.api, self.clock, local_ip="10.0.0.5",
                                    command_timeout=10, tz=timezone.utc)
        self.console = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 50000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.console.makeConnection(self.transport)
        self.greeting = self.transport.value()
        self.transport.clear()

    def send(self, data):
        self.console.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        return out

    def ask(self, line):
        """The reply text to one line, checked to end a reply properly."""
        out = self.send(line.encode("utf-8") + b"\r\n")
        self.assertTrue(out.endswith(END), out)
        return out[: -len(END)].decode("utf-8")


class GreetingTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_greeting(self):
        """Three lines: local IP, start time and whole hours running, the time now."""
        self.assertEqual(
            self.greeting,
            b"Welcome to MPush Console [10.0.0.5]!\r\n"
            b"since 2026-09-21T11:43:20.500 has running 2(h)\r\n\r\n"
            b"It is Mon Sep 21 14:13:20 UTC 2026 now.\r\n\r\n",
        )

    def test_hours_from_clock(self):
        """The running hours and the time now follow the injected clock."""
        self.clock.advance(3600)
        console = self.factory.buildProtocol(None)
        transport = StringTransport()
        console.makeConnection(transport)
        text = transport.value().decode()
        self.assertIn("has running 3(h)", text)
        self.assertIn("It is Mon Sep 21 15:13:20 UTC 2026 now.", text)

    def test_local_ip_from_config(self):
        """The console twistd mpush builds greets with [net] local-ip."""
        config = demo_config()
        config = config.replace(net=dataclasses.replace(config.net, local_ip="10.9.8.7"))
        node, backends, info = tap.build_node(config, self.clock)
        api = NodeAPI(node, backends, info, self.clock, offline=backends.offline)
        listeners = tap.build_listeners(node, api, info, tap.track_pushes(node), self.clock)
        [factory] = [
            listener.factory for listener in listeners.services
            if isinstance(getattr(listener, "factory", None), AdminFactory)
        ]
        console = factory.buildProtocol(None)
        transport = StringTransport()
        console.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"Welcome to MPush Console [10.9.8.7]!\r\n"))

    def test_bad_timeout(self):
        """A console without a bound on commands is refused."""
        for timeout in (0, -1):
            self.assertRaises(ValueError, AdminFactory, self.api, self.clock, local_ip="x", command_timeout=timeout)


class JavaTimeFormatTests(SynchronousTestCase):
    def test_local_date_time(self):
        """LocalDateTime.toString(): seconds and milliseconds only when not zero."""
        self.assertEqual(format_local_date_time(1_789_990_980_000, timezone.utc), "2026-09-21T11:43")
        self.assertEqual(format_local_date_time(1_789_990_985_000, timezone.utc), "2026-09-21T11:43:05")
        self.assertEqual(format_local_date_time(1_789_990_980_007, timezone.utc), "2026-09-21T11:43:00.007")

    def test_java_date_in_zone(self):
        """Date.toString(): English names, two-digit day, the zone's name."""
        zone = timezone(timedelta(hours=8), "CST")
        self.assertEqual(format_java_date(1_788_000_000, zone), "Sat Aug 29 18:40:00 CST 2026")


class ParsingTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_parse(self):
        """The option is trimmed and lower-cased; the argument is the rest of the line."""
        self.assertEqual(AdminProtocol.parse("COUNT conn"), ("count", "conn"))
        self.assertEqual(AdminProtocol.parse("push u1 hello big world"), ("push", "u1 hello big world"))
        self.assertEqual(AdminProtocol.parse("stats"), ("stats", None))
        self.assertEqual(AdminProtocol.parse(""), ("", None))

    def test_empty_line_is_help(self):
        self.assertEqual(self.ask(""), HELP)

    def test_help(self):
        self.assertEqual(self.ask("help"), HELP)
        self.assertEqual(self.ask("HeLp"), HELP)

    def test_bare_newline(self):
        """A line may end with a bare \\n as well as \\r\\n."""
        self.assertEqual(self.send(b"count conn\n"), b"7" + END)

    def test_several_lines_in_one_read(self):
        out = self.send(b"count conn\r\ncount users\ncount online\r\n")
        self.assertEqual(out, b"7" + END + b"5" + END + b"42" + END)

    def test_line_split_across_reads(self):
        self.assertEqual(self.send(b"count c"), b"")
        self.assertEqual(self.send(b"onn\r"), b"")
        self.assertEqual(self.send(b"\n"), b"7" + END)

    def test_help_lists_exactly_what_works(self):
        """Every command help lists answers something other than 'unsupported option'."""
        listed = []
        for line in HELP.split("\r\n")[2:]:
            syntax = re.split(r"\s{2,}", line)[0]
            listed.append(syntax)
            command = re.sub(r"<userId>", "u1", syntax)
            command = re.sub(r"<text>", "hi", command)
            command = re.sub(r"<key>", "core.max-packet-size", command)
            command = command.replace(" [clientType]", "")
            if command == "quit":
                continue
            self.assertNotEqual(self.ask(command), "unsupported option", command)
        self.assertEqual(
            sorted({syntax.split()[0] for syntax in listed}),
            ["conf", "count", "help", "kick", "push", "quit", "route", "stats"],
        )

    def test_unknown_option(self):
        self.assertEqual(self.ask("flush all"), "unsupported option")

    def test_no_shutdown_no_profile(self):
        """The remote kill switch and the profiler are not there."""
        self.assertEqual(self.ask("shutdown"), "unsupported option")
        self.assertEqual(self.ask("profile 1"), "unsupported option")
        self.assertNotIn("shutdown", HELP)
        self.assertFalse(self.transport.disconnecting)

    def test_not_utf8(self):
        """Bytes that are not UTF-8 get an error; the session goes on."""
        self.assertEqual(self.ask_bytes(b"route \xff\xfe"), "input is not UTF-8 text")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.ask("count conn"), "7")

    def ask_bytes(self, line):
        out = self.send(line + b"\r\n")
        self.assertTrue(out.endswith(END), out)
        return out[: -len(END)].decode("utf-8")


class LineLengthTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_longest_line(self):
        """8192 bytes before \\r\\n is still a line."""
        self.assertEqual(self.send(b"x" * MAX_LINE_LENGTH + b"\r\n"), b"unsupported option" + END)
        self.assertFalse(self.transport.disconnecting)

    def test_longest_line_bare_newline(self):
        self.assertEqual(self.send(b"x" * MAX_LINE_LENGTH + b"\n"), b"unsupported option" + END)
        self.assertFalse(self.transport.disconnecting)

    def test_line_too_long(self):
        """One byte more: a clear error, and the connection closes."""
        out = self.send(b"x" * (MAX_LINE_LENGTH + 1) + b"\r\ncount conn\r\n")
        self.assertEqual(out, b"line too long: more than 8192 bytes, closing" + END)
        self.assertTrue(self.transport.disconnecting)

    def test_line_too_long_bare_newline(self):
        """8193 bytes before a bare \n is one byte too many as well."""
        out = self.send(b"x" * (MAX_LINE_LENGTH + 1) + b"\n")
        self.assertEqual(out, b"line too long: more than 8192 bytes, closing" + END)
        self.assertTrue(self.transport.disconnecting)

    def test_unterminated_line_too_long(self):
        """A line that never ends is cut off before it fills memory."""
        self.assertEqual(self.send(b"y" * 8000), b"")
        out = self.send(b"y" * 1000)
        self.assertEqual(out, b"line too long: more than 8192 bytes, closing" + END)
        self.assertTrue(self.transport.disconnecting)


class CommandTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_quit(self):
        """'have a good day!', then close; later lines are not run."""
        out = self.send(b"quit\r\ncount conn\r\n")
        self.assertEqual(out, b"have a good day!" + END)
        self.assertTrue(self.transport.disconnecting)

    def test_count(self):
        self.assertEqual(self.ask("count conn"), "7")
        self.assertEqual(self.ask("count online"), "42")
        self.assertEqual(self.ask("count users"), "5")
        self.assertEqual(self.ask("count  users "), "5")

    def test_count_other(self):
        self.assertEqual(self.ask("count sheep"), "[sheep] unsupported, try help.")
        self.assertEqual(self.ask("count CONN"), "[CONN] unsupported, try help.")

    def test_count_nothing(self):
        self.assertEqual(self.ask("count"), "please input what to count: conn, online or users")

    def test_route_missing_user(self):
        self.assertEqual(self.ask("route"), "please input userId")
        self.assertEqual(self.ask("route   "), "please input userId")

    def test_route_offline(self):
        self.assertEqual(self.ask("route nobody"), "user [nobody] offline now.")

    def test_route(self):
        """The routes as a JSON array, by client type, online or not."""
        self.api.route_table["u1"] = {2: ONLINE_PC, 1: OFFLINE_PHONE}
        routes = json.loads(self.ask("route u1"))
        self.assertEqual(
            routes,
            [
                {"host": "10.0.0.6", "port": 3001, "deviceId": "phone-1", "osName": "android",
                 "clientVersion": "2.0", "connId": None, "clientType": 1, "online": False},
                {"host": "10.0.0.5", "port": 3001, "deviceId": "pc-1", "osName": "windows",
                 "clientVersion": "1.0", "connId": "c0ffee01", "clientType": 2, "online": True},
            ],
        )

    def test_route_unicode_line_separator_kept(self):
        """A U+2028 inside a value is not turned into a line break."""
        self.api.route_table["u1"] = {2: ClientLocation("10.0.0.5", 3001, "pc\u2028x", "windows", "1", "c1")}
        self.assertEqual(json.loads(self.ask("route u1"))[0]["deviceId"], "pc\u2028x")

    def test_push(self):
        """The rest of the line is the text, spaces and all, as UTF-8, no ack."""
        reply = self.ask("push u1 hello big wörld ")
        self.assertEqual(self.api.pushes, [PushRequest(users=("u1",), content="hello big wörld ".encode(), ack="none")])
        self.assertEqual(reply, f"push [{'f' * 32}]:\r\nu1 clientType=1 success node=10.0.0.5:3001")

    def test_push_statuses(self):
        self.api.push_results = [
            {"user": "u1", "client_type": 1, "status": "offline", "node": None, "reason": None, "time_points": []},
            {"user": "u1", "client_type": 2, "status": "failure", "node": "10.0.0.6:3001",
             "reason": "write failed", "time_points": []},
        ]
        self.assertEqual(
            self.ask("push u1 hi"),
            f"push [{'f' * 32}]:\r\nu1 clientType=1 offline\r\n"
            "u1 clientType=2 failure node=10.0.0.6:3001 reason=write failed",
        )

    def test_push_no_result(self):
        self.api.push_results = []
        self.assertEqual(self.ask("push u1 hi"), f"push [{'f' * 32}]:\r\nno result")

    def test_push_usage(self):
        """A push needs a user and a text."""
        for line in ("push", "push u1", "push u1 ", "push  "):
            self.assertEqual(self.ask(line), "please input userId and text: push <userId> <text>", line)
        self.assertEqual(self.api.pushes, [])

    def test_push_rejected(self):
        self.api.error["push"] = PushRejected("content too large")
        self.assertEqual(self.ask("push u1 hi"), "push rejected: content too large")
        self.assertFalse(self.transport.disconnecting)

    def test_kick(self):
        self.assertEqual(self.ask("kick u1"), "kicked 2 route(s) of user [u1].")
        self.assertEqual(self.ask("kick u1 2"), "kicked 1 route(s) of user [u1].")
        self.assertEqual(self.ask("kick u1 open"), "kicked 2 route(s) of user [u1].")
        self.assertEqual(self.ask("kick u1 2 open"), "kicked 1 route(s) of user [u1].")
        self.assertEqual(self.api.kicks, [("u1", None), ("u1", 2), ("u1", None, "open"), ("u1", 2, "open")])

    def test_kick_usage(self):
        self.assertEqual(self.ask("kick"), "please input userId: kick <userId> [clientType] [open]")
        self.assertEqual(self.ask("kick u1 pc"), "clientType must be an integer, not [pc]")
        self.assertEqual(self.ask("kick u1 1 2"), "too many arguments: kick <userId> [clientType] [open]")
        self.assertEqual(self.api.kicks, [])

    def test_conf(self):
        """The whole configuration, pretty JSON, CRLF line ends."""
        reply = self.ask("conf")
        self.assertEqual(json.loads(reply), self.api.config)
        self.assertIn('{\r\n  "core": {\r\n', reply)

    def test_conf_key(self):
        self.assertEqual(self.ask("conf core.max-packet-size"), "10240")
        self.assertEqual(json.loads(self.ask("conf core")), self.api.config["core"])
        self.assertEqual(self.ask("conf net.local-ip"), "null")

    def test_conf_unknown_key(self):
        self.assertEqual(self.ask("conf core.nope"), "key [core.nope] not find in config")
        self.assertEqual(self.ask("conf core.max-packet-size.deeper"),
                         "key [core.max-packet-size.deeper] not find in config")

    def test_stats(self):
        self.assertEqual(json.loads(self.ask("stats")), self.api.stats())


class ErrorTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_sync_error(self):
        """A command that raises answers with its message; logged; the session goes on."""
        self.api.error["stats"] = RuntimeError("counters are gone")
        self.assertEqual(self.ask("stats"), "RuntimeError: counters are gone")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.ask("count users"), "5")

    def test_error_without_message(self):
        self.api.error["connection_count"] = LookupError()
        self.assertEqual(self.ask("count conn"), "LookupError")
        self.assertEqual(len(self.flushLoggedErrors(LookupError)), 1)

    def test_async_error(self):
        """A failed Deferred answers with its message and no traceback."""
        self.api.error["routes"] = ConnectionError("redis is down")
        reply = self.ask("route u1")
        self.assertEqual(reply, "ConnectionError: redis is down")
        self.assertNotIn("Traceback", reply)
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)

    def test_held_error_then_next_command(self):
        self.api.hold("routes")
        self.assertEqual(self.send(b"route u1\r\ncount conn\r\n"), b"")
        self.api.held["routes"][0].errback(TimeoutError("redis did not answer"))
        self.assertEqual(self.send(b""), b"TimeoutError: redis did not answer" + END + b"7" + END)
        self.assertEqual(len(self.flushLoggedErrors(TimeoutError)), 1)


class OrderTests(ConsoleTestsMixin, SynchronousTestCase):
    def test_replies_in_order(self):
        """Lines behind a slow command wait; replies come in the order typed."""
        self.api.hold("routes")
        self.api.route_table["u1"] = {}
        out = self.send(b"route u1\r\ncount conn\r\nstats\r\nquit\r\n")
        self.assertEqual(out, b"")
        self.assertEqual(self.transport.producerState, "paused")
        self.assertEqual(len(self.api.held["routes"]), 1)
        self.api.held["routes"][0].callback({})
        out = self.transport.value().decode()
        replies = out.split("\r\n\r\n")
        self.assertEqual(replies[0], "user [u1] offline now.")
        self.assertEqual(replies[1], "7")
        self.assertEqual(json.loads(replies[2])["connections"], 7)
        self.assertEqual(replies[3], "have a good day!")
        self.assertTrue(self.transport.disconnecting)

    def test_two_slow_commands(self):
        self.api.hold("online_count")
        self.send(b"count online\r\ncount online\r\ncount users\r\n")
        self.assertEqual(len(self.api.held["online_count"]), 1)
        self.api.held["online_count"][0].callback(1)
        self.assertEqual(self.transport.value(), b"1" + END)
        self.assertEqual(len(self.api.held["online_count"]), 2)
        self.api.held["online_count"][1].callback(2)
        self.assertEqual(self.transport.value(), b"1" + END + b"2" + END + b"5" + END)
        self.assertEqual(self.transport.producerState, "producing")
        # Answered commands leave no timeout behind.
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_long_line_waits_its_turn(self):
        """A too-long line behind a slow command is answered after it."""
        self.api.hold("kick")
        self.send(b"kick u1\r\n" + b"z" * (MAX_LINE_LENGTH + 1) + b"\r\n")
        self.assertFalse(self.transport.disconnecting)
        self.api.held["kick"][0].callback(1)
        self.assertEqual(
            self.transport.value(),
            b"kicked 1 route(s) of user [u1]." + END + b"line too long: more than 8192 bytes, closing" + END,
        )
        self.assertTrue(self.transport.disconnecting)

    def test_hung_command_times_out(self):
        """A command that never answers is given up after the bound; the next runs."""
        self.api.hold("routes")
        self.send(b"route u1\r\ncount conn\r\n")
        self.clock.advance(9.9)
        self.assertEqual(self.transport.value(), b"")
        self.clock.advance(0.1)
        self.assertEqual(self.transport.value(), b"route: no answer within 10s" + END + b"7" + END)
        self.transport.clear()
        # The late answer is dropped; a late failure is only logged.
        self.api.held["routes"][0].errback(ConnectionError("late"))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(len(self.flushLoggedErrors(ConnectionError)), 1)
        self.assertEqual(self.ask("count users"), "5")

    def test_late_success_dropped(self):
        self.api.hold("routes")
        self.send(b"route u1\r\n")
        self.clock.advance(10)
        self.transport.clear()
        self.api.held["routes"][0].callback({1: ONLINE_PC})
        self.assertEqual(self.transport.value(), b"")

    def test_disconnect_while_waiting(self):
        """The answer of a command whose client left is not written; no timer is left."""
        self.api.hold("push")
        self.send(b"push u1 hi\r\ncount conn\r\n")
        self.console.connectionLost(None)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.api.held["push"][0].callback(PushOutcome("a" * 32, []))
        self.assertEqual(self.transport.value(), b"")


class ClientSession(protocol.Protocol):
    """A scripted operator: sends its lines at once, keeps all it reads."""

    def __init__(self, lines):
        self.lines = lines
        self.received = b""
        self.closed = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.lines)

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.closed.callback(self.received)


class RealTCPTests(TestCase):
    """The console on a loopback port with the real reactor."""

    timeout = 20

    def setUp(self):
        self.api = FakeNodeAPI()
        self.api.route_table["u1"] = {1: OFFLINE_PHONE}
        factory = AdminFactory(self.api, reactor, local_ip="127.0.0.1")
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def session(self, lines):
        session = ClientSession(lines)
        address = self.port.getHost()
        yield protocol.ClientCreator(reactor, lambda: session).connectTCP(address.host, address.port)
        return session

    @defer.inlineCallbacks
    def test_session(self):
        """Greeting, every command, an unknown one, an empty line, a slow one kept in order, quit."""
        self.api.hold("online_count")
        lines = (
            b"count online\r\n"  # slow: everything below waits for it
            b"\r\n"
            b"help\r\n"
            b"count conn\r\n"
            b"count users\r\n"
            b"count other\r\n"
            b"route\r\n"
            b"route u1\r\n"
            b"route nobody\r\n"
            b"push u2 hello there\r\n"
            b"kick u1 1\r\n"
            b"conf core.max-packet-size\r\n"
            b"conf missing.key\r\n"
            b"conf\r\n"
            b"stats\r\n"
            b"shutdown\r\n"
            b"quit\r\n"
            b"count conn\r\n"
        )
        session = yield self.session(lines)
        # Wait until the server is inside the slow command, then answer it.
        yield self.api.called("online_count")
        self.api.held["online_count"][0].callback(99)
        received = yield session.closed
        text = received.decode("utf-8")
        first, now, *replies = text.split("\r\n\r\n")
        welcome, since = first.split("\r\n")
        self.assertEqual(welcome, "Welcome to MPush Console [127.0.0.1]!")
        self.assertRegex(since, r"^since \d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d(\.\d{3})?)? has running \d+\(h\)$")
        self.assertRegex(now, r"^It is \w{3} \w{3} \d\d \d\d:\d\d:\d\d \S+ \d{4} now\.$")
        self.assertEqual(replies[-1], "")  # the text ends with the terminator
        replies = replies[:-1]
        self.assertEqual(replies[0], "99")
        self.assertEqual(replies[1], HELP)
        self.assertEqual(replies[2], HELP)
        self.assertEqual(replies[3:7], ["7", "5", "[other] unsupported, try help.", "please input userId"])
        self.assertEqual(json.loads(replies[7])[0]["deviceId"], "phone-1")
        self.assertEqual(replies[8], "user [nobody] offline now.")
        self.assertEqual(replies[9], f"push [{'f' * 32}]:\r\nu2 clientType=1 success node=10.0.0.5:3001")
        self.assertEqual(replies[10], "kicked 1 route(s) of user [u1].")
        self.assertEqual(replies[11:13], ["10240", "key [missing.key] not find in config"])
        self.assertEqual(json.loads(replies[13]), self.api.config)
        self.assertEqual(json.loads(replies[14])["local_users"], 5)
        self.assertEqual(replies[15:], ["unsupported option", "have a good day!"])
        self.assertEqual(self.api.pushes, [PushRequest(users=("u2",), content=b"hello there", ack="none")])
        self.assertEqual(self.api.kicks, [("u1", 1)])

    @defer.inlineCallbacks
    def test_long_line_closes(self):
        session = yield self.session(b"count conn\n" + b"q" * (MAX_LINE_LENGTH + 100) + b"\n")
        received = yield session.closed
        self.assertTrue(received.endswith(b"7" + END + b"line too long: more than 8192 bytes, closing" + END))


class RealNodeAPITests(TestCase):
    """The console over the real NodeAPI of a loopback node: the contract holds."""

    timeout = 20

    def setUp(self):
        from tests.loopback_support import LoopbackNode

        self.loopback = LoopbackNode(self)
        factory = AdminFactory(self.loopback.api, reactor, local_ip="127.0.0.1")
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)

    @defer.inlineCallbacks
    def test_commands(self):
        session = ClientSession(
            b"count conn\ncount users\ncount online\nroute nobody\nkick nobody\n"
            b"push nobody hi there\nconf security.private-key\nconf core.max-packet-size\nstats\nquit\n"
        )
        address = self.port.getHost()
        yield protocol.ClientCreator(reactor, lambda: session).connectTCP(address.host, address.port)
        received = yield session.closed
        _, _, *replies = received.decode("utf-8").split("\r\n\r\n")
        self.assertEqual(replies[:5], ["0", "0", "0", "user [nobody] offline now.", "kicked 0 route(s) of user [nobody]."])
        push_lines = replies[5].split("\r\n")
        self.assertRegex(push_lines[0], r"^push \[[0-9a-f]{32}\]:$")
        self.assertTrue(all(" offline" in line for line in push_lines[1:]), push_lines)
        self.assertEqual(replies[6], '"***"')
        self.assertEqual(replies[7], "10240")
        self.assertEqual(json.loads(replies[8])["connections"], 0)
        self.assertEqual(replies[9:], ["have a good day!", ""])
