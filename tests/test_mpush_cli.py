"""
Tests for the C{mpush} command: argument errors (exit 2, one clear line),
keygen output that loads back and fits the config, and push / users commands
against the real HTTP API on a loopback Site with a fake NodeAPI, in-process
and as a real C{python -m mpush.cli.main} process.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
import tomllib

from twisted.internet import defer, reactor, task, utils
from twisted.trial import unittest
from twisted.web import server, static

from mpush.cli import main as cli
from mpush.config import parse_config
from mpush.node_api import PushOutcome, PushRejected, PushRequest
from mpush.protocol.crypto import RsaPrivateKey, RsaPublicKey
from tests.test_http_api import TOKEN, FakeNodeAPI, LoopbackApi, success_result
from tests.test_push_client import free_port

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env_without_token():
    env = dict(os.environ)
    env.pop(cli.TOKEN_ENV, None)
    return env


class ParseTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.stdout = io.StringIO()
        self.stderr = io.StringIO()
        self.patch(sys, "stdout", self.stdout)
        self.patch(sys, "stderr", self.stderr)
        self.patch(os, "environ", _env_without_token())

    def run_args(self, *argv) -> tuple[int, str, str]:
        """Parse and run a command that must fail before any network call."""
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args(list(argv))
        code = self.successResultOf(cli.run(None, args, out, err))
        return code, out.getvalue(), err.getvalue()

    def test_argparse_errors(self):
        for argv, text in [
            ([], "the following arguments are required: COMMAND"),
            (["nope"], "invalid choice: 'nope'"),
            (["push", "--content", "x"], "one of the arguments --user --broadcast is required"),
            (["push", "--user", "u1"], "one of the arguments --content --content-b64 is required"),
            (["push", "--user", "u1", "--broadcast", "--content", "x"], "not allowed with"),
            (["push", "--user", "u1", "--content", "x", "--content-b64", "eA=="], "not allowed with"),
            (["push", "--user", "u1", "--content", "x", "--ack", "maybe"], "invalid choice: 'maybe'"),
            (["push", "--user", "u1", "--content", "x", "--timeout-ms", "1.5"], "invalid int value"),
            (["push", "--user", "u1", "--content", "x", "--timeout", "soon"], "invalid float value"),
            (["users"], "the following arguments are required: COMMAND"),
            (["users", "show"], "the following arguments are required: U"),
            (["users", "kick", "u1", "--client-type", "MOBILE"], "invalid int value"),
            (["-o", "yaml", "keygen"], "invalid choice: 'yaml'"),
        ]:
            self.stderr.seek(0)
            self.stderr.truncate(0)
            exc = self.assertRaises(SystemExit, cli.main, argv)
            self.assertEqual(exc.code, 2, argv)
            self.assertIn(text, self.stderr.getvalue(), argv)
            self.assertIn("error:", self.stderr.getvalue())

    def test_help(self):
        for argv, text in [
            (["--help"], "Exit status: 0 ok"),
            (["push", "--help"], "--offline-ttl"),
            (["users", "--help"], "show"),
            (["users", "show", "--help"], "exit 1 when there is none"),
            (["users", "kick", "--help"], "--client-type"),
            (["keygen", "--help"], "RSA-1024"),
        ]:
            self.stdout.seek(0)
            self.stdout.truncate(0)
            exc = self.assertRaises(SystemExit, cli.main, argv)
            self.assertEqual(exc.code, 0)
            self.assertIn("usage: mpush", self.stdout.getvalue())
            self.assertIn(text, self.stdout.getvalue(), argv)

    def test_usage_errors_before_any_call(self):
        push = ["push", "--user", "u1", "--content", "x"]
        for argv, text in [
            (push + ["--tags", "a"], "--tags goes with --broadcast"),
            (push + ["--condition", "true"], "--condition goes with --broadcast"),
            (push + ["--task-id", "t"], "--task-id goes with --broadcast"),
            (["push", "--broadcast", "--content", "x", "--tags", " , "], "--tags needs at least one tag"),
            (["push", "--user", "", "--content", "x"], "--user must not be empty"),
            (["push", "--user", "u1", "--content-b64", "%%%"], "--content-b64 is not base64"),
            (["push", "--user", "u1", "--content", "\udcff"], "--content is not valid text"),
            (push + ["--timeout-ms", "0"], "--timeout-ms must be in 1..60000"),
            (push + ["--timeout-ms", "60001"], "--timeout-ms must be in 1..60000"),
            (push + ["--offline-ttl", "0"], "--offline-ttl must be in 1..2592000"),
            (push + ["--offline-ttl", "2592001"], "--offline-ttl must be in 1..2592000"),
            (["push"] + [arg for i in range(1001) for arg in ("--user", f"u{i}")] + ["--content", "x"],
             "at most 1000 --user"),
            (push + ["--url", "ftp://h"], "--url must be http://"),
            (push + ["--url", "http://"], "--url must be http://"),
            (push + ["--url", "h:8080"], "--url must be http://"),
            (push + ["--url", "http://h:99999"], "--url has a bad port"),
            (push + ["--url", "http://h/?q=1"], "must not have a query"),
            (push + ["--url", "http://h\u00e9/"], "--url must be printable ASCII"),
            (push + ["--timeout", "0"], "--timeout must be a number of seconds"),
            (push + ["--timeout", "nan"], "--timeout must be a number of seconds"),
            (push + ["--timeout", "inf"], "--timeout must be a number of seconds"),
            (push + ["--token", "two words"], "the token must be printable ASCII"),
            (push + ["--token", "caf\u00e9"], "the token must be printable ASCII"),
            (["users", "show", ""], "U must not be empty"),
            (["users", "show", "\udcff"], "U is not valid text"),
            (["users", "kick", "u1", "--client-type", str(2**31)], "--client-type must be a 32-bit integer"),
        ]:
            code, out, err = self.run_args(*argv)
            self.assertEqual(code, cli.EXIT_USAGE, argv)
            self.assertEqual(out, "")
            self.assertTrue(err.startswith("mpush: error: "), err)
            self.assertIn(text, err, argv)
            self.assertEqual(err.count("\n"), 1, "one line")

    def test_global_options_before_or_after_the_command(self):
        parser = cli.build_parser()
        for argv in (["--url", "http://h:1", "--token", "t", "-o", "table", "--timeout", "3",
                      "users", "show", "u1"],
                     ["users", "show", "u1", "--url", "http://h:1", "--token", "t", "-o", "table",
                      "--timeout", "3"],
                     ["users", "--url", "http://h:1", "--token", "t", "show", "u1", "-o", "table",
                      "--timeout", "3"]):
            args = parser.parse_args(argv)
            self.assertEqual((args.url, args.token, args.output, args.timeout), ("http://h:1", "t", "table", 3.0))
        args = parser.parse_args(["users", "show", "u1"])
        self.assertEqual((args.url, args.token, args.output, args.timeout), (cli.DEFAULT_URL, None, None, None))


class KeygenTests(unittest.SynchronousTestCase):

    def keygen(self, *options) -> str:
        out, err = io.StringIO(), io.StringIO()
        args = cli.build_parser().parse_args([*options, "keygen"])
        self.assertEqual(self.successResultOf(cli.run(None, args, out, err)), cli.EXIT_OK)
        self.assertEqual(err.getvalue(), "")
        return out.getvalue()

    def test_toml_lines_and_public_key(self):
        text = self.keygen()
        lines = text.splitlines()
        toml_part = "\n".join(line for line in lines if line.startswith(("#", "private-key", "public-key")))
        keys = tomllib.loads(toml_part)
        self.assertEqual(set(keys), {"private-key", "public-key"})
        private = RsaPrivateKey.from_pkcs8_base64(keys["private-key"])
        self.assertEqual(private.key_size_bytes * 8, 1024)
        self.assertFalse(private.is_demo_key)
        self.assertEqual(private.public_key().to_x509_base64(), keys["public-key"])
        # The last line is the public key alone, as MPush clients take it.
        self.assertEqual(lines[-1], keys["public-key"])
        public = RsaPublicKey.from_x509_base64(lines[-1])
        self.assertEqual(public.modulus, private.modulus)
        self.assertEqual(private.decrypt(public.encrypt(b"handshake")), b"handshake")
        # The node's config takes the pair as printed.
        config = parse_config({"security": keys})
        self.assertEqual(config.security.private_key, keys["private-key"])
        self.assertEqual(config.security.public_key, keys["public-key"])

    def test_json_and_fresh_keys(self):
        first = json.loads(self.keygen("-o", "json"))
        second = json.loads(self.keygen("-o", "json"))
        self.assertEqual(set(first), {"private_key", "public_key"})
        self.assertNotEqual(first["private_key"], second["private_key"])
        private = RsaPrivateKey.from_pkcs8_base64(first["private_key"])
        self.assertEqual(private.public_key().to_x509_base64(), first["public_key"])


class LoopbackTests(unittest.TestCase):
    """The commands against the real HTTP API over loopback."""

    def setUp(self):
        self.patch(os, "environ", _env_without_token())
        self.node = FakeNodeAPI()
        self.clock = task.Clock()
        self.server = LoopbackApi(self.node, self.clock)
        self.addCleanup(self.server.stop)

    @defer.inlineCallbacks
    def mpush(self, *argv, token: str | None = TOKEN, url: str | None = None):
        options = ["--url", url or self.server.url]
        if token is not None:
            options += ["--token", token]
        args = cli.build_parser().parse_args([*options, *argv])
        out, err = io.StringIO(), io.StringIO()
        code = yield cli.run(reactor, args, out, err)
        yield self.server.idle()
        return code, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_push_json(self):
        code, out, err = yield self.mpush("push", "--user", "u1", "u2", "--user", "u1",
                                          "--content", "hi \u00e9", "--ack", "auto", "--timeout-ms", "2500",
                                          "--offline-ttl", "60")
        self.assertEqual((code, err), (cli.EXIT_OK, ""))
        self.assertEqual(json.loads(out), {"message_id": "m" * 32,
                                           "results": [success_result("u1"), success_result("u2")]})
        self.assertIn("\n  ", out, "pretty JSON")
        self.assertEqual(self.node.calls, [("push", PushRequest(
            users=("u1", "u2"), content="hi \u00e9".encode(), ack="auto", timeout_ms=2500, offline_ttl=60))])

    @defer.inlineCallbacks
    def test_push_table_and_failure_exit(self):
        self.node.push_answer = PushOutcome("abc", [
            success_result("u1"),
            {"user": "u2", "client_type": 0, "status": "offline", "node": None, "reason": "no route\nx",
             "time_points": []}])
        code, out, err = yield self.mpush("-o", "table", "push", "--user", "u1", "--user", "u2",
                                          "--content", "x")
        self.assertEqual((code, err), (cli.EXIT_FAILED, ""))
        lines = out.splitlines()
        self.assertEqual(lines[0], "message_id abc")
        self.assertEqual(lines[1].split(), ["USER", "TYPE", "STATUS", "NODE", "COUNT", "REASON"])
        self.assertEqual(lines[2].split(), ["u1", "1", "success", "10.0.0.1:3001", "-", "-"])
        self.assertEqual(lines[3].split(), ["u2", "0", "offline", "-", "-", "no", "route\\nx"])
        self.assertEqual(len(lines), 4)

    @defer.inlineCallbacks
    def test_push_stored_offline_is_ok(self):
        self.node.push_answer = PushOutcome("abc", [
            {"user": "u1", "client_type": 0, "status": "stored_offline", "node": None,
             "reason": "stored for 60s", "time_points": []}])
        code, out, err = yield self.mpush("push", "--user", "u1", "--content", "x", "--offline-ttl", "60")
        self.assertEqual(code, cli.EXIT_OK)

    @defer.inlineCallbacks
    def test_push_no_results_is_a_failure(self):
        self.node.push_answer = PushOutcome("abc", [])
        code, out, err = yield self.mpush("push", "--broadcast", "--content", "x")
        self.assertEqual(code, cli.EXIT_FAILED)

    @defer.inlineCallbacks
    def test_broadcast(self):
        self.node.push_answer = PushOutcome("b", [
            {"node": "10.0.0.1:3001", "status": "success", "count": 7, "reason": None}])
        code, out, err = yield self.mpush("-o", "table", "push", "--broadcast", "--tags", "a, b,,a",
                                          "--condition", "true", "--task-id", "t1", "--content-b64", "AP8=")
        self.assertEqual((code, err), (cli.EXIT_OK, ""))
        self.assertEqual(out.splitlines()[2].split(), ["*", "-", "success", "10.0.0.1:3001", "7", "-"])
        self.assertEqual(self.node.calls, [("push", PushRequest(
            users=None, content=b"\x00\xff", broadcast=True, tags=("a", "b"), condition="true",
            task_id="t1"))])

    @defer.inlineCallbacks
    def test_rejected_push(self):
        self.node.push_answer = PushRejected("content is larger than 8000 bytes")
        code, out, err = yield self.mpush("push", "--user", "u1", "--content", "x")
        self.assertEqual((code, out), (cli.EXIT_FAILED, ""))
        self.assertEqual(err, "mpush: error: HTTP 400 push_rejected: content is larger than 8000 bytes\n")

    @defer.inlineCallbacks
    def test_token(self):
        code, out, err = yield self.mpush("users", "show", "u1", token=None)
        self.assertEqual(code, cli.EXIT_USAGE)  # a refused token is the caller's mistake
        self.assertIn("HTTP 401 unauthorized", err)
        code, out, err = yield self.mpush("users", "show", "u1", token="wrong")
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("mpush: error: HTTP 401 unauthorized: wrong token", err)
        os.environ[cli.TOKEN_ENV] = TOKEN
        code, out, err = yield self.mpush("users", "show", "u1", token=None)
        self.assertEqual(code, cli.EXIT_OK)
        # --token wins over the environment.
        code, out, err = yield self.mpush("users", "show", "u1", token="wrong")
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertEqual(self.node.calls, [("routes", "u1")])

    @defer.inlineCallbacks
    def test_users_show(self):
        code, out, err = yield self.mpush("users", "show", "u1", url=self.server.url + "/")
        self.assertEqual((code, err), (cli.EXIT_OK, ""))
        value = json.loads(out)
        self.assertEqual([route["client_type_name"] for route in value["routes"]], ["MOBILE", "PC"])
        code, out, err = yield self.mpush("-o", "table", "users", "show", "u1")
        self.assertEqual(code, cli.EXIT_OK)
        lines = out.splitlines()
        self.assertEqual(lines[0], "user u1 online")
        self.assertEqual(lines[1].split(), ["TYPE", "ONLINE", "NODE", "DEVICE", "OS", "VERSION", "CONN"])
        self.assertEqual(lines[2].split(), ["MOBILE", "yes", "10.0.0.1:3001", "dev-1", "android", "1.0", "conn-1"])
        self.assertEqual(lines[3].split(), ["PC", "no", "10.0.0.2:3001", "dev-2", "windows", "2.0", "-"])

    @defer.inlineCallbacks
    def test_users_show_encodes_the_id(self):
        user = "a/b \u00e9?#"
        self.node.routes_by_user[user] = self.node.routes_by_user["u1"]
        code, out, err = yield self.mpush("users", "show", user)
        self.assertEqual((code, err), (cli.EXIT_OK, ""))
        self.assertEqual(json.loads(out)["user"], user)
        self.assertEqual(self.node.calls, [("routes", user)])

    @defer.inlineCallbacks
    def test_users_show_unknown(self):
        code, out, err = yield self.mpush("users", "show", "nobody")
        self.assertEqual((code, out), (cli.EXIT_FAILED, ""))
        self.assertEqual(err, "mpush: error: HTTP 404 not_found: user 'nobody' has no route\n")

    @defer.inlineCallbacks
    def test_users_kick(self):
        self.node.kick_answer = 2
        code, out, err = yield self.mpush("users", "kick", "u1")
        self.assertEqual((code, json.loads(out)), (cli.EXIT_OK, {"kicked": 2}))
        code, out, err = yield self.mpush("-o", "table", "users", "kick", "u1", "--client-type", "-1")
        self.assertEqual((code, out), (cli.EXIT_OK, "kicked 2\n"))
        code, out, err = yield self.mpush("users", "kick", "u1", "--keep-open")
        self.assertEqual((code, err), (cli.EXIT_OK, ""))
        code, out, err = yield self.mpush("users", "kick", "u1", "--client-type", "7")
        self.assertEqual(code, cli.EXIT_OK)
        self.assertEqual(err, "mpush: warning: --client-type 7 is no client type mpush knows "
                              "(1 MOBILE, 2 PC, 3 WEB, -1 UNKNOWN): nothing may match\n")
        self.assertEqual(self.node.calls, [("kick", "u1", None, True), ("kick", "u1", -1, True),
                                           ("kick", "u1", None, False), ("kick", "u1", 7, True)])

    @defer.inlineCallbacks
    def test_path_prefix_and_not_found(self):
        code, out, err = yield self.mpush("users", "show", "u1", url=self.server.url + "/prefix")
        self.assertEqual(code, cli.EXIT_FAILED)
        self.assertIn("HTTP 404 not_found", err)

    @defer.inlineCallbacks
    def test_node_unreachable(self):
        url = f"http://127.0.0.1:{free_port()}"
        code, out, err = yield self.mpush("users", "show", "u1", url=url)
        self.assertEqual((code, out), (cli.EXIT_USAGE, ""))
        self.assertTrue(err.startswith(f"mpush: error: cannot reach {url}/v1/users/u1: "), err)
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_no_answer_in_time(self):
        self.node.push_answer = defer.Deferred()
        code, out, err = yield self.mpush("push", "--user", "u1", "--content", "x", "--timeout", "0.3")
        self.assertEqual((code, out), (cli.EXIT_USAGE, ""))
        self.assertEqual(err, f"mpush: error: no answer from {self.server.url}/v1/push within 0.3s\n")


class ForeignServerTests(unittest.TestCase):
    """Whatever answers at --url that is not the mpush API."""

    def setUp(self):
        self.patch(os, "environ", _env_without_token())
        page = static.Data(b"<html>hello</html>", "text/html")
        page.isLeaf = True
        self.page_url = self.listen(page)
        self.missing_url = self.listen(static.Data(b"<html>root</html>", "text/html"))

    def listen(self, resource) -> str:
        port = reactor.listenTCP(0, server.Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    @defer.inlineCallbacks
    def mpush(self, url, *argv):
        args = cli.build_parser().parse_args(["--url", url, *argv])
        out, err = io.StringIO(), io.StringIO()
        code = yield cli.run(reactor, args, out, err)
        return code, out.getvalue(), err.getvalue()

    @defer.inlineCallbacks
    def test_html_page(self):
        code, out, err = yield self.mpush(self.page_url, "users", "show", "u1")
        self.assertEqual((code, out), (cli.EXIT_USAGE, ""))
        self.assertIn("answered HTTP 200 with text/html, not JSON", err)

    @defer.inlineCallbacks
    def test_html_error(self):
        code, out, err = yield self.mpush(self.missing_url, "users", "kick", "u1")
        self.assertEqual((code, out), (cli.EXIT_FAILED, ""))
        self.assertTrue(err.startswith("mpush: error: HTTP 404 http_error: "), err)
        self.assertEqual(err.count("\n"), 1)

    @defer.inlineCallbacks
    def test_answer_too_large(self):
        self.patch(cli, "MAX_ANSWER_BYTES", 10)
        code, out, err = yield self.mpush(self.page_url, "users", "show", "u1")
        self.assertEqual(code, cli.EXIT_USAGE)
        self.assertIn("the answer is larger than 10 bytes", err)


class ProcessTests(unittest.TestCase):
    """The real command as a process: exit codes and stderr."""

    def mpush(self, *argv):
        env = _env_without_token()
        env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        return utils.getProcessOutputAndValue(sys.executable, ["-m", "mpush.cli.main", *argv],
                                              env=env, path=REPO_ROOT)

    @defer.inlineCallbacks
    def test_keygen(self):
        out, err, code = yield self.mpush("keygen")
        self.assertEqual((code, err), (0, b""))
        public = out.decode().splitlines()[-1]
        RsaPublicKey.from_x509_base64(public)

    @defer.inlineCallbacks
    def test_unreachable(self):
        out, err, code = yield self.mpush("users", "show", "u1", "--url", f"http://127.0.0.1:{free_port()}")
        self.assertEqual((code, out), (2, b""))
        self.assertEqual(err.count(b"\n"), 1)
        self.assertIn(b"mpush: error: cannot reach", err)

    @defer.inlineCallbacks
    def test_usage(self):
        out, err, code = yield self.mpush()
        self.assertEqual(code, 2)
        self.assertIn(b"usage: mpush", err)

    @defer.inlineCallbacks
    def test_push_over_loopback(self):
        node = FakeNodeAPI()
        server = LoopbackApi(node, task.Clock())
        self.addCleanup(server.stop)
        out, err, code = yield self.mpush("push", "--user", "u1", "--content", "x", "--url", server.url,
                                          "--token", TOKEN)
        self.assertEqual((code, err), (0, b""))
        self.assertEqual(json.loads(out)["results"], [success_result("u1")])
        self.assertEqual(base64.b64encode(node.calls[0][1].content), b"eA==")
