"""
What operators and back-ends may ask of a node, in one place.

The HTTP API and the admin console are thin front ends over L{NodeAPI}: it
pushes to users bound on this node through its push centre, in process, and
to users elsewhere through their nodes' gateways (so a push reaches a user on
whichever node they are bound), stores pushes for offline users when asked,
kicks, reads routes and keeps per-task delivery counts.  Node-wide counts are
the metrics' own (L{mpush.metrics.IMetrics.totals}): C{/metrics},
C{/v1/stats} and the console's C{stats} read the same counters.
"""

import collections
import dataclasses
import itertools
import os

from twisted.internet import defer
from twisted.logger import Logger

from mpush.config import config_path
from mpush.metrics import OFFLINE_EVENTS
from mpush.protocol.client_type import ClientType
from mpush.protocol.condition import ConditionError, compile_condition
from mpush.protocol.routing import KickRequest
from mpush.push import AckModel, PushClient, PushStatus

#: Users of one push request at most (the HTTP API's limit too).
MAX_USERS = 1000
_ACK_MODELS = {"none": AckModel.NO_ACK, "auto": AckModel.AUTO_ACK, "biz": AckModel.BIZ_ACK}
_SECRET_FIELDS = {"private_key", "password", "hmac_secret", "api_token", "digest"}
#: Delivery counts are kept for this many recent tasks.
MAX_TRACKED_TASKS = 10000
#: Offline messages whose later delivery is added to their task's counts.
MAX_TRACKED_STORED = 100000
#: The per-task counts C{/v1/tasks/<id>} shows.
TASK_COUNTS = ("sent", "acked", "offline", "failed", "stored_offline", "delivered_offline", "timeout",
               "ack_timeout")
#: The push results C{/v1/stats} shows (the metric's expected label values).
STATS_RESULTS = ("success", "failure", "offline", "redirect", "timeout", "ack_timeout", "stored_offline")


class PushRejected(ValueError):
    """
    A push request that cannot be carried out as asked; the message says why.
    """


@dataclasses.dataclass(frozen=True)
class PushRequest:
    users: tuple = None
    content: bytes = b""
    ack: str = "none"
    timeout_ms: int = 3000
    offline_ttl: int = None
    broadcast: bool = False
    tags: tuple = None
    condition: str = None
    task_id: str = None


@dataclasses.dataclass(frozen=True)
class PushOutcome:
    message_id: str
    results: list


def _toml_view(value):
    if dataclasses.is_dataclass(value):
        view = {}
        for field in dataclasses.fields(value):
            if field.name == "source":
                continue
            item = getattr(value, field.name)
            if field.name in _SECRET_FIELDS and item:
                item = "***"
            view[field.name.replace("_", "-")] = _toml_view(item)
        return view
    if isinstance(value, tuple):
        return [_toml_view(item) for item in value]
    return value


class NodeAPI:
    """
    The operations of one node for its HTTP API and admin console.
    """

    log = Logger()

    def __init__(self, node, backends, info, reactor, offline=None):
        self.node = node
        self.backends = backends
        self.info = info
        self.offline = offline
        self.started_ms = node.now_ms()
        self.pusher = PushClient(
            reactor,
            router=backends.remote,
            registry=backends.registry,
            clock=node.clock,
            max_packet_size=node.config.core.max_gateway_packet_size,
            concurrency=MAX_USERS,
            local=node.push_center,
        )
        self.tasks = collections.OrderedDict()
        # Message ids: 32 hex digits, a random half per process and a count
        # (uuid4 cost a getrandom call per push).
        self._id_prefix = os.urandom(8).hex()
        self._id_count = itertools.count(int.from_bytes(os.urandom(4), "big"))
        # (user, message id) of stored offline messages -> their task id.
        self._stored = collections.OrderedDict()
        delivery = getattr(node.router_center, "offline", None)
        if delivery is not None:
            delivery.observer = self._offline_event

    # -- counts and routes ---------------------------------------------------

    def connection_count(self):
        return len(self.node.connections)

    def local_users(self):
        return self.node.router_center.local.user_count()

    def online_count(self):
        return self.backends.events.count_online()

    def routes(self, user_id):
        return self.backends.remote.lookup(user_id)

    # -- pushing -------------------------------------------------------------

    def push(self, request):
        """
        Push C{request}; fires a L{PushOutcome} with a result per user and
        client type (per node for a broadcast), or fails with
        L{PushRejected}.
        """
        try:
            pushed = self._start(request)
        except ValueError as error:
            return defer.fail(_rejected(error))
        settled = defer.Deferred()
        # Not the chain itself: it counts as called as soon as its first
        # step is done, while the push is still under way.
        pushed.addErrback(_reject_bad_values).chainDeferred(settled)
        return settled

    def _start(self, request):
        if request.ack not in _ACK_MODELS:
            raise PushRejected(f"ack must be one of none, auto, biz; got {request.ack!r}")
        if request.condition is not None:
            try:
                compile_condition(request.condition)
            except ConditionError as error:
                raise PushRejected(f"invalid condition: {error}") from None
        message_id = f"{self._id_prefix}{next(self._id_count) & 0xFFFFFFFFFFFFFFFF:016x}"
        task_id = request.task_id or message_id
        ack = _ACK_MODELS[request.ack]
        timeout = request.timeout_ms / 1000.0
        if request.broadcast:
            pushed = self.pusher.broadcast(
                request.content,
                tags=list(request.tags) if request.tags else None,
                condition=request.condition,
                task_id=request.task_id,
                timeout=timeout,
            )
            pushed.addCallback(lambda sent: [self._broadcast_result(r) for r in sent])
            return pushed.addCallback(self._outcome, message_id, task_id, ack)
        users = request.users
        if len(users) == 1:
            pushed = self.pusher.push(users[0], request.content, ack, timeout)
        else:
            pushed = self.pusher.push_many(users, request.content, ack, timeout)
        return pushed.addCallback(self._users_pushed, request, message_id, task_id, ack)

    def _users_pushed(self, pushed, request, message_id, task_id, ack):
        """
        The outcome of a push to users, from their results (a list for a
        one-user push, a dict by user for several): L{_settle}, then counted.
        """
        per_user = {request.users[0]: pushed} if isinstance(pushed, list) else pushed
        shown = self._settle(per_user, request, message_id, task_id)
        if isinstance(shown, defer.Deferred):
            return shown.addCallback(self._outcome, message_id, task_id, ack)
        return self._outcome(shown, message_id, task_id, ack)

    def _outcome(self, results, message_id, task_id, ack):
        self._count(task_id, results, ack)
        return PushOutcome(message_id, results)

    def _settle(self, per_user, request, message_id, task_id):
        """
        The results of every user, counting those no node counted (no node
        was asked); an offline user's push is stored when the request gave
        an C{offline_ttl} and no device got it (a Deferred then).
        """
        if request.offline_ttl and self.offline is not None:
            for results in per_user.values():
                if results and all(r.status is PushStatus.OFFLINE for r in results):
                    return self._settle_storing(per_user, request, message_id, task_id)
        shown = []
        for results in per_user.values():
            self._show(results, shown)
        return shown

    def _show(self, results, shown):
        """Add C{results} to C{shown}, counting those no node counted."""
        metrics = self.node.metrics
        for result in results:
            if result.node is None:
                metrics.push(result.status.value)
            shown.append(self._push_result(result))

    @defer.inlineCallbacks
    def _settle_storing(self, per_user, request, message_id, task_id):
        """L{_settle}, storing the push for the users it found offline."""
        metrics = self.node.metrics
        shown = []
        for user_id, results in per_user.items():
            if results and all(r.status is PushStatus.OFFLINE for r in results):
                stored = yield self._store(user_id, request, message_id, task_id)
                if stored is not None:
                    metrics.push("stored_offline")
                    shown.append(stored)
                    continue
            self._show(results, shown)
        return shown

    @defer.inlineCallbacks
    def _store(self, user_id, request, message_id, task_id):
        """
        Store the push for C{user_id}; its result, or C{None} when it was not
        stored.
        """
        from mpush.offline.interfaces import OfflineMessage

        now = self.node.now_ms()
        message = OfflineMessage(
            message_id=message_id,
            content=request.content,
            ack=request.ack,
            created_ms=now,
            expires_ms=now + request.offline_ttl * 1000,
        )
        try:
            added = yield self.offline.add(user_id, message)
        except Exception as error:
            self.log.warn("offline message for {user} not stored: {why}", user=user_id, why=error)
            return None
        if not added.stored:
            return None
        # Known before the nudge, which may deliver it at once.
        self._stored[user_id, message_id] = task_id
        while len(self._stored) > MAX_TRACKED_STORED:
            self._stored.popitem(last=False)
        yield self._nudge(user_id)
        return {
            "user": user_id,
            "client_type": 0,
            "status": "stored_offline",
            "node": None,
            "reason": f"stored for {request.offline_ttl}s"
            + (f"; {added.dropped} older message(s) dropped" if added.dropped else ""),
            "time_points": [],
        }

    def _offline_event(self, event, user_id, message):
        """
        A stored message was written to its user (C{"written"}) or acked
        (C{"acked"}) on this node: its task's counts follow.
        """
        key = (user_id, message.message_id)
        task_id = self._stored.get(key)
        counts = None if task_id is None else self.tasks.get(task_id)
        if counts is None:
            return
        if event == "written":
            counts["sent"] += 1
            counts["delivered_offline"] += 1
            if message.ack == "none":
                del self._stored[key]
        elif event == "acked":
            counts["acked"] += 1
            del self._stored[key]

    @defer.inlineCallbacks
    def _nudge(self, user_id):
        """
        The user may have bound since the push looked the routes up, and
        that bind's claim ran before the message was stored: look again and
        have each online route's node deliver once more (L{mpush.offline.nudge}).
        """
        from mpush.offline.nudge import Nudge, deliver_nudged

        try:
            routes = yield self.backends.remote.lookup(user_id)
        except Exception as error:
            self.log.warn("routes of {user} not read again after storing: {why}", user=user_id, why=error)
            return
        center = self.node.router_center
        for client_type, location in routes.items():
            if not location.online:
                continue
            nudge = Nudge(user_id, int(client_type), location.conn_id)
            if location.gateway == tuple(center.gateway):
                deliver_nudged(center, nudge)
                continue
            try:
                yield self.backends.nudges.publish(location.host, location.port, nudge)
            except Exception as error:
                self.log.warn("offline nudge for {user} not published: {why}", user=user_id, why=error)

    @staticmethod
    def _push_result(result):
        return {
            "user": result.user_id,
            "client_type": result.client_type,
            "status": result.status.value,
            "node": result.node,
            "reason": result.reason,
            "time_points": [list(point) for point in result.time_points],
        }

    @staticmethod
    def _broadcast_result(result):
        return {
            "node": result.node,
            "status": result.status.value,
            "count": result.count,
            "reason": result.reason,
        }

    def _count(self, task_id, results, ack):
        """The task's counts; the node's are the metrics' (see L{_settle})."""
        counts = self.tasks.pop(task_id, None) or collections.Counter()
        for result in results:
            status = result["status"]
            if status == "success":
                counts["sent"] += result.get("count") or 1
                if ack:
                    counts["acked"] += 1
            elif status in ("failure", "timeout", "ack_timeout"):
                counts["failed" if status == "failure" else status] += 1
            else:
                counts[status] += 1
        self.tasks[task_id] = counts
        while len(self.tasks) > MAX_TRACKED_TASKS:
            self.tasks.popitem(last=False)

    # -- kicking -------------------------------------------------------------

    @defer.inlineCallbacks
    def kick(self, user_id, client_type=None, close=True):
        """
        Kick the user's online routes (of one client type, or all), on this
        node or through the kick channel.  An operator's kick logs the user
        out: the connection is closed after the KICK and the route marked
        offline before this answers; C{close=False} only sends the KICK and
        leaves the connection open, as MPush does.
        """
        routes = yield self.backends.remote.lookup(user_id)
        center = self.node.router_center
        kicked = 0
        for route_type, location in routes.items():
            if client_type is not None and int(route_type) != int(client_type):
                continue
            if not location.online:
                continue
            if location.gateway == tuple(center.gateway):
                connection = center.local.lookup(user_id, route_type)
                if connection is not None and connection.conn_id == location.conn_id:
                    yield center.kick_local(connection, user_id, close=close)
                    kicked += 1
                continue
            kick = KickRequest(
                user_id=user_id,
                device_id=location.device_id,
                conn_id=location.conn_id,
                client_type=int(route_type),
                target_server=location.host,
                target_port=location.port,
                close=close,
            )
            yield self.backends.kicks.publish(kick)
            if close:
                # The owner releases it too when it closes; this answers
                # for it now, and only while the route is still that one.
                yield self.backends.remote.mark_offline(user_id, route_type, conn_id=location.conn_id)
            kicked += 1
        return kicked

    # -- views ---------------------------------------------------------------

    def stats(self):
        """
        This node's counts, read from its metrics: the same numbers as
        C{mpush_pushes_total} and C{mpush_offline_messages_total}.
        """
        host, port = self.node.router_center.gateway
        totals = self.node.metrics.totals()
        pushes, offline = totals["pushes"], totals["offline"]
        return {
            "node": f"{host}:{port}",
            "connections": self.connection_count(),
            "local_users": self.local_users(),
            "uptime_s": (self.node.now_ms() - self.started_ms) // 1000,
            "pushes": {result: pushes.get(result, 0) for result in STATS_RESULTS},
            "offline": {event: offline.get(event, 0) for event in OFFLINE_EVENTS},
            "tasks": len(self.tasks),
        }

    def task_stats(self, task_id):
        counts = self.tasks.get(task_id)
        if counts is None:
            return None
        view = {"task_id": task_id}
        for name in TASK_COUNTS:
            view[name] = counts.get(name, 0)
        return view

    @defer.inlineCallbacks
    def allot(self):
        """
        Client endpoints of the live nodes, least loaded first (the MPush
        client's allot list).
        """
        nodes = yield self.backends.registry.nodes()
        ordered = sorted(nodes, key=lambda info: (getattr(info, "load", 0) or 0, info.connect_host or "", info.connect_port))
        # The workers of one box ([cluster] workers) share one client port:
        # each endpoint once, where its least loaded node puts it.
        endpoints = (f"{info.connect_host}:{info.connect_port}" for info in ordered if info.connect_host)
        return list(dict.fromkeys(endpoints))

    def config_view(self):
        return _toml_view(self.node.config)

    def config_value(self, dotted):
        """
        One value of L{config_view}, by its path there
        (C{core.max-packet-size}), its TOML key
        (C{net.write-buffer-water-mark.connect-server-high}) or MPush's
        (C{mp.core.max-packet-size}, as MPush's console takes it).
        """
        value = self.config_view()
        path = config_path(dotted)
        if path is not None:
            parts = [part.replace("_", "-") for part in path]
        else:
            parts = dotted.split(".")
            if parts[0] == "mp":  # MPush's name of a whole table: mp.core
                parts = parts[1:]
        for part in parts:
            if not isinstance(value, dict) or part not in value:
                raise KeyError(dotted)
            value = value[part]
        return value

    def close(self):
        return self.pusher.close()


def _rejected(error):
    """A bad push as the API reports it."""
    return error if isinstance(error, PushRejected) else PushRejected(str(error))


def _reject_bad_values(failure):
    failure.trap(ValueError)
    raise _rejected(failure.value)


def client_type_name(client_type):
    try:
        return ClientType(int(client_type)).name
    except ValueError:
        return "UNKNOWN"
