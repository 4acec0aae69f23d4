"""
One command per reactor turn: L{TurnBatch} on a fake clock, then the Redis
components that batch with it against a real redis-server, counting the
commands Redis ran (INFO commandstats) to prove a turn's requests went as one.
"""

from __future__ import annotations

from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mpush.offline.interfaces import OfflineMessage
from mpush.offline.redis import RedisOfflineStore
from mpush.protocol.routing import ClientLocation, KickRequest
from mpush.protocol.session import ReusableSession
from mpush.router.redis import RedisKickChannel, RedisRemoteRouter, RedisUserEvents
from mpush.store.redis import RedisSessionStore, session_key
from mpush.store.redis_batch import TurnBatch
from tests.test_redis_router import CALL_TIMEOUT, RedisRoutingTestCase


class TurnBatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = task.Clock()
        self.runs: list[list] = []
        self.answers: list[defer.Deferred] = []

    def run_chunk(self, items):
        self.runs.append(list(items))
        answer = defer.Deferred()
        self.answers.append(answer)
        return answer

    def test_one_run_per_turn(self):
        batch = TurnBatch(self.clock, self.run_chunk)
        first, second = batch.submit("a"), batch.submit("b")
        self.assertEqual((self.runs, len(batch)), ([], 2))
        self.clock.advance(0)
        self.assertEqual(self.runs, [["a", "b"]])
        self.answers[0].callback(["A", "B"])
        self.assertEqual((self.successResultOf(first), self.successResultOf(second)), ("A", "B"))
        batch.submit("c")
        self.clock.advance(0)
        self.assertEqual(self.runs, [["a", "b"], ["c"]])

    def test_chunks_of_max_items(self):
        batch = TurnBatch(self.clock, self.run_chunk, max_items=2)
        results = [batch.submit(i) for i in range(5)]
        self.clock.advance(0)
        self.assertEqual(self.runs, [[0, 1], [2, 3], [4]])
        for answer, chunk in zip(self.answers, self.runs):
            answer.callback([i * 10 for i in chunk])
        self.assertEqual([self.successResultOf(r) for r in results], [0, 10, 20, 30, 40])

    def test_per_group_runs_keep_each_callers_answer(self):
        # A cluster's batch: one run per node (here the item mod 3), chunked,
        # and each caller still gets its own answer.
        batch = TurnBatch(self.clock, self.run_chunk, max_items=2, group_of=lambda item: item % 3)
        results = [batch.submit(i) for i in range(7)]
        self.clock.advance(0)
        self.assertEqual(self.runs, [[0, 3], [6], [1, 4], [2, 5]])
        for answer, chunk in zip(self.answers, self.runs):
            answer.callback([i * 10 for i in chunk])
        self.assertEqual([self.successResultOf(r) for r in results], [0, 10, 20, 30, 40, 50, 60])

    def test_per_group_run_failure_fails_that_group_only(self):
        batch = TurnBatch(self.clock, self.run_chunk, group_of=lambda item: item % 2)
        even, odd = batch.submit(0), batch.submit(1)
        self.clock.advance(0)
        self.answers[0].errback(ConnectionError("its master died"))
        self.answers[1].callback(["one"])
        self.failureResultOf(even, ConnectionError)
        self.assertEqual(self.successResultOf(odd), "one")

    def test_group_of_raising_fails_the_turn_not_the_batch(self):
        batch = TurnBatch(self.clock, self.run_chunk, group_of=lambda item: 1 // item)
        failed = batch.submit(0)
        self.clock.advance(0)
        self.failureResultOf(failed, ZeroDivisionError)
        later = batch.submit(1)
        self.clock.advance(0)
        self.answers[0].callback(["fine"])
        self.assertEqual(self.successResultOf(later), "fine")

    def test_a_failure_result_fails_its_item_alone(self):
        batch = TurnBatch(self.clock, self.run_chunk)
        good, bad = batch.submit("good"), batch.submit("bad")
        self.clock.advance(0)
        self.answers[0].callback(["fine", Failure(KeyError("bad"))])
        self.assertEqual(self.successResultOf(good), "fine")
        self.failureResultOf(bad, KeyError)

    def test_a_failed_run_fails_every_item(self):
        batch = TurnBatch(self.clock, self.run_chunk)
        results = [batch.submit(i) for i in range(3)]
        self.clock.advance(0)
        self.answers[0].errback(ConnectionError("gone"))
        for result in results:
            self.failureResultOf(result, ConnectionError)

    def test_a_run_that_raises_fails_every_item(self):
        def broken(items):
            raise RuntimeError("bug")

        batch = TurnBatch(self.clock, broken)
        result = batch.submit(1)
        self.clock.advance(0)
        self.failureResultOf(result, RuntimeError)

    def test_wrong_number_of_results(self):
        batch = TurnBatch(self.clock, self.run_chunk)
        results = [batch.submit(i) for i in range(2)]
        self.clock.advance(0)
        self.answers[0].callback(["only one"])
        for result in results:
            self.assertIn("1 results for 2 requests", str(self.failureResultOf(result, ValueError).value))

    def test_refusal_fails_at_once(self):
        refusal = [None]
        batch = TurnBatch(self.clock, self.run_chunk, refusal=lambda: refusal[0])
        refusal[0] = ConnectionError("redis is down")
        self.failureResultOf(batch.submit(1), ConnectionError)
        self.assertEqual(len(batch), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_flush_now(self):
        batch = TurnBatch(self.clock, self.run_chunk)
        batch.submit(1)
        batch.flush()
        self.assertEqual(self.runs, [[1]])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bad_max_items(self):
        for bad in (0, -1, True, 1.5):
            self.assertRaises(ValueError, TurnBatch, self.clock, self.run_chunk, max_items=bad)


def location(conn_id: str, host: str = "10.0.0.1", port: int = 3001) -> ClientLocation:
    return ClientLocation(
        host=host, port=port, device_id=f"dev-{conn_id}", os_name="android", client_version="1.0", conn_id=conn_id
    )


class RedisBatchingTests(RedisRoutingTestCase):
    """What a turn's requests cost Redis, and that batching keeps each answer its own."""

    def calls(self) -> dict[str, int]:
        text = self.raw("INFO", "commandstats").decode()
        calls = {}
        for line in text.splitlines():
            if line.startswith("cmdstat_"):
                name, _, fields = line[len("cmdstat_"):].partition(":")
                calls[name] = int(fields.split(",")[0].partition("=")[2])
        return calls

    def counted(self, before, name):
        return self.calls().get(name, 0) - before.get(name, 0)

    def make_router(self):
        router = RedisRemoteRouter(self.client, reactor, timeout=CALL_TIMEOUT)
        self.addCleanup(router.close)
        return router

    @defer.inlineCallbacks
    def test_a_turns_registers_are_one_script_each_with_its_own_answer(self):
        router = self.make_router()
        yield router.register("u0", 1, location("old-0"))
        before = self.calls()
        previous = yield defer.gatherResults(
            [router.register(f"u{i}", 1, location(f"new-{i}")) for i in range(50)]
        )
        self.assertEqual(self.counted(before, "eval"), 1)
        self.assertEqual(previous[0].conn_id, "old-0")
        self.assertEqual(previous[1:], [None] * 49)
        self.assertEqual((yield router.lookup_type("u7", 1)).conn_id, "new-7")

    @defer.inlineCallbacks
    def test_a_turns_closes_are_one_read_and_one_write(self):
        router = self.make_router()
        yield defer.gatherResults([router.register(f"u{i}", 1, location(f"c{i}")) for i in range(40)])
        before = self.calls()
        marked = yield defer.gatherResults(
            [router.mark_offline(f"u{i}", 1, conn_id=f"c{i}") for i in range(40)]
        )
        self.assertEqual(marked, [True] * 40)
        self.assertEqual(self.counted(before, "eval"), 2)
        self.assertFalse((yield router.lookup_type("u3", 1)).online)

    @defer.inlineCallbacks
    def test_a_user_who_rebound_in_the_same_turn_is_never_marked_offline(self):
        router = self.make_router()
        yield router.register("alice", 1, location("old"))
        closing = router.mark_offline("alice", 1, conn_id="old")
        rebinding = router.register("alice", 1, location("new"))
        self.assertFalse((yield closing))
        self.assertEqual((yield rebinding).conn_id, "old")
        route = yield router.lookup_type("alice", 1)
        self.assertEqual((route.conn_id, route.online), ("new", True))

    @defer.inlineCallbacks
    def test_events_of_a_turn_keep_their_order(self):
        events = RedisUserEvents(self.client, "10.0.0.1", reactor, timeout=CALL_TIMEOUT, gateway=("10.0.0.1", 3001))
        self.addCleanup(events.close)
        before = self.calls()
        yield defer.gatherResults(
            [events.user_online("a"), events.user_online("b"), events.user_offline("a"), events.user_online("c")]
        )
        self.assertEqual(self.counted(before, "eval"), 1)
        self.assertEqual(self.counted(before, "publish"), 4)
        self.assertEqual(set(self.raw("ZRANGE", "mp:oul:10.0.0.1", "0", "-1")), {b"b", b"c"})

    @defer.inlineCallbacks
    def test_a_turns_kicks_are_one_script(self):
        channel = RedisKickChannel(
            self.server.url, reactor, timeout=CALL_TIMEOUT, publisher=self.client, max_retry_delay=0.2
        )
        self.addCleanup(channel.close)
        heard = []
        yield channel.listen("10.0.0.2", 3001, heard.append)
        before = self.calls()
        kicks = [
            KickRequest(
                user_id=f"u{i}", device_id=f"d{i}", conn_id=f"c{i}", client_type=1,
                target_server="10.0.0.2", target_port=3001,
            )
            for i in range(10)
        ]
        reached = yield defer.gatherResults([channel.publish(kick) for kick in kicks])
        self.assertEqual(reached, [1] * 10)
        self.assertEqual(self.counted(before, "eval"), 1)
        yield self.eventually(lambda: len(heard) == 10, "every kick heard")
        self.assertEqual([k.user_id for k in heard], [f"u{i}" for i in range(10)])

    @defer.inlineCallbacks
    def test_a_turns_session_lookups_are_one_mget(self):
        store = RedisSessionStore(self.client, reactor, timeout=CALL_TIMEOUT, close_connection=False)
        self.addCleanup(store.close)
        sessions = {
            f"s{i}": ReusableSession(
                os_name="android", os_version="9", client_version="1.0", device_id=f"d{i}",
                session_key=bytes([i]) * 16, iv=bytes([i + 1]) * 16,
            )
            for i in range(20)
        }
        yield defer.gatherResults([store.save(sid, s, 600) for sid, s in sessions.items()])
        self.raw("SET", session_key("junk"), "not a session")
        self.raw("HSET", session_key("wrongtype"), "f", "v")
        before = self.calls()
        ids = [*sessions, "missing", "junk", "wrongtype"]
        loaded = yield defer.gatherResults([store.load(sid) for sid in ids])
        self.assertEqual(self.counted(before, "mget"), 1)
        self.assertEqual([s.device_id for s in loaded[:20]], [f"d{i}" for i in range(20)])
        self.assertEqual(loaded[0].session_key, b"\x00" * 16)
        self.assertEqual(loaded[20:], [None, None, None])

    @defer.inlineCallbacks
    def test_offline_claims_and_releases(self):
        store = RedisOfflineStore(self.client, reactor, timeout=CALL_TIMEOUT)
        self.addCleanup(store.close)
        message = OfflineMessage(
            message_id="m1", content=b"hi", ack="auto", created_ms=1000, expires_ms=10**13
        )
        yield store.add("has", message)
        before = self.calls()
        claimed = yield defer.gatherResults(
            [store.claim(user, "conn-1", 30_000, 2000) for user in ("has", "none-1", "none-2")]
        )
        # One existence check for the three, one claim for the one with a queue.
        self.assertEqual(self.counted(before, "eval"), 2)
        self.assertEqual([[m.message_id for m in c] for c in claimed], [["m1"], [], []])
        released = yield defer.gatherResults(
            [store.release("has", "someone-else"), store.release("has", "conn-1"), store.release("none-1", "conn-1")]
        )
        self.assertEqual(released, [0, 1, 0])
        again = yield store.claim("has", "conn-2", 30_000, 3000)
        self.assertEqual([m.message_id for m in again], ["m1"])
