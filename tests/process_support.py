"""
Real C{twistd mpush} processes for end-to-end tests.

Each node runs from this checkout (PYTHONPATH points here, so the plugin in
C{twisted/plugins/} is found) with a config file written by the test, and is
stopped with SIGTERM (SIGKILL after a deadline) in cleanup.
"""

import collections
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


#: Where L{free_port} looks: below Linux's ephemeral range (32768 and up)
#: and above the Redis Cluster tests' ports and bus ports (12000-25999),
#: so no client connection's source port can take a port between the pick
#: and the server's bind (a node listens on 0.0.0.0, which any socket using
#: the port blocks).
_PORT_RANGE = (26000, 32000)
#: How many disjoint shares port ranges are cut into, one per trial worker.
_SHARES = 4


def worker_share(low: int, high: int) -> tuple[int, int]:
    """
    This test process's share of the ports C{[low, high)}.  C{trial -jN}
    runs worker k in C{_trial_temp/k}; each worker picks from its own share,
    so two workers cannot pick the same port between one's probe and its
    bind (each remembers only its own picks).  A lone trial takes share 0.
    """
    name = os.path.basename(os.getcwd())
    index = int(name) % _SHARES if name.isdigit() else 0
    size = (high - low) // _SHARES
    return low + index * size, low + (index + 1) * size
#: Ports handed out lately, never handed out again while remembered.
_handed_out = collections.deque(maxlen=1024)


def free_port():
    """A TCP port free on every IPv4 address, not handed out lately."""
    for _ in range(500):
        port = random.randrange(*worker_share(*_PORT_RANGE))
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("0.0.0.0", port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def twistd_command():
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def node_environment():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class NodeProcess:
    """
    One C{twistd --nodaemon mpush} process.
    """

    def __init__(self, config_text, port=None, extra_args=()):
        self.directory = tempfile.mkdtemp(prefix="mpush-node-")
        self.port = port or free_port()
        self.gateway_port = free_port()
        self.admin_port = free_port()
        self.http_port = free_port()
        self.config_path = os.path.join(self.directory, "mpush.toml")
        with open(self.config_path, "w") as config:
            config.write(config_text)
        self.log_path = os.path.join(self.directory, "twistd.log")
        self.extra_args = list(extra_args)
        self.process = None

    def command(self):
        return twistd_command() + [
            "--nodaemon",
            "--pidfile=",
            "--logfile",
            self.log_path,
            "mpush",
            "--config",
            self.config_path,
            "--connect-port",
            str(self.port),
            "--gateway-port",
            str(self.gateway_port),
            "--admin-port",
            str(self.admin_port),
            "--http-port",
            str(self.http_port),
            "--state-dir",
            os.path.join(self.directory, "state"),
        ] + self.extra_args

    def start(self, timeout=20.0):
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.directory,
            env=node_environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        waiting = [self.port, self.gateway_port, self.admin_port, self.http_port]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode(errors="replace")
                raise RuntimeError(f"mpush node exited with {self.process.returncode}: {output}{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.5).close()
                waiting.pop(0)
                if not waiting:
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mpush node did not listen on {self.port} within {timeout}s: {self.log()}")

    def stop(self, timeout=10.0):
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)
        self.process.stdout.close()

    def restart(self):
        self.stop()
        return self.start()

    def log(self):
        try:
            with open(self.log_path, errors="replace") as log:
                return log.read()
        except OSError:
            return ""


def listening_socket(port):
    """
    C{ss}'s fields for the TCP socket listening on C{port} (Send-Q is the
    backlog, [3] the local address), or C{None} without C{ss}.
    """
    try:
        output = subprocess.run(
            ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return output.split()


def run_twistd(args, timeout=30.0, cwd=None):
    """
    Run C{twistd} to completion (for options and config errors).
    """
    return subprocess.run(
        twistd_command() + list(args),
        cwd=cwd or tempfile.gettempdir(),
        env=node_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def connect_device(test_case, node, user_id):
    """
    A client of C{node} (with the key pair in its state dir) bound as
    C{user_id}, closed in C{test_case}'s cleanup.
    """
    from twisted.internet import reactor

    from mpush.client.config import ClientConfig
    from mpush.client.protocol import connect_client

    with open(os.path.join(node.directory, "state", "rsa_public_key.x509.b64")) as stored:
        public_key = stored.read().strip()
    config = ClientConfig(
        host="127.0.0.1", port=node.port, public_key=public_key, device_id=f"device-of-{user_id}", user_id=user_id
    )
    connected = connect_client(config, reactor)
    return connected.addCallback(lambda client: test_case.addCleanup(client.close) or client)
