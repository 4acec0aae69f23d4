"""
The seam between the push path and wherever offline messages wait.

A push with an offline TTL to a user who is not connected is kept until the
user binds again; the push center stores it and the bind delivers it, and
neither should care whether the queue lives in process memory (one node) or
in Redis (shared by every node).  Both talk to L{IOfflineStore}; the
implementation is chosen once from config.

What both implementations share lives here too, so a caller's mistake shows
the same way whichever store is configured: the message type, the argument
checks, the bounds and the counters.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from twisted.logger import Logger
from zope.interface import Interface

__all__ = [
    "ACK_MODELS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_COUNT",
    "STAT_NAMES",
    "AddResult",
    "IOfflineStore",
    "InvalidOfflineMessage",
    "OfflineCounters",
    "OfflineInputError",
    "OfflineMessage",
    "OfflineStoreUnavailable",
    "check_lease",
    "check_limits",
    "check_message_id",
    "check_message_ids",
    "check_now",
    "check_owner",
    "check_user_id",
    "new_offline_message",
]

#: How the device acknowledges a PUSH (spec 12.4): not at all, by its SDK, or
#: by the application.
ACK_MODELS = ("none", "auto", "biz")

#: Per-user bounds when the config names none.
DEFAULT_MAX_COUNT = 100
DEFAULT_MAX_BYTES = 256 * 1024

#: Longest user id, message id or claim owner accepted: far above what MPush
#: clients use, low enough that a key or a hash field stays small.
MAX_ID_LENGTH = 256

#: The keys of L{IOfflineStore.stats}.
STAT_NAMES = ("stored", "dropped_full", "expired", "delivered", "refused_too_large")


class OfflineStoreUnavailable(Exception):
    """
    The backend could not answer (down, too slow, refused the command, or
    the store is closed).  The message names the backend and the reason.
    """


class OfflineInputError(ValueError):
    """
    A caller passed something the store cannot take (a bad user id, owner,
    lease or time).  A programming error, never an outage.
    """


class InvalidOfflineMessage(OfflineInputError):
    """
    An L{OfflineMessage} field is of the wrong type or out of range.
    """


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise OfflineInputError(f"{what} must be text, not {type(value).__name__}")
    if not value:
        raise OfflineInputError(f"{what} must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise OfflineInputError(f"{what} longer than {MAX_ID_LENGTH} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # txredisapi would fail to encode it, which would look like an outage.
        raise OfflineInputError(f"{what} is not valid unicode text") from None
    return value


def check_user_id(user_id: object) -> str:
    """A non-empty user id, as BIND carries it."""
    return _check_id(user_id, "user id")


def check_owner(owner: object) -> str:
    """A non-empty claim owner (a connection id)."""
    return _check_id(owner, "claim owner")


def check_message_id(message_id: object) -> str:
    """A non-empty message id."""
    return _check_id(message_id, "message id")


def check_message_ids(message_ids: object) -> frozenset[str] | None:
    """C{None} (every claim of an owner), or the ids L{IOfflineStore.release} names."""
    if message_ids is None:
        return None
    if isinstance(message_ids, (str, bytes)):
        raise OfflineInputError("message_ids must be a collection of ids, not a single string")
    try:
        wanted = frozenset(message_ids)
    except TypeError:
        raise OfflineInputError(f"message_ids must be a collection of ids, not {message_ids!r}") from None
    for message_id in wanted:
        check_message_id(message_id)
    return wanted


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise OfflineInputError(f"{what} must be an int, not {value!r}")
    if value < minimum:
        raise OfflineInputError(f"{what} must be >= {minimum}, not {value}")
    return value


def check_lease(lease_ms: object) -> int:
    """A positive lease in milliseconds."""
    return _check_int(lease_ms, "lease_ms", 1)


def check_now(now_ms: object) -> int:
    """Wall-clock milliseconds, never negative."""
    return _check_int(now_ms, "now_ms", 0)


def check_limits(max_count: object, max_bytes: object) -> tuple[int, int]:
    """
    Per-user bounds for a store's constructor; C{ValueError} when one is not
    a positive int.
    """
    for name, value in (("max_count", max_count), ("max_bytes", max_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, not {value!r}")
    return max_count, max_bytes


@dataclass(frozen=True, slots=True)
class OfflineMessage:
    """
    One push waiting for its user.

    @ivar message_id: unique per user; adding an id already queued is a no-op.
    @ivar content: the PUSH body, exactly as it will be written.
    @ivar ack: one of L{ACK_MODELS}; it becomes the PUSH's ack flag bits.
    @ivar created_ms: when it was stored (wall-clock milliseconds).
    @ivar expires_ms: from this instant on it is dropped, never delivered;
        always after C{created_ms}.
    """

    message_id: str
    content: bytes
    ack: str
    created_ms: int
    expires_ms: int

    def __post_init__(self) -> None:
        try:
            _check_id(self.message_id, "message id")
            _check_int(self.created_ms, "created_ms", 0)
            _check_int(self.expires_ms, "expires_ms", 0)
        except OfflineInputError as error:
            raise InvalidOfflineMessage(str(error)) from None
        if isinstance(self.content, (bytearray, memoryview)):
            object.__setattr__(self, "content", bytes(self.content))
        elif not isinstance(self.content, bytes):
            raise InvalidOfflineMessage(
                f"content must be bytes, not {type(self.content).__name__}"
            )
        if self.ack not in ACK_MODELS:
            raise InvalidOfflineMessage(f"ack must be one of {ACK_MODELS}, not {self.ack!r}")
        if self.expires_ms <= self.created_ms:
            raise InvalidOfflineMessage(
                f"expires_ms ({self.expires_ms}) must be after created_ms ({self.created_ms})"
            )

    @property
    def size(self) -> int:
        """What the message counts against the per-user byte bound."""
        return len(self.content)

    def expired(self, now_ms: int) -> bool:
        return now_ms >= self.expires_ms


def new_offline_message(
    content: bytes, ack: str, now_ms: int, ttl_s: int, message_id: str | None = None
) -> OfflineMessage:
    """
    The message a push with C{offline_ttl = ttl_s} seconds becomes at
    C{now_ms}; a fresh uuid4 hex id unless the push already has one.

    @raise InvalidOfflineMessage: for a bad field or a non-positive TTL.
    """
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
        raise InvalidOfflineMessage(f"offline ttl must be a positive int of seconds, not {ttl_s!r}")
    if isinstance(now_ms, bool) or not isinstance(now_ms, int):
        raise InvalidOfflineMessage(f"now_ms must be an int, not {now_ms!r}")
    return OfflineMessage(
        message_id=uuid.uuid4().hex if message_id is None else message_id,
        content=content,
        ack=ack,
        created_ms=now_ms,
        expires_ms=now_ms + ttl_s * 1000,
    )


@dataclass(frozen=True, slots=True)
class AddResult:
    """
    What L{IOfflineStore.add} did.

    @ivar stored: whether the message is now queued (C{False} only when it
        was refused as larger than the byte bound).
    @ivar dropped: how many older messages of the user were dropped to make
        room for it.
    """

    stored: bool
    dropped: int


class OfflineCounters:
    """
    What a store did since it was made (this process's view, even when the
    queues are shared in Redis), for metrics.

    @ivar listener: C{None}, or a callable C{(name, count)} told of every
        increment, e.g. to move a Prometheus counter.  Its errors are logged
        and otherwise ignored: metrics must never break a push.
    """

    __slots__ = ("_counts", "listener")

    log = Logger()

    def __init__(self, listener=None) -> None:
        self._counts = dict.fromkeys(STAT_NAMES, 0)
        self.listener = listener

    def add(self, name: str, count: int = 1) -> None:
        if count <= 0:
            return
        self._counts[name] += count
        if self.listener is not None:
            try:
                self.listener(name, count)
            except Exception:
                self.log.failure("offline counter listener failed on {name}", name=name)

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)


class IOfflineStore(Interface):
    """
    Per-user queues of L{OfflineMessage}s, oldest first, bounded in count and
    content bytes.  Every method but L{stats} returns a
    L{twisted.internet.defer.Deferred} and never raises synchronously: bad
    arguments errback with L{OfflineInputError}, an unavailable backend with
    L{OfflineStoreUnavailable}.

    A message is either free or I{claimed} by one owner (a connection id)
    until a lease ends.  Claiming is what makes delivery happen once when two
    devices of a user bind at the same moment, possibly on two nodes.

    Expiry is checked against the C{now_ms} the caller passes (to L{claim})
    or the new message's C{created_ms} (in L{add}): no store reads a clock.
    An expired message is removed and counted as C{expired} in L{stats}
    unless it is claimed under a live lease (it is being delivered; its ack
    or the end of the lease decides).
    """

    def add(user_id, message):
        """
        Append C{message} to C{user_id}'s queue.

        Expired messages are purged first.  Then, while the queue is over
        C{max_count} messages or C{max_bytes} of content with the new one,
        the oldest is dropped (claimed or not) and counted as
        C{dropped_full}.  A message larger than C{max_bytes} on its own is
        refused (C{stored=False}, counted as C{refused_too_large}) and the
        queue is left alone.  Adding a message id already queued changes
        nothing and answers C{AddResult(True, 0)}.

        @return: a Deferred firing an L{AddResult}.
        """

    def claim(user_id, owner, lease_ms, now_ms):
        """
        Atomically take every unexpired message of C{user_id} that is not
        claimed under a live lease (by anyone, C{owner} included: those are
        in flight already), mark them claimed by C{owner} until
        C{now_ms + lease_ms}, and return them oldest first.  Expired ones are
        removed on the way and counted in L{stats} (C{expired}).

        @return: a Deferred firing a list of L{OfflineMessage}.
        """

    def remove(user_id, message_id):
        """
        Delete a delivered message (after its ack, or right after the write
        for NO_ACK), whoever claims it; counted as C{delivered}.

        @return: a Deferred firing whether it was there.
        """

    def release(user_id, owner, message_ids=None):
        """
        Drop C{owner}'s claims on C{user_id}'s messages (all of them, or only
        those in C{message_ids}), so the next bind delivers them without
        waiting for the lease: the connection closed before they were
        written or acked.  Claims of other owners are left alone.

        @return: a Deferred firing how many claims were dropped.
        """

    def count(user_id):
        """
        @return: a Deferred firing how many messages C{user_id} has queued,
            claimed or not, including expired ones not purged yet.
        """

    def stats():
        """
        @return: a dict (synchronously) of this process's counters, keyed by
            L{STAT_NAMES}: C{stored}, C{dropped_full}, C{expired},
            C{delivered}, C{refused_too_large}.
        """

    def close():
        """
        Release memory or connections.  Later calls errback with
        L{OfflineStoreUnavailable}.

        @return: a Deferred firing C{None}.
        """
