"""
The seams between the bind/push/kick logic and wherever shared routing state
lives: process memory for a lone node, Redis when nodes (ours or MPush's
Java ones) share it.

Every method returns a L{twisted.internet.defer.Deferred} and never raises
synchronously, unless its docstring says it does not return one.  A backend
that is down or too slow errbacks with L{RouterUnavailable} within the
implementation's timeout: callers decide whether that fails the request
(push) or is logged and ridden out (Java swallows route errors on bind).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from mpush.protocol.routing import InvalidKick, KickRequest, NodeInfo, decode_kick, encode_kick, kick_channel

__all__ = [
    "IKickChannel",
    "INodeRegistry",
    "IRemoteRouter",
    "IUserEvents",
    "NodeInfo",
    "RouterUnavailable",
    "call_registered_again",
    "check_registry_options",
    "deliver_kick",
    "kick_message",
]


class RouterUnavailable(Exception):
    """
    The routing backend could not answer (down, too slow, refused the
    command, or closed).  The message names the backend and the reason.
    """


class IRemoteRouter(Interface):
    """
    Routes shared by every node: hash C{mp:ur:<userId>}, field = client type,
    value = ClientLocation JSON (spec 11.4, 19.1), plus our per-node index
    C{mp:nr:<host>:<port>} of C{<userId>\\t<clientType>} members so the routes
    of a dead node can be found.
    """

    def register(user_id, client_type, location):
        """
        Write C{location} (an L{mpush.protocol.routing.ClientLocation}) as
        the route of (user_id, client_type), and, if online, index it under
        its host:port (taking it out of the previous owner's index).

        @return: Deferred firing the B{previous} ClientLocation or C{None}
            (also C{None} when the previous value was undecodable).
        """

    def lookup(user_id):
        """
        @return: Deferred firing C{dict[int, ClientLocation]}, client type ->
            route, online and offline alike; undecodable fields are skipped
            (and logged).
        """

    def lookup_many(user_ids):
        """
        L{lookup} of each of C{user_ids} at once (optional: callers fall back
        to one L{lookup} each).

        @return: Deferred firing a list of route dicts in C{user_ids}' order.
        """

    def lookup_type(user_id, client_type):
        """
        @return: Deferred firing the ClientLocation of (user_id, client_type)
            or C{None} (missing or undecodable).
        """

    def mark_offline(user_id, client_type, conn_id=None, device_id=None):
        """
        Rewrite the route without its connId, only if it is online and
        (C{conn_id} is given and equal) or (C{device_id} is given and equal).
        Atomic: a user who has just re-bound elsewhere is never marked
        offline.  With neither given nothing is changed.

        @return: Deferred firing C{True} if the route was changed.
        """

    def mark_node_offline(host, port, unless_back=False):
        """
        Mark offline every route indexed under gateway C{host:port} that still
        points at it and is online (same atomic check as L{mark_offline});
        each member leaves the index as it is handled, so the index ends
        empty (and deleted) unless a route was re-registered there meanwhile.

        With C{unless_back} (a survivor cleaning up after a node it found
        dead), stop as soon as that node is registered again: it was alive
        after all and is writing its routes again (L{INodeRegistry.
        on_registered_again}); marking on would undo that.

        @return: Deferred firing how many routes were marked offline.
        """

    def close():
        """
        Stop; later calls errback with L{RouterUnavailable}.

        @return: Deferred firing C{None}.
        """


class IUserEvents(Interface):
    """
    The online-user list C{mp:oul:<publicIp>} and the online/offline
    channels (spec 11.7).
    """

    public_ip = Attribute("The IP whose online-user list this is.")

    def user_online(user_id):
        """
        C{ZADD mp:oul:<publicIp> 0 <userId>}, then C{PUBLISH /mpush/online/ <userId>};
        and note that this node put the user there.

        @return: Deferred firing C{None}.
        """

    def user_offline(user_id):
        """
        C{ZREM mp:oul:<publicIp> <userId>} unless another node sharing the
        list still has the user online, then C{PUBLISH /mpush/offline/ <userId>}.

        @return: Deferred firing C{None}.
        """

    def count_online():
        """
        @return: Deferred firing the number of users in the list (ZCARD).
        """

    def clear():
        """
        Take out of the list the users this node put there and no other
        node has online (a node's start and stop); clear the list when no
        node has anyone in it (what is left came from older versions).

        @return: Deferred firing C{None}.
        """

    def release_node(host, port):
        """
        L{clear} for the dead node of gateway endpoint C{(host, port)}, on
        whatever IP it had; nothing if that node is registered again.

        @return: Deferred firing how many users left the list.
        """

    def close():
        """
        Stop; later calls errback with L{RouterUnavailable}.

        @return: Deferred firing C{None}.
        """


class IKickChannel(Interface):
    """
    Remote kicks: C{PUBLISH /mpush/kick/<host>:<port> <kick JSON>} to the
    server owning a route, which listens on its own channel (spec 11.8).
    """

    def publish(kick):
        """
        Send C{kick} (an L{mpush.protocol.routing.KickRequest}) to the
        channel of C{kick.target_server:kick.target_port}.

        @return: Deferred firing the number of listeners that received it.
        """

    def listen(host, port, on_kick):
        """
        Call C{on_kick(KickRequest)} for every valid kick published to this
        node's channel whose target is C{host:port}.  Garbage and kicks
        addressed elsewhere are logged and dropped; an exception from
        C{on_kick} is logged.  The subscription is kept across backend
        reconnects until L{close}.

        @return: Deferred firing C{None} once subscribed; it errbacks with
            L{RouterUnavailable} if that takes longer than the timeout (the
            subscription is still retried in the background).
        """

    def close():
        """
        Unsubscribe and release the subscriber connection.

        @return: Deferred firing C{None}.
        """


class INodeRegistry(Interface):
    """
    Which mpush nodes are alive (ours: MPush used ZooKeeper ephemeral
    nodes).  A node's registration expires unless refreshed; a surviving
    node that notices the expiry reports the node dead exactly once, so its
    routes can be marked offline (L{IRemoteRouter.mark_node_offline}).
    """

    def register(info):
        """
        Announce this node (an L{NodeInfo}) and keep refreshing it on the
        clock until L{unregister} or L{close}; each refresh also looks for
        dead nodes.

        @return: Deferred firing C{None} after the first write; on
            L{RouterUnavailable} the refreshes keep trying.
        """

    def nodes():
        """
        @return: Deferred firing C{list[NodeInfo]} of live nodes, sorted by
            (host, port).
        """

    def is_alive(host, port):
        """
        @return: Deferred firing whether a node with gateway C{host:port} is
            registered and not expired.
        """

    def check_nodes():
        """
        Look for registrations that have expired now (what each refresh
        does).  For each one this registry is the first to notice, call the
        L{on_node_dead} callbacks.

        @return: Deferred firing the list of NodeInfo reported dead by this call.
        """

    def unregister():
        """
        Stop refreshing and remove this node's registration (clean shutdown:
        no other node will report it dead).

        @return: Deferred firing C{None}.
        """

    def on_registered_again(callback):
        """
        Call C{callback()} when a refresh finds this node's registration had
        gone from the list of nodes (another node took it for dead and
        marked its routes offline, or Redis lost it): the node writes its
        routes again.

        Does not return a Deferred: returns C{None}.
        """

    def on_node_dead(callback):
        """
        Call C{callback(NodeInfo)} for each node found dead (see
        L{check_nodes}).  A Deferred it returns is waited for and its failure
        logged.  For a node whose registration was never read, the NodeInfo
        has only host and port (C{connect_host=None}, C{connect_port=0},
        C{started_ms=0}).

        Does not return a Deferred: returns C{None}.
        """

    def close():
        """
        Stop refreshing, without unregistering (the registration expires).

        @return: Deferred firing C{None}.
        """


def check_registry_options(ttl: object, refresh: object) -> None:
    """
    Both registries refuse the same timings: a refresh period that is not
    comfortably shorter than the TTL would let a live node expire.
    """
    for name, value in (("ttl", ttl), ("refresh", refresh)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
    if not refresh < ttl:
        raise ValueError(f"refresh ({refresh!r} s) must be shorter than ttl ({ttl!r} s)")


def call_registered_again(callbacks: list[Callable[[], object]], log: Logger) -> None:
    """
    Call each L{INodeRegistry.on_registered_again} callback; one that fails
    is logged and spoils none of the others.
    """
    for callback in list(callbacks):
        defer.maybeDeferred(callback).addErrback(lambda f: log.failure("registered-again callback failed", f))


def kick_message(kick: KickRequest) -> tuple[str, str]:
    """
    (channel, message) to publish C{kick} on.

    @raise InvalidKick: not a kick, or one without a target server.
    """
    message = encode_kick(kick)
    if kick.target_server is None:
        raise InvalidKick("a kick needs a target server")
    return kick_channel(kick.target_server, kick.target_port), message


def deliver_kick(log: Logger, host: str, port: int, on_kick: Callable, message) -> None:
    """
    What a kick listener does with one channel message, Redis or memory:
    decode, check the target, hand over; never raise into the transport.
    """
    try:
        kick = decode_kick(message)
    except InvalidKick as e:
        log.warn("dropping bad kick on {channel}: {why}", channel=kick_channel(host, port), why=e)
        return
    if (kick.target_server, kick.target_port) != (host, port):
        # Spec 11.8 receiver step 1.
        log.info(
            "ignoring kick for {target} on {channel}",
            target=f"{kick.target_server}:{kick.target_port}",
            channel=kick_channel(host, port),
        )
        return
    try:
        result = on_kick(kick)
    except Exception:
        log.failure("kick handler failed for user {user}", user=kick.user_id)
        return
    if isinstance(result, defer.Deferred):
        result.addErrback(lambda f: log.failure("kick handler failed for user {user}", f, user=kick.user_id))
