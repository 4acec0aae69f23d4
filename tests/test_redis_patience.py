"""
A Redis call whose deadline timer fires late (the node, not Redis, is
behind) waits on, up to its patience; one whose timer fires on time fails
at its deadline as always.  A fake clock and a command that never answers.
"""

from twisted.internet import defer, task
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from mpush.store.interfaces import StoreUnavailable
from mpush.store.redis_calls import OVERLOAD_LAG, BoundedRedis


class _Silent:
    """A txredisapi handler stand-in whose commands never answer."""

    def __init__(self):
        self.sent = []

    def get(self, key):
        self.sent.append(key)
        return defer.Deferred()


class PatienceTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.redis = _Silent()
        self.calls = BoundedRedis(self.redis, self.clock, 2.0, "redis session store", StoreUnavailable)

    def call(self, patience=None):
        return self.calls.call("load", lambda: self.redis.get("k"), patience=patience)

    def test_on_time_deadline_fails_even_with_patience(self):
        result = self.call(patience=8.0)
        self.clock.advance(2.0)
        error = self.failureResultOf(result, StoreUnavailable).value
        self.assertIn("no answer to load within 2 s", str(error))

    def test_late_deadline_waits_up_to_the_patience(self):
        result = self.call(patience=8.0)
        self.clock.advance(2.0 + OVERLOAD_LAG + 0.5)  # the timer fired late
        self.assertNoResult(result)
        for _ in range(4):
            self.clock.advance(1.0 + OVERLOAD_LAG + 0.1)  # still late each time
        self.failureResultOf(result, StoreUnavailable)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_late_deadline_without_patience_fails(self):
        result = self.call()
        self.clock.advance(5.0)
        self.failureResultOf(result, StoreUnavailable)

    def test_a_late_answer_still_counts(self):
        answer = defer.Deferred()
        result = self.calls.call("load", lambda: answer, patience=8.0)
        self.clock.advance(3.0)
        self.assertNoResult(result)
        answer.callback("value")
        self.assertEqual(self.successResultOf(result), "value")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class _SlowTurnClock(task.Clock):
    """A clock whose zero-delay calls run a long turn later, as a busy reactor's do."""

    turn = 0.0

    def callLater(self, delay, f, *args, **kw):
        return super().callLater(delay or self.turn, f, *args, **kw)


class DecidedAfterTheTurnTests(SynchronousTestCase):
    def test_a_reply_read_in_the_deadlines_turn_counts(self):
        clock = _SlowTurnClock()
        calls = BoundedRedis(_Silent(), clock, 2.0, "redis session store", StoreUnavailable)
        answer = defer.Deferred()
        result = calls.call("load", lambda: answer)
        clock.turn = 0.01
        clock.advance(2.0)  # the timer fires; the turn's reads come after it
        answer.callback("value")
        clock.advance(clock.turn)
        self.assertEqual(self.successResultOf(result), "value")

    def test_a_long_turn_means_the_node_is_behind(self):
        clock = _SlowTurnClock()
        calls = BoundedRedis(_Silent(), clock, 2.0, "redis session store", StoreUnavailable)
        result = calls.call("load", defer.Deferred, patience=8.0)
        clock.turn = OVERLOAD_LAG + 0.5
        clock.advance(2.0)  # fires on time, but its turn is long
        clock.advance(clock.turn)
        self.assertNoResult(result)


class _LostFactory:
    """A txredisapi factory stand-in whose pool has lost its connections."""

    def __init__(self):
        self.handler = _Silent()
        self.pool = []


class ReconnectingPoolTests(SynchronousTestCase):
    def test_a_deadline_while_the_pool_reconnects_says_nothing_more(self):
        """
        Redis went away and the pool is reconnecting: the client says once
        whether it can (reachable/unreachable); a call's deadline that comes
        first fails the call without a line of its own.
        """
        from mpush.store.redis_connection import RedisAddress, RedisClient

        clock = task.Clock()
        factory = _LostFactory()
        client = RedisClient(factory, RedisAddress("127.0.0.1", 1), clock, 1.0)
        calls = BoundedRedis(client, clock, 2.0, "redis session store", StoreUnavailable)
        warned = []
        calls.log = Logger(observer=lambda event: warned.append(event))
        result = calls.call("load", lambda: factory.handler.get("k"))
        clock.advance(2.0)
        self.failureResultOf(result, StoreUnavailable)
        self.assertEqual([e["log_format"] for e in warned if e["log_level"] == LogLevel.warn], [])
