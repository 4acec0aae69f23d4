"""
A whole node listening on loopback ports in this process, with the real
reactor: client port, gateway port and the NodeAPI, for one test.
"""

import dataclasses

from twisted.internet import defer, reactor, task

from mpush.config import load_config
from mpush.node_api import NodeAPI
from mpush.offline.nudge import deliver_nudged
from mpush.server.device.connection import ConnectionFactory
from mpush.server.gateway.gateway import GatewayFactory
from mpush.tap import Backends, build_node, make_dispatcher

from tests.server_support import demo_config


class LoopbackNode:
    """
    A node listening on 127.0.0.1 with the real reactor, for one test.
    """

    def __init__(self, test_case, store=None, config=None):
        self.test_case = test_case
        self.config = demo_config(config or load_config(None))
        backends = Backends(self.config, reactor)
        if store is not None:
            backends.sessions = store
        self.node, self.backends, info = build_node(self.config, reactor, backends)
        factory = ConnectionFactory(self.node, make_dispatcher(self.node))
        factory.noisy = False
        self.listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.port = self.listening.getHost().port
        gateway = GatewayFactory(self.node.push_center, self.config.core.max_gateway_packet_size)
        self.gateway_listening = reactor.listenTCP(0, gateway, interface="127.0.0.1")
        self.gateway_port = self.gateway_listening.getHost().port
        self.node.router_center.gateway = ("127.0.0.1", self.gateway_port)
        self.info = dataclasses.replace(
            info, host="127.0.0.1", port=self.gateway_port, connect_host="127.0.0.1", connect_port=self.port
        )
        self.backends.kicks.listen(self.info.host, self.info.port, self.node.router_center.remote_kick)
        center = self.node.router_center
        self.nudges_heard = self.backends.nudges.listen(
            self.info.host, self.info.port, lambda nudge: deliver_nudged(center, nudge)
        )
        self.backends.registry.register(self.info)
        self.api = NodeAPI(self.node, self.backends, self.info, reactor, offline=self.backends.offline)
        test_case.addCleanup(self.stop)

    @defer.inlineCallbacks
    def device(self, user_id):
        """A client bound as C{user_id} (device C{device-of-<user>}), closed after the test."""
        from mpush.client.config import ClientConfig
        from mpush.client.protocol import connect_client
        from mpush.protocol.crypto import MPUSH_DEMO_PUBLIC_KEY

        config = ClientConfig(host="127.0.0.1", port=self.port, public_key=MPUSH_DEMO_PUBLIC_KEY,
                              device_id=f"device-of-{user_id}", user_id=user_id)
        client = yield connect_client(config, reactor)
        self.test_case.addCleanup(client.close)
        return client

    @defer.inlineCallbacks
    def stop(self):
        if self.listening is None:
            return
        yield self.listening.stopListening()
        yield self.gateway_listening.stopListening()
        self.listening = None
        yield self.api.close()
        for connection in list(self.node.connections.values()):
            connection.transport.abortConnection()
        # Let the aborted connections' connectionLost run.
        yield task.deferLater(reactor, 0.01, lambda: None)
        # As a stopping node does: the Redis side of closes still waiting.
        yield self.node.router_center.flush_closes()
        yield self.backends.registry.unregister()
        yield self.backends.close()


