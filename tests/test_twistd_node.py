"""
Real C{twistd mpush} processes: the plugin, config errors, the demo key pair,
restarts and two nodes sharing one real Redis.
"""

import os
import subprocess

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.protocol.body import make_raw_packet
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY
from mpush.protocol.messages import GatewayPushMessage
from mpush.protocol.packet import Command, PacketDecoder, encode_packet

from tests.process_support import NodeProcess, free_port, listening_socket, run_twistd
from tests.redis_server import start_redis_server


def demo_key_config(redis_port=None):
    text = (
        "[security]\n"
        f'private-key = "{MPUSH_DEMO_PRIVATE_KEY}"\n'
        f'public-key = "{MPUSH_DEMO_PUBLIC_KEY}"\n'
        "[core]\n"
        'min-heartbeat = "10s"\n'
        'max-heartbeat = "3m"\n'
    )
    if redis_port is not None:
        text += f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n'
    return text


class PluginTests(TestCase):
    timeout = 60

    def test_help_lists_options(self):
        result = run_twistd(["mpush", "--help"])
        self.assertEqual(result.returncode, 0, result.stderr)
        for option in ("--config", "--connect-port", "--gateway-port", "--admin-port", "--http-port", "--redis", "--state-dir"):
            self.assertIn(option, result.stdout)

    def test_bad_config_fails_with_one_line(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "bad.toml")
        with open(path, "w") as config:
            config.write('[core]\nmax-packet-size = "abc"\n')
        result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--config", path])
        self.assertNotEqual(result.returncode, 0)
        message = (result.stdout + result.stderr).strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn("[core] max-packet-size", message)
        self.assertIn(path, message)

    def test_port_in_use_fails_with_one_line(self):
        """The address, the port's key and the OS error; no traceback."""
        import socket

        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            directory = os.path.abspath(self.mktemp())
            result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--gateway-port", str(port),
                                 "--connect-port", str(free_port()), "--admin-port", "0", "--http-port", "0",
                                 "--state-dir", directory])
        self.assertNotEqual(result.returncode, 0)
        output = result.stdout + result.stderr
        self.assertNotIn("Traceback", output)
        [line] = [line for line in output.splitlines() if "cannot listen" in line]
        self.assertIn(f"mpush: cannot listen on 127.0.0.1:{port} ([net] gateway-server-port or "
                      f"--gateway-port): address already in use (EADDRINUSE)", line)

    def test_bad_redis_url_fails_cleanly(self):
        result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--redis", "mysql://x"])
        self.assertNotEqual(result.returncode, 0)
        message = (result.stdout + result.stderr).strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn("redis", message)


class NodeCase(TestCase):
    timeout = 120

    def start_node(self, config_text, **kwargs):
        node = NodeProcess(config_text, **kwargs)
        self.addCleanup(node.stop)
        return node.start()

    @defer.inlineCallbacks
    def connect(self, port, token, device_id="device-process", public_key=MPUSH_DEMO_PUBLIC_KEY):
        config = ClientConfig(
            host="127.0.0.1",
            port=port,
            public_key=public_key,
            device_id=device_id,
            session_file=token,
            max_heartbeat=20000,
            min_heartbeat=20000,
        )
        client = yield connect_client(config, reactor)
        self.addCleanup(client.close)
        return client



def listen_backlog(port, environ=os.environ, run=subprocess.run):
    """
    The backlog of the socket listening on C{port}, as the kernel reports it
    (C{ss}: Send-Q of a listening socket).  Without C{ss} the test is
    skipped, except under CI, where it is an error (C{.ci/run} installs
    iproute2).
    """
    try:
        output = run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        message = f"no ss(8) to read the listen backlog ({error}; apt-get install iproute2)"
        if environ.get("CI"):
            raise AssertionError(f"{message}; CI must run the backlog test")
        raise SkipTest(message)
    return int(output.split()[2])


class ListenBacklogGateTests(SynchronousTestCase):
    @staticmethod
    def no_ss(*args, **kwargs):
        raise FileNotFoundError("ss")

    def test_missing_ss_skips_outside_ci(self):
        self.assertRaises(SkipTest, listen_backlog, 3000, {}, self.no_ss)

    def test_missing_ss_fails_under_ci(self):
        self.assertRaises(AssertionError, listen_backlog, 3000, {"CI": "true"}, self.no_ss)


def gateway_push_frame(body_size):
    """A GATEWAY_PUSH to an offline user whose body is C{body_size} bytes."""
    # Content of 32 KiB or more has a 4-byte length after the short (spec 4).
    bare = len(GatewayPushMessage("nobody", 0, 1000, b"x" * 0x8000).encode()) - 0x8000
    message = GatewayPushMessage("nobody", 0, 1000, b"x" * (body_size - bare))
    packet = make_raw_packet(Command.GATEWAY_PUSH, message, 1)
    assert len(packet.body) == body_size
    return encode_packet(packet)


class _GatewayPeer(Protocol):
    """Sends one frame; collects the answers until the first one or a close."""

    def __init__(self, frame):
        self.frame = frame
        self.decoder = PacketDecoder(None)
        self.packets = []
        self.closed = False
        self.done = defer.Deferred()

    def connectionMade(self):
        self.transport.write(self.frame)

    def dataReceived(self, data):
        self.packets.extend(self.decoder.feed(data))
        if self.packets:
            self.transport.loseConnection()

    def connectionLost(self, reason):
        self.closed = not self.packets
        self.done.callback(self)


def gateway_exchange(port, frame):
    peer = _GatewayPeer(frame)
    connected = connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), peer)
    return connected.addCallback(lambda _: peer.done)


class NodeProcessTests(NodeCase):
    def test_connect_server_backlog(self):
        """
        [net] connect-server-backlog is the client port's listen backlog, so
        a reconnect storm queues instead of losing SYNs.
        """
        node = self.start_node("[net]\nconnect-server-backlog = 321\n")
        self.assertEqual(listen_backlog(node.port), 321)

    @defer.inlineCallbacks
    def test_gateway_limit_is_one_mebibyte(self):
        """
        The gateway port of a running node answers a GATEWAY_PUSH whose body
        is exactly [core] max-gateway-packet-size (1 MiB by default) and
        closes the connection of one a byte longer, unanswered.
        """
        node = self.start_node(demo_key_config())
        limit = 1 << 20
        answered = yield gateway_exchange(node.gateway_port, gateway_push_frame(limit))
        self.assertEqual(len(answered.packets), 1, answered.packets)
        self.assertIn(answered.packets[0].cmd, (Command.OK, Command.ERROR))
        refused = yield gateway_exchange(node.gateway_port, gateway_push_frame(limit + 1))
        self.assertEqual((refused.packets, refused.closed), ([], True))

    @defer.inlineCallbacks
    def test_embedded_default_generates_and_keeps_key(self):
        node = self.start_node("")
        public_path = os.path.join(node.directory, "state", "rsa_public_key.x509.b64")
        with open(public_path) as stored:
            public_key = stored.read().strip()
        self.assertIn(public_key, node.log())
        private_path = os.path.join(node.directory, "state", "rsa_private_key.pkcs8.b64")
        self.assertEqual(os.stat(private_path).st_mode & 0o777, 0o600)
        client = yield self.connect(node.port, None, public_key=public_key)
        self.assertEqual(client.heartbeat, 180000)
        yield client.ping()
        yield client.close()
        node.restart()
        with open(public_path) as stored:
            self.assertEqual(stored.read().strip(), public_key)

    @defer.inlineCallbacks
    def test_demo_key_restart_and_second_node_share_redis(self):
        redis = start_redis_server(self)
        node_a = self.start_node(demo_key_config(redis.port))
        self.assertIn("demo key pair", node_a.log())
        token = os.path.join(node_a.directory, "token.dat")

        first = yield self.connect(node_a.port, token)
        self.assertFalse(first.resumed)
        self.assertEqual(first.heartbeat, 20000)
        yield first.ping()
        yield first.close()

        # The same node, restarted: the session comes back from Redis.
        node_a.restart()
        resumed = yield self.connect(node_a.port, token)
        self.assertTrue(resumed.resumed)
        self.assertEqual(resumed.session_id, first.session_id)
        yield resumed.ping()
        yield resumed.close()

        # Another node on the same Redis resumes it too.
        node_b = self.start_node(demo_key_config(redis.port))
        elsewhere = yield self.connect(node_b.port, token)
        self.assertTrue(elsewhere.resumed)
        yield elsewhere.ping()


class OperatorSurfaceTests(NodeCase):
    """
    What an operator touches on a running node: the HTTP API with its token,
    /metrics, /healthz and the admin console.
    """

    def http(self, node, method, path, body=None, token=None):
        import json
        import urllib.error
        import urllib.request

        from twisted.internet.threads import deferToThread

        def call():
            request = urllib.request.Request(
                f"http://127.0.0.1:{node.http_port}{path}",
                data=None if body is None else json.dumps(body).encode(),
                method=method,
                headers={"Content-Type": "application/json"},
            )
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:
                    return answer.status, answer.read().decode()
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        return deferToThread(call)

    def console(self, node, command):
        import socket

        from twisted.internet.threads import deferToThread

        def call():
            with socket.create_connection(("127.0.0.1", node.admin_port), timeout=10) as sock:
                sock.sendall(command.encode() + b"\r\nquit\r\n")
                data = b""
                while True:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return data.decode()
                    data += chunk

        return deferToThread(call)

    @defer.inlineCallbacks
    def test_push_over_http_metrics_health_and_console(self):
        import json

        node = self.start_node(demo_key_config() + '[http]\napi-token = "s3cret"\n')
        client = yield self.connect(node.port, None)
        yield client.bind("alice")
        status, _ = yield self.http(node, "POST", "/v1/push", {"users": ["alice"], "content": "x"})
        self.assertEqual(status, 401)
        status, body = yield self.http(
            node, "POST", "/v1/push", {"users": ["alice"], "content": "hello", "ack": "auto"}, "s3cret"
        )
        self.assertEqual(status, 200, body)
        self.assertEqual([r["status"] for r in json.loads(body)["results"]], ["success"])
        received = yield client.wait_for_push(timeout=5)
        self.assertEqual(received.content, b"hello")
        # The token covers everything but /healthz ([http] public-paths).
        for path in ("/metrics", "/v1/allot", "/v1/openapi.json", "/v1/stats"):
            status, body = yield self.http(node, "GET", path)
            self.assertEqual(status, 401, path)
            self.assertEqual(json.loads(body)["error"]["code"], "unauthorized")
        status, body = yield self.http(node, "GET", "/metrics", token="s3cret")
        self.assertEqual(status, 200)
        self.assertIn('mpush_pushes_total{result="success"} 1.0', body)
        self.assertIn("mpush_connections 1.0", body)
        status, body = yield self.http(node, "GET", "/healthz")
        self.assertEqual((status, json.loads(body)["status"]), (200, "ok"))
        self.assertIn("[http] api-token is 6 characters", node.log())
        reply = yield self.console(node, "count conn")
        self.assertIn("Welcome to MPush Console", reply)
        self.assertIn("\r\n1\r\n\r\n", reply)
        self.assertIn("have a good day!", reply)
