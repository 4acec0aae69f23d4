"""
Delivering a user's offline messages when the user binds (after a full
handshake or a fast connect: the Java client binds again after both).

One delivery claims the user's messages for the connection, writes them as
PUSH packets in order, and removes each once it is delivered: right after
the write for NO_ACK, on the device's ACK otherwise.  The claim is what
makes delivery happen once when two devices of the user bind at the same
moment, on this node or another sharing the Redis store.

Messages are pipelined: the next PUSH is written without waiting for the
previous ACK.  One TCP stream keeps them in order, the Java client acks each
PUSH on its own, and waiting would make a queue of 100 take 100 round
trips.  A missed ACK leaves its message claimed until the lease ends; the
next bind after that delivers it again (at least once, never lost).

A delivery never fails: store errors are logged and counted, and a
connection that closes, stops being writable or changes user stops it;
what was not written is released at once so the next bind gets it.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from mpush.offline.interfaces import IOfflineStore, OfflineInputError
from mpush.protocol.messages import PushMessage
from mpush.protocol.packet import Command, Flags
from mpush.server.gateway.acks import AckTable, AckTimeout

__all__ = [
    "ACK_FLAGS",
    "ACK_SHARE_OF_LEASE",
    "DEFAULT_LEASE_MS",
    "DELIVERY_STAT_NAMES",
    "OfflineDelivery",
    "ack_model_of_flags",
]

#: The PUSH flag bits of each ack model (spec 12.4).
ACK_FLAGS = {"none": 0, "auto": int(Flags.AUTO_ACK), "biz": int(Flags.BIZ_ACK)}

#: How long a claim keeps other binds off a user's messages ([offline] lease).
DEFAULT_LEASE_MS = 30_000
#: A written message waits for its ACK this share of the lease by default:
#: the rest covers the claim's round trip, so a message is never handed to
#: another bind while its ACK may still come.
ACK_SHARE_OF_LEASE = 3

#: The keys of L{OfflineDelivery.stats}.
DELIVERY_STAT_NAMES = ("sent", "delivered", "ack_missed", "released", "store_errors")


def ack_model_of_flags(flags: int) -> str:
    """
    The ack model a GATEWAY_PUSH's flags ask for.  With both bits set the
    Java SDK acks on receipt, so that is C{"auto"}.
    """
    if flags & Flags.AUTO_ACK:
        return "auto"
    if flags & Flags.BIZ_ACK:
        return "biz"
    return "none"


def _positive_ms(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int of milliseconds, not {value!r}")
    return value


class OfflineDelivery:
    """
    Delivers offline messages to the connections users bind on.

    @param store: an L{IOfflineStore}.
    @param acks: the node's L{AckTable} (the ACK handler resolves it).
    @param clock: the node's clock; C{now} for claims.
    @param lease_ms: how long a claim lasts; must exceed C{ack_timeout_ms}.
    @param ack_timeout_ms: how long a written message waits for its ACK;
        by default a third of C{lease_ms}.
    """

    log = Logger()

    def __init__(
        self,
        store: IOfflineStore,
        acks: AckTable,
        clock: IReactorTime,
        lease_ms: int = DEFAULT_LEASE_MS,
        ack_timeout_ms: int | None = None,
    ) -> None:
        self.lease_ms = _positive_ms(lease_ms, "lease_ms")
        if ack_timeout_ms is None:
            ack_timeout_ms = max(lease_ms // ACK_SHARE_OF_LEASE, 1)
        self.ack_timeout_ms = _positive_ms(ack_timeout_ms, "ack_timeout_ms")
        if lease_ms <= ack_timeout_ms:
            raise ValueError(
                f"lease_ms ({lease_ms}) must exceed ack_timeout_ms ({ack_timeout_ms}): "
                "a message must not be handed to another bind while its ack may still come"
            )
        self.store = store
        self.acks = acks
        self.clock = clock
        self._counts = dict.fromkeys(DELIVERY_STAT_NAMES, 0)
        #: C{None}, or C{observer(event, user_id, message)} told when a
        #: message is C{"written"} and when it is C{"acked"} (the node API
        #: keeps its tasks' counts with it).
        self.observer = None
        # Connections that claimed messages: only their closes have claims
        # to give back, so the others (nearly all) cost the store nothing.
        self._claimants: set[str] = set()

    def stats(self) -> dict[str, int]:
        """
        This process's delivery counters: PUSHes C{sent}, messages
        C{delivered} (NO_ACK written, or acked), C{ack_missed},
        unwritten messages C{released}, and C{store_errors}.
        """
        return dict(self._counts)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def deliver(self, connection, user_id: str, next_packet_id) -> defer.Deferred:
        """
        Deliver C{user_id}'s offline messages on C{connection}, which must be
        bound to C{user_id} already (its BIND answered).

        @param next_packet_id: a callable giving a fresh PUSH packet id (the
            node's C{next_packet_id}).
        @return: a Deferred that fires, never fails, once every message is
            settled (written and removed for NO_ACK; acked and removed, or
            its ack missed, otherwise), with the number delivered.  It can
            take C{ack_timeout_ms}: do not make the BIND handler wait for
            it, the ACKs arrive on the same connection behind that handler.
        """
        try:
            run = _Run(self, connection, user_id, next_packet_id)
            result = run.start()
        except Exception:
            self.log.failure("offline delivery to {user} failed", user=user_id)
            return defer.succeed(0)

        def unexpected(failure):
            self.log.failure("offline delivery to {user} failed", failure, user=user_id)
            return 0

        return result.addErrback(unexpected)

    def release_claims(self, user_id: str, owner: str) -> defer.Deferred:
        """
        Give back what connection C{owner} claimed of C{user_id}'s messages
        and did not settle (it closed): the next bind gets them.

        @return: a Deferred of how many claims went back (0 at once for a
            connection that never claimed any).
        """
        if owner not in self._claimants:
            return defer.succeed(0)
        self._claimants.discard(owner)
        return defer.maybeDeferred(self.store.release, user_id, owner)

    def _count(self, name: str, count: int = 1) -> None:
        self._counts[name] += count

    def _observe(self, event: str, user_id: str, message) -> None:
        if self.observer is None:
            return
        try:
            self.observer(event, user_id, message)
        except Exception:
            self.log.failure("offline delivery observer failed on {event}", event=event)


class _Run:
    """One delivery to one connection."""

    __slots__ = ("delivery", "connection", "user_id", "owner", "next_packet_id")

    def __init__(self, delivery: OfflineDelivery, connection, user_id: str, next_packet_id) -> None:
        self.delivery = delivery
        self.connection = connection
        self.user_id = user_id
        self.owner = connection.conn_id
        self.next_packet_id = next_packet_id

    @property
    def log(self):
        return self.delivery.log

    def start(self) -> defer.Deferred:
        if not self.connection.is_open:
            return defer.succeed(0)
        delivery = self.delivery
        claimed = defer.maybeDeferred(
            delivery.store.claim, self.user_id, self.owner, delivery.lease_ms, delivery.now_ms()
        )
        return claimed.addCallbacks(self._send_all, self._claim_failed)

    def _claim_failed(self, failure) -> int:
        if not failure.check(OfflineInputError):
            self.delivery._count("store_errors")
        self.log.warn(
            "offline messages of {user} not claimed: {why}", user=self.user_id, why=failure.getErrorMessage()
        )
        return 0

    def _can_send(self) -> bool:
        connection = self.connection
        return (
            connection.is_open
            and connection.writable
            and connection.context.user_id == self.user_id
        )

    def _send_all(self, messages) -> defer.Deferred:
        if not messages:
            return defer.succeed(0)  # nearly every bind
        self.delivery._claimants.add(self.owner)
        settled = []
        for index, message in enumerate(messages):
            if not self._can_send():
                self._release(messages[index:])
                break
            settled.append(self._send(message))
        if messages:
            self.log.info(
                "offline delivery to {user} on {peer}: {n} of {total} written",
                user=self.user_id,
                peer=self.connection.peer,
                n=len(settled),
                total=len(messages),
            )
        return defer.gatherResults(settled, consumeErrors=True).addCallback(sum)

    def _send(self, message) -> defer.Deferred:
        """Write one message; fire whether it was delivered."""
        delivery = self.delivery
        packet_id = self.next_packet_id()
        flags = ACK_FLAGS[message.ack]
        acked = None
        try:
            if flags:
                # Registered before the write, so an ACK cannot come first.
                acked = delivery.acks.expect(packet_id, delivery.ack_timeout_ms / 1000.0, self.connection)
            written = self.connection.send(Command.PUSH, PushMessage(message.content), packet_id, flags)
        except Exception:
            _withdraw(acked)
            self.log.failure("offline message {id} of {user} not written", id=message.message_id, user=self.user_id)
            self._release([message])
            return defer.succeed(False)

        def write_failed(failure) -> bool:
            _withdraw(acked)
            self.log.info(
                "offline message {id} of {user} not written: {why}",
                id=message.message_id,
                user=self.user_id,
                why=failure.getErrorMessage(),
            )
            self._release([message])
            return False

        def written_ok(_) -> defer.Deferred:
            delivery._count("sent")
            delivery._observe("written", self.user_id, message)
            if acked is None:
                return self._remove(message)
            return acked.addCallbacks(self._acked, self._ack_missed, callbackArgs=(message,), errbackArgs=(message,))

        return written.addCallbacks(written_ok, write_failed)

    def _acked(self, _, message) -> defer.Deferred:
        self.delivery._observe("acked", self.user_id, message)
        return self._remove(message)

    def _ack_missed(self, failure, message) -> bool:
        failure.trap(AckTimeout, defer.CancelledError)
        self.delivery._count("ack_missed")
        self.log.info(
            "offline message {id} of {user} not acked; redelivered after the lease",
            id=message.message_id,
            user=self.user_id,
        )
        return False

    def _remove(self, message) -> defer.Deferred:
        """Delivered: take it out of the store; fire C{True} either way."""
        self.delivery._count("delivered")
        removed = defer.maybeDeferred(self.delivery.store.remove, self.user_id, message.message_id)
        removed.addErrback(self._store_error, "not removed after delivery (it will come again)", message.message_id)
        return removed.addCallback(lambda _: True)

    def _release(self, messages) -> None:
        ids = [message.message_id for message in messages]
        self.delivery._count("released", len(ids))
        released = defer.maybeDeferred(self.delivery.store.release, self.user_id, self.owner, ids)
        released.addErrback(self._store_error, "not released (deliverable after the lease)", ", ".join(ids))

    def _store_error(self, failure, what: str, ids: str) -> None:
        self.delivery._count("store_errors")
        self.log.warn(
            "offline message(s) {ids} of {user} {what}: {why}",
            ids=ids,
            user=self.user_id,
            what=what,
            why=failure.getErrorMessage(),
        )


def _withdraw(acked: defer.Deferred | None) -> None:
    """Stop waiting for the ack of a PUSH that was never written."""
    if acked is not None:
        acked.addErrback(_cancelled)
        acked.cancel()


def _cancelled(failure) -> None:
    failure.trap(defer.CancelledError)
