"""
Load for failover tests: devices that reconnect in a storm (fast connect
with their stored session) and AUTO_ACK pushes to them, each counted by how
it ended.  The point is the ledger: a push or a reconnect that never ends
is a hang, and a push reported C{success} that no device received is a
silent loss; both are what a failover must not cause.
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import tempfile

from twisted.internet import defer, task
from twisted.python.failure import Failure

from mpush.client.config import ClientConfig
from mpush.client.protocol import connect_client
from mpush.push import AckModel, PushStatus


def public_key_of(node) -> str:
    with open(os.path.join(node.directory, "state", "rsa_public_key.x509.b64")) as stored:
        return stored.read().strip()


class DeviceFleet:
    """
    C{count} devices spread over C{nodes}, each with a session file so a
    reconnect is a fast connect.  L{reconnect_one} closes a device and
    connects it again; what each connect ended as is counted in C{connects}.
    """

    def __init__(self, reactor, nodes, count: int, prefix: str = "dev") -> None:
        self.reactor = reactor
        self.nodes = nodes
        self.keys = {node.port: public_key_of(node) for node in nodes}
        self.directory = tempfile.mkdtemp(prefix="mpush-fleet-")
        self.users = [f"{prefix}-{n}" for n in range(count)]
        self.clients: dict[str, object] = {}
        self.received: set[bytes] = set()
        self.connects: collections.Counter = collections.Counter()
        self.in_flight: set[defer.Deferred] = set()
        self.connecting: set[str] = set()

    def config(self, user: str, node) -> ClientConfig:
        return ClientConfig(
            host="127.0.0.1",
            port=node.port,
            public_key=self.keys[node.port],
            device_id=f"device-of-{user}",
            user_id=user,
            session_file=os.path.join(self.directory, user),
            handshake_timeout=3.0,
            bind_timeout=3.0,
            connect_timeout=3.0,
        )

    def node_of(self, user: str):
        return self.nodes[self.users.index(user) % len(self.nodes)]

    def connect(self, user: str) -> defer.Deferred:
        """Connect (or reconnect) C{user}'s device; never fails, always ends."""

        def prepare(protocol):
            protocol.on_push = lambda content, sid, flags: self.received.add(content)

        self.connecting.add(user)
        connected = connect_client(self.config(user, self.node_of(user)), self.reactor, prepare=prepare)
        self.in_flight.add(connected)

        def ended(result):
            self.in_flight.discard(connected)
            self.connecting.discard(user)
            if isinstance(result, Failure):
                self.connects[f"failed: {result.type.__name__}"] += 1
                return None
            self.connects["fast connect" if result.resumed else "handshake"] += 1
            self.clients[user] = result
            return result

        return connected.addBoth(ended)

    def reconnect_one(self) -> None:
        """Close a random device and connect it again (not waited for: a storm)."""
        user = random.choice(self.users)
        if user in self.connecting:
            return
        client = self.clients.pop(user, None)
        self.connecting.add(user)
        closed = client.close() if client is not None else defer.succeed(None)
        closed.addBoth(lambda _: self.connect(user))

    def close(self) -> defer.Deferred:
        closed = defer.gatherResults([client.close() for client in self.clients.values()], consumeErrors=True)
        return closed.addBoth(lambda _: shutil.rmtree(self.directory, ignore_errors=True))


class PushLedger:
    """
    AUTO_ACK pushes to the fleet's users, each counted once by its final
    status (or by the exception it failed with) when it ends.
    """

    def __init__(self, pusher, fleet: DeviceFleet, timeout: float = 3.0) -> None:
        self.pusher = pusher
        self.fleet = fleet
        self.timeout = timeout
        self.sent = 0
        self.outcomes: collections.Counter = collections.Counter()
        self.succeeded: list[bytes] = []
        self.in_flight: set[defer.Deferred] = set()

    def push_one(self) -> None:
        self.sent += 1
        content = b"push-%d" % self.sent
        pushed = self.pusher.push(random.choice(self.fleet.users), content, ack=AckModel.AUTO_ACK,
                                  timeout=self.timeout)
        self.in_flight.add(pushed)

        def ended(result):
            self.in_flight.discard(pushed)
            if isinstance(result, Failure):
                self.outcomes[f"error: {result.type.__name__}"] += 1
                return None
            # One result per route; a user has one device here.
            status = result[0].status
            self.outcomes[status.value] += 1
            if status == PushStatus.SUCCESS:
                self.succeeded.append(content)
            return None

        pushed.addBoth(ended)

    @property
    def answered(self) -> int:
        return sum(self.outcomes.values())

    def silently_lost(self) -> list[bytes]:
        """Pushes reported delivered that no device received."""
        return [content for content in self.succeeded if content not in self.fleet.received]


class Load:
    """Run pushes and reconnects at fixed rates until L{stop}."""

    def __init__(self, reactor, ledger: PushLedger, fleet: DeviceFleet,
                 push_interval: float = 0.02, reconnect_interval: float = 0.05) -> None:
        self.pushes = task.LoopingCall(ledger.push_one)
        self.pushes.clock = reactor
        self.reconnects = task.LoopingCall(fleet.reconnect_one)
        self.reconnects.clock = reactor
        self.push_interval = push_interval
        self.reconnect_interval = reconnect_interval

    def start(self) -> None:
        self.pushes.start(self.push_interval, now=False)
        self.reconnects.start(self.reconnect_interval, now=False)

    def stop(self) -> None:
        for loop in (self.pushes, self.reconnects):
            if loop.running:
                loop.stop()


def sleep(reactor, seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)
