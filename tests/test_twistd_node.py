"""
Real C{twistd mpush} processes: the plugin, config errors, the demo key pair,
restarts and two nodes sharing one real Redis.
"""

import os

from twisted.internet import defer, reactor
from twisted.trial.unittest import TestCase

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY

from tests.process_support import NodeProcess, run_twistd
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
        for option in ("--config", "--connect-port", "--gateway-port", "--admin-port", "--redis", "--state-dir"):
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

    def test_bad_redis_url_fails_cleanly(self):
        result = run_twistd(["--nodaemon", "--pidfile=", "mpush", "--redis", "mysql://x"])
        self.assertNotEqual(result.returncode, 0)
        message = (result.stdout + result.stderr).strip()
        self.assertEqual(len(message.splitlines()), 1, message)
        self.assertIn("redis", message)


class NodeProcessTests(TestCase):
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
