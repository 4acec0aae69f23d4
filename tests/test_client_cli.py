"""
Tests for the mpush-client command: option parsing, error messages, and
runs against a scripted server on a memory reactor (no real server).
"""

from __future__ import annotations

import io
import os
import socket
import stat
import subprocess
import sys

from twisted.internet import error
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from mpush.client import cli
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.errors import ErrorCode
from mpush.protocol.messages import ErrorMessage, OkMessage, PushMessage
from mpush.protocol.packet import HEARTBEAT_BYTE, Command
from tests.test_client import EPOCH, FakeServer, server_private_key

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def public_key() -> str:
    return server_private_key().public_key().to_x509_base64()


class ParseTests(unittest.SynchronousTestCase):

    def setUp(self):
        self.stderr = io.StringIO()
        self.patch(sys, "stderr", self.stderr)
        self.tmp = self.mktemp()
        os.makedirs(self.tmp)

    def config(self, *argv):
        return cli.config_from_args(cli.build_parser().parse_args(list(argv)))

    def assert_main_exits(self, argv, code, text):
        exc = self.assertRaises(SystemExit, cli.main, argv)
        self.assertEqual(exc.code, code)
        self.assertIn(text, self.stderr.getvalue())

    def test_missing_key(self):
        self.assert_main_exits([], 2, "a server public key is required")

    def test_bad_key(self):
        self.assert_main_exits(["--public-key", "abc"], 2, "public_key is not a base64 X.509 RSA public key")

    def test_not_a_public_key(self):
        """
        Valid base64 that is no X.509 key is rejected before connecting.
        """
        self.assert_main_exits(["--public-key", "QUJDREVGRw=="], 2, "public_key is not")

    def test_missing_key_file(self):
        path = os.path.join(self.tmp, "absent.pem")
        self.assert_main_exits(["--public-key-file", path], 2, f"cannot read public key file {path}")

    def test_two_keys(self):
        self.assert_main_exits(["--public-key", "x", "--demo-key"], 2, "not allowed with")

    def test_bad_numbers(self):
        for argv, text in [
            (["--demo-key", "--count", "-1"], "--count must not be negative"),
            (["--demo-key", "--exit-after", "0"], "--exit-after must be positive"),
            (["--demo-key", "--port", "0"], "port must be"),
            (["--demo-key", "--heartbeat", "0"], "heartbeat must be"),
            (["--demo-key", "--device-id", ""], "--device-id must not be empty"),
            (["--demo-key", "--port", "x"], "invalid int value"),
        ]:
            self.stderr.truncate(0)
            self.assert_main_exits(argv, 2, text)

    def test_defaults(self):
        config = self.config("--public-key", public_key())
        self.assertEqual(
            (config.host, config.port, config.os_name, config.min_heartbeat, config.max_heartbeat,
             config.user_id, config.session_file, config.handshake_timeout),
            ("127.0.0.1", 3000, "android", 240000, 240000, None, None, 3.0),
        )
        self.assertEqual(len(config.device_id), 32)

    def test_options(self):
        config = self.config(
            "--demo-key", "--host", "example.org", "--port", "3100", "--device-id", "d1",
            "--os-name", "ios", "--os-version", "17", "--client-version", "1.2", "--user", "u1",
            "--tags", "a,b", "--heartbeat", "60000", "--timeout", "1.5",
        )
        self.assertEqual(
            (config.host, config.port, config.public_key, config.device_id, config.os_name,
             config.os_version, config.client_version, config.user_id, config.tags,
             config.min_heartbeat, config.max_heartbeat, config.handshake_timeout, config.bind_timeout),
            ("example.org", 3100, MPUSH_DEMO_PUBLIC_KEY, "d1", "ios", "17", "1.2", "u1", "a,b",
             60000, 60000, 1.5, 1.5),
        )

    def test_pem_key_file(self):
        path = os.path.join(self.tmp, "server.pub")
        key = public_key()
        with open(path, "w") as handle:
            handle.write("-----BEGIN PUBLIC KEY-----\n")
            for i in range(0, len(key), 64):
                handle.write(key[i:i + 64] + "\n")
            handle.write("-----END PUBLIC KEY-----\n")
        config = self.config("--public-key-file", path)
        self.assertEqual(config.rsa_public_key().to_x509_base64(), key)

    def test_device_id_kept_next_to_session_file(self):
        session = os.path.join(self.tmp, "token.dat")
        first = self.config("--demo-key", "--session-file", session).device_id
        second = self.config("--demo-key", "--session-file", session).device_id
        self.assertEqual(first, second)
        path = session + ".device-id"
        with open(path) as handle:
            self.assertEqual(handle.read(), first)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(self.config("--demo-key", "--session-file", session, "--device-id", "x").device_id, "x")

    def test_random_device_id_without_session_file(self):
        self.assertNotEqual(self.config("--demo-key").device_id, self.config("--demo-key").device_id)

    def test_device_id_file_unwritable(self):
        session = os.path.join(self.tmp, "missing", "token.dat")
        self.assert_main_exits(["--demo-key", "--session-file", session], 2, "cannot write device id file")

    def test_printable(self):
        self.assertEqual(cli.printable("héllo".encode()), "héllo")
        self.assertEqual(cli.printable(b"a\nb\x00"), "a\\nb\\x00")
        self.assertEqual(cli.printable(b"\xff"), "\\xff")


class RunTests(unittest.SynchronousTestCase):
    """
    cli.run against a scripted server over a memory reactor.
    """

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.reactor.advance(EPOCH)
        self.out = io.StringIO()
        self.err = io.StringIO()

    def start(self, *argv):
        args = cli.build_parser().parse_args(["--public-key", public_key(), "--device-id", "d1", *argv])
        config = cli.config_from_args(args)
        result = cli.run(self.reactor, config, args, out=self.out, err=self.err)
        return result

    def accept(self):
        """
        Complete the pending TCP connect; return (protocol, server).
        """
        factory = self.reactor.tcpClients[-1][2]
        self.protocol = factory.buildProtocol(None)
        transport = StringTransport()
        self.protocol.makeConnection(transport)
        return self.protocol, FakeServer(transport, server_private_key())

    def handshake(self, server, **kwargs):
        packet, message = server.read_handshake()
        self.protocol.dataReceived(server.handshake_ok_frame(packet, message, **kwargs))

    def finish_close(self):
        self.assertTrue(self.protocol.transport.disconnecting)
        self.protocol.connectionLost(Failure(error.ConnectionDone()))

    def lines(self):
        return self.out.getvalue().splitlines()

    def test_connection_refused(self):
        result = self.start("--port", "3999")
        self.reactor.tcpClients[-1][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
        self.assertEqual(self.successResultOf(result), 1)
        self.assertIn("mpush-client: error: cannot connect to 127.0.0.1:3999", self.err.getvalue())

    def test_bind_and_ping(self):
        result = self.start("--user", "u1", "--ping", "2")
        protocol, server = self.accept()
        self.handshake(server, session_id="s1")
        [bind] = server.received()
        protocol.dataReceived(server.send(Command.OK, OkMessage(5, 0, "bind success"), bind.session_id, raw=True))
        for _ in range(2):
            self.assertEqual(server.transport.value(), HEARTBEAT_BYTE)
            server.transport.clear()
            protocol.dataReceived(HEARTBEAT_BYTE)
        self.assertNoResult(result)
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 0)
        self.assertEqual(self.lines(), [
            "handshake ok heartbeat=180000 session=s1", "bound user=u1", "pong", "pong", "closed",
        ])
        self.assertEqual(self.err.getvalue(), "")

    def test_count_pushes_and_biz_ack(self):
        result = self.start("--count", "1")
        protocol, server = self.accept()
        self.handshake(server)
        protocol.dataReceived(server.send(Command.PUSH, PushMessage(b"hi\n"), session_id=5, flags=0x04))
        self.assertEqual(server.transport.value(), bytes.fromhex("00000000 17 0000 00 00000005 00"))
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 0)
        self.assertIn("push session=5 flags=5 content=hi\\n", self.lines())

    def test_no_ack(self):
        result = self.start("--count", "1", "--no-ack")
        protocol, server = self.accept()
        self.handshake(server)
        protocol.dataReceived(server.send(Command.PUSH, PushMessage(b"x"), session_id=5, flags=0x04))
        self.assertEqual(server.transport.value(), b"")
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 0)

    def test_count_deadline(self):
        result = self.start("--count", "2", "--exit-after", "5")
        protocol, server = self.accept()
        self.handshake(server)
        protocol.dataReceived(server.send(Command.PUSH, PushMessage(b"x"), session_id=5, flags=0x08))
        self.reactor.advance(5)
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 1)
        self.assertIn("timed out after 5 s with 1 of 2 pushes", self.err.getvalue())

    def test_exit_after(self):
        result = self.start("--exit-after", "2")
        protocol, server = self.accept()
        self.handshake(server)
        self.reactor.advance(2)
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 0)

    def test_handshake_rejected(self):
        """
        ERROR 100 for the handshake (what a wrong key produces) -> exit 1 with
        a hint about the key.
        """
        result = self.start()
        protocol, server = self.accept()
        packet, _ = server.read_handshake()
        protocol.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.HANDSHAKE, ErrorCode.DISPATCH_ERROR),
            packet.session_id, raw=True,
        ))
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 1)
        message = self.err.getvalue()
        self.assertIn("handshake rejected by server: code=100", message)
        self.assertIn("is the public key the server's?", message)
        self.assertEqual(message.count("error:"), 1, message)

    def test_bind_rejected(self):
        """
        ERROR answering the automatic bind -> exit 1, reported once.
        """
        result = self.start("--user", "u1")
        protocol, server = self.accept()
        self.handshake(server)
        [bind] = server.received()
        protocol.dataReceived(server.send(
            Command.ERROR, ErrorMessage.from_code(Command.BIND, ErrorCode.UNSUPPORTED_CMD),
            bind.session_id, raw=True,
        ))
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 1)
        message = self.err.getvalue()
        self.assertEqual(
            message, "mpush-client: error: server error for cmd 5: code=101 reason='unsupported command'\n"
        )
        self.assertNotIn("bound user=u1", self.lines())

    def test_handshake_timeout(self):
        result = self.start("--timeout", "2")
        self.accept()
        self.reactor.advance(2)
        self.finish_close()
        self.assertEqual(self.successResultOf(result), 1)
        self.assertIn("no answer to HANDSHAKE within 2 s", self.err.getvalue())

    def test_server_closes(self):
        result = self.start()
        protocol, server = self.accept()
        self.handshake(server)
        protocol.connectionLost(Failure(error.ConnectionLost("reset")))
        self.assertEqual(self.successResultOf(result), 1)
        self.assertIn("connection closed by the server", self.err.getvalue())
        self.assertEqual(self.lines()[-1], "closed")

    def test_kicked(self):
        from mpush.protocol.messages import KickUserMessage

        result = self.start()
        protocol, server = self.accept()
        self.handshake(server)
        protocol.dataReceived(server.send(Command.KICK, KickUserMessage("d1", "u1")))
        self.assertIn("kicked device=d1 user=u1", self.lines())
        protocol.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(self.successResultOf(result), 1)


class ProcessTests(unittest.TestCase):

    def test_module_refused(self):
        """
        C{python -m mpush.client} against a closed port exits 1 with one
        clear line.
        """
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        proc = subprocess.run(
            [sys.executable, "-m", "mpush.client", "--demo-key", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=REPO_ROOT, env=env,
        )
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(f"mpush-client: error: cannot connect to 127.0.0.1:{port}", proc.stderr)
        self.assertEqual(proc.stdout, "")


class NodeProcessTests(unittest.TestCase):
    """mpush-client as a process against a real node."""

    timeout = 120

    def node(self, extra=""):
        from tests.process_support import NodeProcess

        node = NodeProcess(
            "[security]\n"
            f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
            f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n' + extra
        )
        self.addCleanup(node.stop)
        return node.start()

    def client_command(self, node, *argv):
        return [sys.executable, "-m", "mpush.client", "--demo-key", "--port", str(node.port), *argv]

    def test_http_get_through_the_proxy(self):
        """The README's proxy section can be tried: --http-get prints the answer."""
        from twisted.internet import reactor, threads
        from twisted.web.resource import Resource
        from twisted.web.server import Site
        from twisted.web.static import Data

        root = Resource()
        root.putChild(b"hello", Data(b"hello from upstream", "text/plain"))
        upstream = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
        self.addCleanup(upstream.stopListening)
        node = self.node('[http]\nproxy-enabled = true\nproxy-allow = ["127.0.0.1"]\n')
        url = f"http://127.0.0.1:{upstream.getHost().port}/hello"
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)

        def call():
            return subprocess.run(self.client_command(node, "--http-get", url), capture_output=True,
                                  text=True, timeout=60, cwd=REPO_ROOT, env=env)

        def check(proc):
            self.assertEqual(proc.returncode, 0, proc.stderr)
            lines = proc.stdout.splitlines()
            self.assertIn("http status=200 reason=OK bytes=19", lines)
            self.assertIn("hello from upstream", lines)

        return threads.deferToThread(call).addCallback(check)

    def test_ctrl_c_is_not_the_server_closing(self):
        import signal

        node = self.node()
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        proc = subprocess.Popen(self.client_command(node), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO_ROOT, env=env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        first = proc.stdout.readline()  # blocks until the handshake is done
        self.assertTrue(first.startswith("handshake ok"), first)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        self.assertEqual(proc.returncode, cli.INTERRUPTED, err)
        self.assertNotIn("closed by the server", err)
        self.assertEqual(err, "")
        self.assertEqual(out.splitlines(), ["closed"])
