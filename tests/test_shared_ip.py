"""
Nodes that share a public IP share MPush's online-user list
C{mp:oul:<ip>}: real nodes (C{twistd mpush}) over a real Redis, one of them
restarted, then SIGKILLed; the other's users stay listed throughout, and
the dead node's leave once the survivor notices it gone.
"""

import signal

from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from tests.process_support import NodeProcess, connect_device
from tests.redis_server import start_redis_server
from tests.test_redis_router import raw_command


def shared_ip_config(redis_port, redis_section=None):
    return (
        "[net]\n"
        'local-ip = "127.0.0.1"\n'
        'public-ip = "127.0.0.1"\n'
        + (redis_section or f'[redis]\nnodes = ["127.0.0.1:{redis_port}"]\n')
        + '[cluster]\nnode-ttl = "2s"\nnode-refresh = "500ms"\ndrain-timeout = "1s"\n'
    )


class SharedOnlineListTests(TestCase):
    timeout = 120

    def setUp(self):
        self.redis = start_redis_server(self)

    #: The [redis] section of the nodes' config; None: C{self.redis}'s port.
    redis_section = None

    def node(self):
        node = NodeProcess(shared_ip_config(self.redis.port, self.redis_section))
        self.addCleanup(node.stop)
        node.start()
        return node

    def device(self, node, user_id):
        return connect_device(self, node, user_id)

    def listed(self):
        return {user.decode() for user in raw_command(self.redis.port, "ZRANGE", "mp:oul:127.0.0.1", "0", "-1")}

    @defer.inlineCallbacks
    def wait_listed(self, expected, timeout=15.0, step=0.05):
        waited = 0.0
        while self.listed() != expected:
            if waited >= timeout:
                self.fail(f"mp:oul:127.0.0.1 is {self.listed()}, never {expected}")
            yield task.deferLater(reactor, step, lambda: None)
            waited += step

    @defer.inlineCallbacks
    def test_restart_and_death_leave_the_other_nodes_users(self):
        a, b = self.node(), self.node()
        for user in ("a1", "a2"):
            yield self.device(a, user)
        yield self.device(b, "b1")
        yield self.wait_listed({"a1", "a2", "b1"})

        # B restarts (a clean stop, then a start): A's users stay listed.
        b.restart()
        yield self.device(b, "b2")
        yield self.wait_listed({"a1", "a2", "b2"})

        # B dies without a word: once A notices (node-ttl), B's users go.
        b.process.send_signal(signal.SIGKILL)
        b.process.wait()
        yield self.wait_listed({"a1", "a2"})
        self.assertIn("node 127.0.0.1:%d is gone" % b.gateway_port, a.log())
