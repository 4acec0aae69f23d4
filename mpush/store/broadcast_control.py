"""
Broadcast task control: MPush's Redis hash C{mp:pt<taskId>} (spec 12.5, 19.1).

A broadcast with a task id reads its rate (field C{q}, default 1000/s) and
its cancel flag (field C{c} == 1) from Redis, adds what it sent to field
C{sc}, and pushes the user ids it reached onto the list C{<taskId>:sui}, so
an external controller (MPush's, or an operator's script) can pace, stop and
audit it.  Without Redis the same bookkeeping is kept in memory.
"""

import collections

from twisted.internet import defer
from zope.interface import Interface, implementer

from mpush.store.redis_calls import BoundedRedis, RedisComponent

#: MPush's rate for a task whose hash has no C{q}.
DEFAULT_TASK_QPS = 1000


class BroadcastControlUnavailable(Exception):
    """
    The task's controls could not be read or written.
    """


def task_key(task_id):
    return f"mp:pt{task_id}"


def task_users_key(task_id):
    return f"{task_id}:sui"


class IBroadcastControl(Interface):
    def settings(task_id):
        """
        @return: Deferred firing C{(qps, cancelled)} for the task.
        """

    def record(task_id, user_ids):
        """
        Count C{len(user_ids)} more sends and remember who got them.

        @return: Deferred firing C{None}.
        """

    def sent(task_id):
        """
        @return: Deferred firing the task's send count.
        """


def _settings(fields):
    fields = fields or {}
    try:
        qps = int(fields.get("q") or DEFAULT_TASK_QPS)
    except (TypeError, ValueError):
        qps = DEFAULT_TASK_QPS
    return max(qps, 1), str(fields.get("c", "")) == "1"


@implementer(IBroadcastControl)
class MemoryBroadcastControl:
    """
    The same hash and list, for a node without Redis; the user lists keep
    the newest C{max_users} ids per task.
    """

    def __init__(self, max_users=10000):
        self.tasks = collections.defaultdict(dict)
        self.users = collections.defaultdict(lambda: collections.deque(maxlen=max_users))

    def settings(self, task_id):
        return defer.succeed(_settings(self.tasks.get(task_id)))

    def record(self, task_id, user_ids):
        fields = self.tasks[task_id]
        fields["sc"] = str(int(fields.get("sc", "0")) + len(user_ids))
        self.users[task_id].extendleft(user_ids)
        return defer.succeed(None)

    def sent(self, task_id):
        return defer.succeed(int(self.tasks.get(task_id, {}).get("sc", "0")))

    def close(self):
        return defer.succeed(None)


@implementer(IBroadcastControl)
class RedisBroadcastControl(RedisComponent):
    def __init__(self, redis, clock, timeout=2.0):
        self._calls = BoundedRedis(redis, clock, timeout, "redis broadcast control", BroadcastControlUnavailable)
        self._redis = self._calls.redis

    def settings(self, task_id):
        return self._calls.call("task settings", lambda: self._redis.hgetall(task_key(task_id)), _settings)

    def record(self, task_id, user_ids):
        if not user_ids:
            return defer.succeed(None)

        def send():
            counted = self._redis.hincrby(task_key(task_id), "sc", len(user_ids))
            listed = self._redis.lpush(task_users_key(task_id), list(user_ids))
            return defer.gatherResults([counted, listed], consumeErrors=True)

        return self._calls.call("task record", send, lambda _: None)

    def sent(self, task_id):
        return self._calls.call(
            "task count", lambda: self._redis.hget(task_key(task_id), "sc"), lambda v: int(v or 0)
        )

    def close(self):
        self._calls.close()
        return defer.succeed(None)
