"""
Delivering GATEWAY_PUSH requests to devices (spec 12.2-12.6).

A single-user push goes to the user's connection on this node, waits for the
ack the request asks for, and reports success, failure, offline or redirect
to the pusher.  A broadcast walks this node's routes under its own flow
control.  Departures from MPush, all invisible to its Java PushSender: ack
waits are registered before the PUSH is written; a non-positive timeout means
the default; ACK_TIMEOUT is reported to pushers that opt in; flow control
delays a push instead of setting the throughput ceiling.
"""

import json
from json.encoder import encode_basestring
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from mpush.log_throttle import LogThrottle
from mpush.protocol.condition import ConditionError, compile_condition
from mpush.protocol.errors import ErrorCode
from mpush.protocol.fields import INT32_MAX, INT32_MIN
from mpush.protocol.messages import PushMessage
from mpush.protocol.packet import Command, Flags
from mpush.protocol.routing import encode_push_result
from mpush.router.interfaces import RouterUnavailable
from mpush.server.gateway.acks import AckTimeout
from mpush.store.broadcast_control import MemoryBroadcastControl
from mpush.server.device.errors import ConnectionClosed
from mpush.server.device.flow_control import FlowControl, FlowDecision


class Outcome:
    """
    How one delivery ended, with the step name MPush logs for it.
    """

    SUCCESS = "success-end"
    FAILURE = "failure-end"
    OFFLINE = "offline-end"
    REDIRECT = "redirect-end"
    TIMEOUT = "timeout-end"


_METRIC_NAMES = {
    Outcome.SUCCESS: "success",
    Outcome.FAILURE: "failure",
    Outcome.OFFLINE: "offline",
    Outcome.REDIRECT: "redirect",
    Outcome.TIMEOUT: "timeout",
}

_OUTCOME_METRICS = {
    (outcome, bool(ack)): ("ack_timeout" if outcome == Outcome.TIMEOUT and ack else name)
    for outcome, name in _METRIC_NAMES.items()
    for ack in (0, 1)
}

#: Plain ints of the header flags the push path tests (IntFlag ops are slow).
_ACK_BITS = int(Flags.ACK_BITS)
_REPORT_TIMEOUTS = int(Flags.REPORT_TIMEOUTS)

#: Time point names that need no JSON escaping.
_POINT_NAMES = frozenset(
    ["push-center-begin", "before-send", "waiting-ack", *_METRIC_NAMES]
)

_ERROR_CODES = {
    Outcome.FAILURE: ErrorCode.PUSH_CLIENT_FAILURE,
    Outcome.OFFLINE: ErrorCode.OFFLINE,
    Outcome.REDIRECT: ErrorCode.ROUTER_CHANGE,
    Outcome.TIMEOUT: ErrorCode.ACK_TIMEOUT,
}


class IPushReply(Interface):
    """
    Where the push centre sends the answer of one push: exactly one of
    C{ok} or C{error}, or nothing at all for a timeout it must not report.
    """

    report_timeouts = Attribute("Whether a timed-out push is answered (ACK_TIMEOUT) or left silent.")

    def ok(data):
        """The push succeeded: C{data} is its result JSON (spec 12.6)."""

    def error(code, data, reason=None):
        """The push ended otherwise: an L{ErrorCode}, its result JSON or C{None}, a reason."""


@implementer(IPushReply)
class GatewayReply:
    """
    Where the result of one GATEWAY_PUSH goes: the gateway connection it came
    on, answered raw with its packet session id and C{cmd} 16 (spec 12.6).
    """

    __slots__ = ("connection", "session_id", "report_timeouts")

    def __init__(self, connection, packet):
        self.connection = connection
        self.session_id = packet.session_id
        self.report_timeouts = bool(packet.flags & _REPORT_TIMEOUTS)

    def ok(self, data):
        self.connection.answer_ok(self.session_id, data)

    def error(self, code, data, reason=None):
        self.connection.answer_error(self.session_id, code, reason or ErrorCode(code).reason, data)


class PushHandle:
    """
    What L{PushCenter.push} returns, whatever the push turns into: its
    C{outcome} (an L{Outcome}) once it has ended, C{None} before.  Most
    pushes end before C{push} returns, so it is a plain object that is
    already settled, not a Deferred; C{observe} and C{ended} are for the
    callers that wait.
    """

    __slots__ = ("outcome", "_observers")

    log = Logger()

    def __init__(self, outcome: str | None = None) -> None:
        self.outcome = outcome
        self._observers: list | None = None

    def observe(self, observer: Callable[["PushHandle"], object]) -> None:
        """Call C{observer(self)} once the push has ended (now, if it has)."""
        if self.outcome is not None:
            observer(self)
        elif self._observers is None:
            self._observers = [observer]
        else:
            self._observers.append(observer)

    def ended(self) -> defer.Deferred:
        """A Deferred firing this handle once the push has ended."""
        if self.outcome is not None:
            return defer.succeed(self)
        done = defer.Deferred()
        self.observe(done.callback)
        return done

    def _end(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        observers, self._observers = self._observers, None
        if observers:
            for observer in observers:
                try:
                    observer(self)
                except Exception:
                    self.log.failure("observing the end of a push")

    @property
    def error_code(self) -> int | None:
        """The gateway's ERROR code for this ending (spec 12.6); C{None} for success or in progress."""
        code = _ERROR_CODES.get(self.outcome)
        return None if code is None else int(code)


class _LocalMessage:
    """The fields of a GATEWAY_PUSH that L{SinglePush} reads, without a frame."""

    __slots__ = ("user_id", "client_type", "timeout", "content")

    def __init__(self, user_id, client_type, timeout, content):
        self.user_id = user_id
        self.client_type = client_type
        self.timeout = timeout
        self.content = content


class SinglePush(PushHandle):
    """
    One single-user push: its deadline and time points, and for a redirect
    where the user is (C{routes}, C{{clientType: "host:port"}}).  C{reply}
    is C{None} for a push made in this process (L{PushCenter.push_local}):
    its handle is its whole answer.
    """

    __slots__ = ("user_id", "client_type", "content", "ack_bits", "deadline", "points", "reply", "routes")

    def __init__(self, message, flags, reply, now_ms, default_timeout):
        self.outcome = None
        self._observers = None
        timeout = message.timeout if message.timeout > 0 else default_timeout
        self.user_id = message.user_id
        self.client_type = message.client_type
        self.content = message.content or b""
        self.ack_bits = flags & _ACK_BITS
        self.deadline = now_ms + timeout
        self.points = [("push-center-begin", now_ms)]
        self.reply = reply
        self.routes = None

    def result(self):
        """
        The result JSON of spec 12.6.  A redirect also names where the user
        is, as C{"routes": {clientType: "host:port"}} (mpush's addition:
        MPush's PushSender ignores unknown keys; ours resends there).
        """
        if not self.routes:
            return push_result_json(self.user_id, self.client_type, self.points)
        data = encode_push_result(self.user_id, self.client_type, self.points)
        fields = json.loads(data)
        fields["routes"] = self.routes
        return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def push_result_json(user_id, client_type, points):
    """
    L{encode_push_result}, byte for byte, built with one format: for the
    push center's own (name, ms) points, whose names need no escaping.
    Anything unusual takes L{encode_push_result}.
    """
    if (
        client_type.__class__ is not int
        or not INT32_MIN <= client_type <= INT32_MAX
        or (user_id is not None and user_id.__class__ is not str)
    ):
        return encode_push_result(user_id, client_type, points)
    for name, ms in points:
        if name not in _POINT_NAMES or ms.__class__ is not int or not -(2**63) <= ms < 2**63:
            return encode_push_result(user_id, client_type, points)
    flat = ",".join([f'"{name}",{ms}' for name, ms in points])
    head = f'{{"clientType":{client_type},"timePoints":[' if client_type > 0 else '{"timePoints":['
    if user_id is None:
        return f"{head}{flat}]}}"
    return f'{head}{flat}],"userId":{encode_basestring(user_id)}}}'


class _AckWait:
    """
    A single push's wait for its device's ack, in the ack table without a
    Deferred: the table calls C{callback} on the ack, C{errback} on time up.
    """

    __slots__ = ("center", "task", "written_at", "early")

    def __init__(self, center, task):
        self.center = center
        self.task = task
        self.written_at = None
        self.early = False

    def callback(self, _):
        if self.written_at is None:
            # Acked while being written: the writer ends it.
            self.early = True
            return
        center = self.center
        node = center.node
        try:
            node.metrics.ack_latency(node.clock.seconds() - self.written_at)
            center._finish(self.task, Outcome.SUCCESS)
        except Exception:
            # Not the acking device's fault: never an ERROR to it.
            center.log.failure("answering the push to {user}", user=self.task.user_id)

    def errback(self, _):
        center = self.center
        try:
            center._finish(self.task, Outcome.TIMEOUT)
        except Exception:
            center.log.failure("answering the push to {user}", user=self.task.user_id)


class PushCenter:
    """
    Runs the push requests that reach this node's gateway.
    """

    log = Logger()

    def __init__(self, node, router_center, broadcast_control=None):
        self.node = node
        self.router_center = router_center
        self.broadcast_control = broadcast_control or MemoryBroadcastControl()
        push = node.config.push
        self.flow = FlowControl(push.global_limit, push.global_duration, push.global_max, node.clock)
        # An outage fails every push the same way: one line a second.
        self._warnings = LogThrottle(node.clock)

    def push(self, message, flags, reply: IPushReply) -> PushHandle:
        """
        Start a GATEWAY_PUSH: a broadcast when it names no user (spec 12.2).

        @return: the push's L{PushHandle}, ended already when the push ended
            at once (the common case).  Every push ends, C{reply} answered
            or (a timeout it must not report) left silent: by its ack, its
            deadline, a route lookup, or a flow-control retry.
        """
        if message.user_id is None:
            return self.broadcast(message, reply)
        node = self.node
        now = node.now_ms()
        task = SinglePush(message, flags, reply, now, node.config.push.default_timeout)
        waiting = self._attempt(task, now)
        if waiting is not None:
            waiting.addErrback(self._failed, task)
        return task

    def push_local(self, user_id: str, client_type: int, content: bytes, flags: int,
                   timeout_ms: int) -> PushHandle:
        """
        Push to a user bound here, for a caller in this process: the same
        delivery, flow control and counts as a GATEWAY_PUSH, with none of the
        gateway's framing or result JSON.

        @param flags: the ack bits (L{Flags.AUTO_ACK}, L{Flags.BIZ_ACK}).
        @param timeout_ms: the push's deadline (non-positive: the default).
        @return: the push's L{SinglePush} handle, which always ends (failed,
            if the push raised): its C{outcome}, C{client_type}, C{points},
            and C{routes} for a redirect.
        """
        node = self.node
        now = node.now_ms()
        task = SinglePush(_LocalMessage(user_id, client_type, timeout_ms, content), flags, None, now,
                          node.config.push.default_timeout)
        self._run(task, now)
        return task

    def _run(self, task, now=None):
        """L{_attempt}, ending the push as failed if it raises."""
        try:
            waiting = self._attempt(task, now)
        except Exception:
            self.log.failure("push to {user}", user=task.user_id)
            self._fail(task)
            return
        if waiting is not None:
            waiting.addErrback(self._failed, task)

    def _failed(self, failure, task):
        self.log.failure("push to {user}", failure, user=task.user_id)
        self._fail(task)

    def _fail(self, task):
        if task.outcome is None:
            self._finish(task, Outcome.FAILURE)

    # -- single user ---------------------------------------------------------

    def _attempt(self, task, now=None):
        """
        Deliver C{task} here, or find where its user is.

        @return: C{None}, or a Deferred while it waits on something other
            than its ack (several connections, a route lookup).
        """
        if now is None:
            now = self.node.now_ms()
        if now > task.deadline:
            return self._finish(task, Outcome.TIMEOUT, now)
        connections = self._local_connections(task)
        if not connections:
            return self._route_elsewhere(task)
        decision = self.flow.check()
        if decision is not FlowDecision.GO:
            if decision is FlowDecision.WAIT:
                self.node.clock.callLater(self.flow.delay(), self._run, task)
                return None
            return self._finish(task, Outcome.FAILURE, now)
        if len(connections) == 1:
            return self._deliver_now(task, connections[0], connections[0].send_push, now)
        deliveries = [self._deliver(task, connection) for connection in connections]
        return defer.gatherResults(deliveries).addCallback(self._settle, task)

    def _deliver_now(self, task, connection, send_push, now):
        """
        The common case without Deferreds: one connection here that writes
        at once.  An ack wait is registered before the write and ends the
        push from the ack table.
        """
        if not connection.writable:
            return self._finish(task, Outcome.FAILURE, now)
        node = self.node
        message_id = node.next_packet_id()
        points = task.points
        points.append(("before-send", now))
        ack_bits = task.ack_bits
        if not ack_bits:
            if send_push(task.content, message_id, 0):
                return self._finish(task, Outcome.SUCCESS, now)
            return self._finish(task, Outcome.FAILURE, now)
        wait = max(task.deadline - now, 0) or node.config.push.default_timeout
        acks = node.acks
        waiting = _AckWait(self, task)
        acks.expect(message_id, wait / 1000.0, connection, waiting)
        if not send_push(task.content, message_id, ack_bits):
            acks.withdraw(message_id)
            return self._finish(task, Outcome.FAILURE, now)
        waiting.written_at = node.clock.seconds()
        points.append(("waiting-ack", now))
        if waiting.early:
            node.metrics.ack_latency(0.0)
            return self._finish(task, Outcome.SUCCESS)
        return None

    def _local_connections(self, task):
        local = self.router_center.local
        if task.client_type > 0:
            found = local.lookup(task.user_id, task.client_type)
            routes = [] if found is None else [(task.client_type, found)]
        else:
            # mpush's extension for pushers without route lookups (embedded
            # mode): every client type the user has here.
            routes = list(local.lookup_all(task.user_id).items())
        live = []
        for client_type, connection in routes:
            if connection.is_open:
                live.append(connection)
            else:
                local.unregister(task.user_id, client_type, connection)
        return live

    def _deliver(self, task, connection):
        if not connection.writable:
            return defer.succeed(Outcome.FAILURE)
        message_id = self.node.next_packet_id()
        task.points.append(("before-send", self.node.now_ms()))
        acked = None
        if task.ack_bits:
            wait = max(task.deadline - self.node.now_ms(), 0) or self.node.config.push.default_timeout
            acked = self.node.acks.expect(message_id, wait / 1000.0, connection)
        written = connection.send(Command.PUSH, PushMessage(task.content), message_id, task.ack_bits)
        if acked is None:
            return written.addCallbacks(lambda _: Outcome.SUCCESS, lambda _: Outcome.FAILURE)

        def write_failed(failure):
            acked.cancel()
            return Outcome.FAILURE

        def waiting(_):
            written_at = self.node.clock.seconds()
            task.points.append(("waiting-ack", self.node.now_ms()))

            def acknowledged(_):
                self.node.metrics.ack_latency(self.node.clock.seconds() - written_at)
                return Outcome.SUCCESS

            return acked.addCallbacks(acknowledged, self._ack_missed)

        return written.addCallbacks(waiting, write_failed)

    def _ack_missed(self, failure):
        failure.trap(AckTimeout, defer.CancelledError)
        return Outcome.TIMEOUT

    def _settle(self, outcomes, task):
        for preferred in (Outcome.SUCCESS, Outcome.TIMEOUT, Outcome.FAILURE):
            if preferred in outcomes:
                return self._finish(task, preferred)
        return self._finish(task, Outcome.FAILURE)

    @defer.inlineCallbacks
    def _route_elsewhere(self, task):
        """
        No connection here: offline, or redirect the pusher to the node
        that owns the user (spec 12.3 step 3).
        """
        remote = self.router_center.remote
        try:
            if task.client_type > 0:
                location = yield remote.lookup_type(task.user_id, task.client_type)
                locations = {task.client_type: location} if location is not None else {}
            else:
                locations = yield remote.lookup(task.user_id)
        except RouterUnavailable as error:
            self._warnings.warn(
                self.log, "routes unavailable", "push to {user}: routes unavailable: {why}",
                user=task.user_id, why=error,
            )
            return self._finish(task, Outcome.FAILURE)
        mine = tuple(self.router_center.gateway)
        elsewhere = {}
        for client_type, location in locations.items():
            if not location.online:
                continue
            if location.gateway == mine:
                # A route of this node with no connection behind it: stale.
                released = remote.mark_offline(task.user_id, client_type, conn_id=location.conn_id)
                released.addErrback(self._stale_route_kept, task.user_id)
            else:
                elsewhere[str(int(client_type))] = f"{location.host}:{location.port}"
        task.routes = elsewhere
        return self._finish(task, Outcome.REDIRECT if elsewhere else Outcome.OFFLINE)

    def _stale_route_kept(self, failure, user_id):
        self._warnings.warn(self.log, "stale route kept", "stale route of {user} not marked offline: {why}",
                            user=user_id, why=failure.getErrorMessage())

    def _finish(self, task, outcome, now=None):
        """End C{task} with C{outcome}: count it, answer its reply, end its handle."""
        if task.outcome is not None:
            return
        task.points.append((outcome, self.node.now_ms() if now is None else now))
        self.node.metrics.push(_OUTCOME_METRICS[outcome, bool(task.ack_bits)])
        reply = task.reply
        try:
            if reply is None:
                # Made in this process (push_local): the handle is the answer.
                pass
            elif outcome == Outcome.SUCCESS:
                reply.ok(task.result())
            elif outcome == Outcome.TIMEOUT and not reply.report_timeouts:
                # What MPush does, and all its Java PushSender can take: nothing.
                self.log.info("push to {user} timed out", user=task.user_id)
            else:
                reply.error(int(_ERROR_CODES[outcome]), task.result())
        finally:
            task._end(outcome)

    # -- broadcast -----------------------------------------------------------

    def broadcast(self, message, reply: IPushReply) -> PushHandle:
        """
        Push to every connection of this node that passes the filter
        (spec 12.5), paced by the broadcast flow control (or by the task's
        own rate in C{mp:pt<taskId>}), then answer OK with the number of
        connections written.

        @return: the broadcast's L{BroadcastTask} handle (its C{count}), or
            a failed L{PushHandle} for a condition that does not compile.
        """
        try:
            matches = self._filter(message)
        except ConditionError as error:
            reply.error(int(ErrorCode.PUSH_CLIENT_FAILURE), None, f"invalid condition: {error}")
            return PushHandle(Outcome.FAILURE)
        task = BroadcastTask(self, message, reply, matches)
        task.start().addErrback(task.failed)
        return task

    def _filter(self, message):
        if message.condition is not None:
            condition = compile_condition(message.condition)

            def by_condition(context):
                return condition.matches(
                    {
                        "userId": context.user_id,
                        "tags": context.tags,
                        "clientVersion": context.client_version,
                        "osName": context.os_name,
                        "osVersion": context.os_version,
                    }
                )

            return by_condition
        if message.tags is not None:
            wanted = tuple(message.tags)
            if self.node.config.push.tag_match == "exact":
                wanted_set = set(wanted)

                def by_exact_tag(context):
                    if not context.tags:
                        return False
                    return not wanted_set.isdisjoint(t.strip() for t in context.tags.split(","))

                return by_exact_tag

            def by_tag_substring(context):
                return context.tags is not None and any(tag in context.tags for tag in wanted)

            return by_tag_substring
        return lambda context: True


class BroadcastTask(PushHandle):
    """
    One broadcast walking a snapshot of this node's routes, pausing at each
    flow-control window and resuming where it stopped.  With a task id it
    follows the task's controls and records whom it reached.  Its handle
    ends with C{count} connections written.
    """

    __slots__ = ("center", "node", "message", "reply", "matches", "task_id", "routes", "index", "count",
                 "counted", "reached", "started", "flow")

    log = Logger()

    def __init__(self, center, message, reply, matches):
        super().__init__()
        self.center = center
        self.node = center.node
        self.message = message
        self.reply = reply
        self.matches = matches
        self.task_id = message.task_id
        self.routes = []
        self.index = 0
        self.count = 0
        self.counted = 0
        self.reached = []
        self.started = self.node.now_ms()
        self.flow = None

    @defer.inlineCallbacks
    def start(self):
        push = self.node.config.push
        limit, duration, cancelled = push.broadcast_limit, push.broadcast_duration, False
        if self.task_id:
            try:
                limit, cancelled = yield self.center.broadcast_control.settings(self.task_id)
                duration = 1000
            except Exception as error:
                self.log.warn("broadcast {task}: controls unavailable: {why}", task=self.task_id, why=error)
        self.flow = FlowControl(limit, duration, push.broadcast_max, self.node.clock)
        self.routes = list(self.center.router_center.local.routes())
        if cancelled:
            self.finish()
        else:
            self.walk()

    def failed(self, failure):
        """The broadcast broke off: answered as failed, if not answered yet."""
        self.log.failure("broadcast {task}", failure, task=self.task_id)
        if self.outcome is None:
            self.count_sent()
            try:
                self.reply.error(int(ErrorCode.PUSH_CLIENT_FAILURE), None, "broadcast failed")
            finally:
                self._end(Outcome.FAILURE)

    def walk(self):
        local = self.center.router_center.local
        content = PushMessage(self.message.content or b"")
        while self.index < len(self.routes):
            user_id, client_type, connection = self.routes[self.index]
            if not connection.is_open:
                local.unregister(user_id, client_type, connection)
                self.index += 1
                continue
            if not self.matches(connection.context):
                self.index += 1
                continue
            decision = self.flow.check()
            if decision is FlowDecision.WAIT:
                self.pause()
                return
            if decision is FlowDecision.EXCEEDED:
                break
            self.index += 1
            if connection.writable:
                # Ack bits are not copied for broadcasts, as in MPush.
                connection.send(Command.PUSH, content, self.node.next_packet_id()).addErrback(
                    lambda failure: failure.trap(ConnectionClosed)
                )
                self.count += 1
                if self.task_id:
                    self.reached.append(user_id)
        self.finish()

    @defer.inlineCallbacks
    def pause(self):
        """
        Wait for the next window; a task id's cancel flag is read meanwhile.
        """
        delay = self.flow.delay()
        cancelled = False
        self.count_sent()
        if self.task_id:
            self.record()
            try:
                _, cancelled = yield self.center.broadcast_control.settings(self.task_id)
            except Exception:
                cancelled = False
        if cancelled:
            self.log.info("broadcast {task} cancelled after {n} sends", task=self.task_id, n=self.count)
            self.finish()
            return
        self.node.clock.callLater(delay, self.resume)

    def resume(self):
        """The next window: L{walk} on, ending the broadcast as failed if it raises."""
        try:
            self.walk()
        except Exception:
            self.failed(Failure())

    def record(self):
        if self.reached:
            reached, self.reached = self.reached, []
            recorded = self.center.broadcast_control.record(self.task_id, reached)
            recorded.addErrback(
                lambda f: self.log.warn("broadcast {task} not recorded: {why}", task=self.task_id, why=f.getErrorMessage())
            )

    def count_sent(self):
        """Count the pushes written since the last count (a success each)."""
        if self.count > self.counted:
            self.node.metrics.push("success", self.count - self.counted)
            self.counted = self.count

    def finish(self):
        self.count_sent()
        if self.task_id:
            self.record()
        data = json.dumps(
            {
                "count": self.count,
                "timePoints": ["push-center-begin", self.started, "success-end", self.node.now_ms()],
            },
            separators=(",", ":"),
            sort_keys=True,
        )
        try:
            self.reply.ok(data)
        finally:
            self._end(Outcome.SUCCESS)
