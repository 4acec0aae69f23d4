"""
Tests for the mpush-push command: option errors (exit 2, one clear line),
and runs against a fake gateway server, in-process and as a real
C{python -m mpush.push} process, checking what is printed and the exit code.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys

from twisted.internet import defer, reactor, utils
from twisted.trial import unittest

from mpush.protocol.errors import ErrorCode
from mpush.push import cli
from mpush.push.results import AckModel, BroadcastResult, PushResult, PushStatus
from tests.test_push_client import FakeGateway, answer_error, error_frame, free_port, ok_frame, start_gateway

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ParseTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    def options(self, *argv) -> cli.PushOptions:
        return cli.options_from_args(cli.build_parser().parse_args(list(argv)))

    def assert_usage_error(self, argv, text):
        self.stderr.seek(0)
        self.stderr.truncate(0)
        exc = self.assertRaises(SystemExit, cli.main, list(argv))
        self.assertEqual(exc.code, 2, argv)
        self.assertIn(text, self.stderr.getvalue(), argv)
        self.assertIn("mpush-push: error:", self.stderr.getvalue())

    def test_usage_errors(self):
        missing = os.path.join(self.tmp, "absent.bin")
        for argv, text in [
            ([], "one of the arguments --user --broadcast is required"),
            (["--user", "u1"], "one of the arguments --content --content-file --content-b64 is required"),
            (["--user", "u1", "--broadcast", "--content", "x"], "not allowed with"),
            (["--user", "u1", "--content", "x", "--content-b64", "eA=="], "not allowed with"),
            (["--redis", "redis://h", "--gateway", "h:1", "--user", "u1", "--content", "x"], "not allowed with"),
            (["--user", "u1", "--content", "x", "--tags", "a"], "--tags goes with --broadcast"),
            (["--user", "u1", "--content", "x", "--condition", "true"], "--condition goes with --broadcast"),
            (["--user", "u1", "--content", "x", "--task-id", "t"], "--task-id goes with --broadcast"),
            (["--broadcast", "--content", "x", "--tags", " , "], "--tags needs at least one tag"),
            (["--user", "", "--content", "x"], "--user must not be empty"),
            (["--gateway", "nohost", "--user", "u1", "--content", "x"], "--gateway must be HOST:PORT"),
            (["--gateway", ":3001", "--user", "u1", "--content", "x"], "--gateway must be HOST:PORT"),
            (["--gateway", "h:0", "--user", "u1", "--content", "x"], "--gateway port must be 1..65535"),
            (["--gateway", "h:99999", "--user", "u1", "--content", "x"], "--gateway port must be 1..65535"),
            (["--gateway", "h:x", "--user", "u1", "--content", "x"], "--gateway port must be 1..65535"),
            (["--gateway", "::1:3001", "--user", "u1", "--content", "x"], "write an IPv6 address as [addr]:port"),
            (["--user", "u1", "--content-b64", "%%%"], "--content-b64 is not base64"),
            (["--user", "u1", "--content-file", missing], f"cannot read content file {missing}"),
            (["--user", "u1", "--content-file", self.tmp], f"cannot read content file {self.tmp}"),
            (["--user", "u1", "--content", "x", "--timeout", "0"], "--timeout must be a number of seconds"),
            (["--user", "u1", "--content", "x", "--timeout", "3000"],
             "--timeout is in seconds, as in mpush: for 3000 ms write --timeout-ms 3000"),
            (["--user", "u1", "--content", "x", "--timeout-ms", "0"], "--timeout-ms must be a positive"),
            (["--user", "u1", "--content", "x", "--timeout-ms", "1.5"], "invalid int value"),
            (["--user", "u1", "--content", "x", "--timeout", "1", "--timeout-ms", "5"], "not allowed with"),
            (["--user", "u1", "--content", "x", "--ack", "maybe"], "invalid choice"),
            (["--redis", "http://h/0", "--user", "u1", "--content", "x"], "redis url must start with redis://"),
            (["--redis", "redis://:pw@h:1/x", "--user", "u1", "--content", "x"], "redis db must be a number"),
        ]:
            self.assert_usage_error(argv, text)

    def test_defaults(self):
        options = self.options("--user", "u1", "--content", "hi")
        self.assertEqual(options, cli.PushOptions(content=b"hi", gateway=("127.0.0.1", 3001), users=("u1",)))

    def test_timeout_in_seconds_as_in_mpush(self):
        self.assertEqual(self.options("--user", "u", "--content", "x", "--timeout", "2.5").timeout, 2.5)
        self.assertEqual(self.options("--user", "u", "--content", "x", "--timeout-ms", "2500").timeout, 2.5)

    def test_users_repeat_and_dedupe(self):
        options = self.options("--user", "u1", "u2", "--user", "u3", "u1", "--content", "x")
        self.assertEqual(options.users, ("u1", "u2", "u3"))

    def test_content_sources(self):
        self.assertEqual(self.options("--user", "u", "--content", "héllo").content, "héllo".encode())
        raw = bytes(range(256))
        self.assertEqual(self.options("--user", "u", "--content-b64", base64.b64encode(raw).decode()).content, raw)
        path = os.path.join(self.tmp, "c.bin")
        with open(path, "wb") as f:
            f.write(raw)
        self.assertEqual(self.options("--user", "u", "--content-file", path).content, raw)

    def test_broadcast_options(self):
        options = self.options("--broadcast", "--tags", "a, b,,a", "--condition", "tags.length>0",
                               "--task-id", "t1", "--content", "x", "--ack", "biz", "--timeout", "1.5",
                               "--gateway", "[::1]:3005", "--json")
        self.assertEqual((options.broadcast, options.tags, options.condition, options.task_id),
                         (True, ("a", "b"), "tags.length>0", "t1"))
        self.assertEqual((options.ack, options.timeout, options.gateway, options.json),
                         (AckModel.BIZ_ACK, 1.5, ("::1", 3005), True))

    def test_redis_option(self):
        options = self.options("--redis", "redis://127.0.0.1:6380/2", "--user", "u", "--content", "x")
        self.assertEqual((options.redis_url, options.gateway), ("redis://127.0.0.1:6380/2", None))

    def test_format_push_result(self):
        result = PushResult("u1", 1, PushStatus.SUCCESS, "127.0.0.1:3001", None, None,
                            (("send", 100), ("success-end", 5), ("reply", 112)))
        self.assertEqual(cli.format_push_result(result), "u1 MOBILE success node=127.0.0.1:3001 ms=12")
        result = PushResult("u2", 0, PushStatus.OFFLINE, None, 3, "router change, then no route", (), True)
        self.assertEqual(cli.format_push_result(result),
                         "u2 ANY offline node=- redirected code=3 reason=router change, then no route")

    def test_format_broadcast_result(self):
        self.assertEqual(cli.format_broadcast_result(BroadcastResult("h:1", PushStatus.SUCCESS, 4, None)),
                         "broadcast node=h:1 success count=4")
        self.assertEqual(
            cli.format_broadcast_result(BroadcastResult("h:1", PushStatus.FAILURE, None, "unsupported command", 101)),
            "broadcast node=h:1 failure code=101 reason=unsupported command")


class RunTests(unittest.TestCase):
    """cli.run against a fake gateway on loopback."""

    timeout = 30

    def setUp(self):
        self.gateway = start_gateway(self)
        self.out = io.StringIO()
        self.err = io.StringIO()

    def run_cli(self, *argv):
        options = cli.options_from_args(cli.build_parser().parse_args(list(argv)))
        return cli.run(reactor, options, self.out, self.err)

    def argv(self, *more):
        host, port = self.gateway.host_port
        return ("--gateway", f"{host}:{port}") + more

    def lines(self):
        return self.out.getvalue().splitlines()

    @defer.inlineCallbacks
    def test_all_success(self):
        code = yield self.run_cli(*self.argv("--user", "u1", "u2", "--content", "hi", "--ack", "auto"))
        self.assertEqual(code, 0)
        self.assertEqual(len(self.lines()), 2)
        for user, line in zip(("u1", "u2"), self.lines()):
            self.assertTrue(line.startswith(f"{user} MOBILE success node={self.gateway.node} ms="), line)
        self.assertEqual(self.gateway.flags(), [0x48, 0x48])
        self.assertEqual(self.err.getvalue(), "")

    @defer.inlineCallbacks
    def test_one_offline_exit_1(self):
        self.gateway.script = lambda packet, message: (
            answer_error(ErrorCode.OFFLINE)(packet, message) if message.user_id == "u2"
            else FakeGateway.succeed(packet, message))
        code = yield self.run_cli(*self.argv("--user", "u1", "u2", "--content", "hi"))
        self.assertEqual(code, 1)
        self.assertIn("u1 MOBILE success", self.lines()[0])
        self.assertIn("u2 ANY offline", self.lines()[1])
        self.assertTrue(self.lines()[1].endswith("code=1 reason=user offline"))

    @defer.inlineCallbacks
    def test_json(self):
        self.gateway.script = answer_error(ErrorCode.ACK_TIMEOUT)
        code = yield self.run_cli(*self.argv("--user", "u1", "--content", "hi", "--json", "--timeout-ms", "2000"))
        self.assertEqual(code, 1)
        [line] = self.lines()
        record = json.loads(line)
        self.assertEqual((record["userId"], record["status"], record["code"]), ("u1", "ack_timeout", 4))
        self.assertEqual(self.gateway.messages()[0].timeout, 1500)

    @defer.inlineCallbacks
    def test_broadcast(self):
        self.gateway.script = lambda packet, message: ok_frame(packet.session_id, '{"count":4}')
        code = yield self.run_cli(*self.argv("--broadcast", "--tags", "a,b", "--content-b64", "aGk="))
        self.assertEqual(code, 0)
        self.assertEqual(self.lines(), [f"broadcast node={self.gateway.node} success count=4"])
        [message] = self.gateway.messages()
        self.assertEqual((message.user_id, message.tags, message.content), (None, ("a", "b"), b"hi"))

    @defer.inlineCallbacks
    def test_broadcast_failure(self):
        self.gateway.script = answer_error(ErrorCode.UNSUPPORTED_CMD)
        code = yield self.run_cli(*self.argv("--broadcast", "--content", "x", "--json"))
        self.assertEqual(code, 1)
        self.assertEqual(json.loads(self.lines()[0])["status"], "failure")

    @defer.inlineCallbacks
    def test_unreachable_gateway(self):
        code = yield self.run_cli("--gateway", f"127.0.0.1:{free_port()}", "--user", "u1", "--content", "x")
        self.assertEqual(code, 1)
        self.assertIn("u1 ANY failure node=127.0.0.1:", self.lines()[0])
        self.assertIn("cannot connect", self.lines()[0])

    @defer.inlineCallbacks
    def test_content_too_large(self):
        code = yield self.run_cli(*self.argv("--user", "u1", "--content", "x" * 10240))
        self.assertEqual(code, 2)
        self.assertIn("exceeds the gateway's 10240-byte packet limit", self.err.getvalue())
        self.assertEqual(self.gateway.received, [])

    @defer.inlineCallbacks
    def test_reason_cannot_forge_lines(self):
        def script(packet, message):
            return error_frame(packet.session_id, ErrorCode.PUSH_CLIENT_FAILURE, "bad\nu9 MOBILE success")

        self.gateway.script = script
        code = yield self.run_cli(*self.argv("--user", "u1", "--content", "x"))
        self.assertEqual(code, 1)
        [line] = self.lines()
        self.assertTrue(line.endswith("reason=bad\\nu9 MOBILE success"), line)

    @defer.inlineCallbacks
    def test_unreachable_redis(self):
        code = yield self.run_cli("--redis", f"redis://127.0.0.1:{free_port()}/0", "--user", "u1",
                                  "--content", "x")
        self.assertEqual(code, 2)
        self.assertIn("mpush-push: error: cannot reach redis", self.err.getvalue())
        self.assertEqual(self.out.getvalue(), "")

    @defer.inlineCallbacks
    def test_redis_without_nodes(self):
        from tests.redis_server import start_redis_server

        server = start_redis_server(self)
        code = yield self.run_cli("--redis", server.url, "--broadcast", "--content", "x")
        self.assertEqual(code, 1)
        self.assertIn("no gateway node is registered", self.err.getvalue())
        code = yield self.run_cli("--redis", server.url, "--user", "nobody", "--content", "x")
        self.assertEqual(code, 1)
        self.assertEqual(self.lines(), ["nobody ANY offline node=- reason=user has no route"])


class ProcessTests(unittest.TestCase):
    """The real command, C{python -m mpush.push}, in a child process."""

    timeout = 60

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return env

    @defer.inlineCallbacks
    def test_push_against_fake_gateway(self):
        gateway = start_gateway(self)
        host, port = gateway.host_port
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "mpush.push", "--gateway", f"{host}:{port}", "--user", "u1", "--content", "hello"],
            env=self.env(), path=REPO_ROOT,
        )
        self.assertEqual(code, 0, err)
        self.assertTrue(out.decode().startswith(f"u1 MOBILE success node={host}:{port} "), out)
        self.assertEqual(gateway.messages()[0].content, b"hello")

    @defer.inlineCallbacks
    def test_offline_exit_code(self):
        gateway = start_gateway(self, answer_error(ErrorCode.OFFLINE))
        host, port = gateway.host_port
        out, err, code = yield utils.getProcessOutputAndValue(
            sys.executable,
            ["-m", "mpush.push", "--gateway", f"{host}:{port}", "--user", "u1", "--content", "x", "--json"],
            env=self.env(), path=REPO_ROOT,
        )
        self.assertEqual(code, 1, err)
        self.assertEqual(json.loads(out)["status"], "offline")

    def test_usage_error_exit_code(self):
        proc = subprocess.run([sys.executable, "-m", "mpush.push", "--user", "u1"], env=self.env(),
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2)
        self.assertIn("mpush-push: error:", proc.stderr)
