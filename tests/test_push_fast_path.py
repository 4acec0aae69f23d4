"""
The push path's shortcuts give exactly what the general code gives.
"""

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.routing import encode_push_result
from mpush.server.gateway.push_center import Outcome, push_result_json

USER_IDS = [
    "alice",
    "",
    'quote"back\\slash/solidus',
    "tab\tnew\nline\rcr\x00nul\x1funit\x7fdel",
    "ünïcødé 用户 🚀",
    "lone \ud800 surrogate",
    "\u2028\u2029 separators",
    None,
]

POINTS = [
    [("push-center-begin", 1700000000000), ("before-send", 1700000000001), (Outcome.SUCCESS, 1700000000002)],
    [("push-center-begin", 0), ("before-send", -1), ("waiting-ack", 2**63 - 1), (Outcome.TIMEOUT, -(2**63))],
    [("push-center-begin", 5), (Outcome.OFFLINE, 5)],
    [("push-center-begin", -(2**63)), ("before-send", 2**63 - 1), (Outcome.FAILURE, 0)],
    [],
]


class PushResultJsonTests(SynchronousTestCase):
    def test_same_bytes_as_encode_push_result(self):
        for user_id in USER_IDS:
            for client_type in (-(2**31), -1, 0, 1, 2, 3, 2**31 - 1):
                for points in POINTS:
                    self.assertEqual(
                        push_result_json(user_id, client_type, points),
                        encode_push_result(user_id, client_type, points),
                        (user_id, client_type, points),
                    )

    def test_unusual_values_take_the_general_encoder(self):
        for user_id, client_type, points in [
            ("a", 2**31, []),
            ("a", True, []),
            ("a", 1, [("custom \"name\"", 1)]),
            ("a", 1, [("before-send", 2**63)]),
            ("a", 1, [("before-send", True)]),
            ("a", 1, [("push-center-begin", 1), ("before-send", 2**63), (Outcome.SUCCESS, 1)]),
            ("a", 1, [("push-center-begin", 1), ("odd name", 2), (Outcome.SUCCESS, 1)]),
            ("a", 1, [("push-center-begin", 1), ("before-send", 2.0), (Outcome.SUCCESS, 1)]),
            (b"bytes", 1, []),
        ]:
            try:
                expected = encode_push_result(user_id, client_type, points)
            except ValueError as error:
                self.assertRaises(type(error), push_result_json, user_id, client_type, points)
            else:
                self.assertEqual(push_result_json(user_id, client_type, points), expected)


class GatewayShortcutTests(SynchronousTestCase):
    def test_gateway_push_decode_matches_the_field_reader(self):
        from mpush.protocol.errors import ProtocolError
        from mpush.protocol.messages import GatewayPushMessage

        messages = [
            GatewayPushMessage("alice", 1, 3000, b"x" * 100),
            GatewayPushMessage("ü用户", -5, -1, b"\x00" * 70000),
            GatewayPushMessage("bob", 0, 0, None),
            GatewayPushMessage(None, 0, 10, b"all", "task", ("a", "b"), "tags != null"),
            GatewayPushMessage("carol", 2, 1, b"c", None, ("vip",)),
            GatewayPushMessage("x" * 40000, 2, 1, b"c"),
        ]
        for message in messages:
            body = message.encode()
            for cut in [len(body), len(body) + 3, *range(0, min(len(body), 40))]:
                data = body[:cut] if cut <= len(body) else body + b"zzz"
                try:
                    expected = GatewayPushMessage._decode_fields(data)
                except ProtocolError as error:
                    with self.assertRaises(type(error)) as raised:
                        GatewayPushMessage.decode(data)
                    self.assertEqual(str(raised.exception), str(error))
                else:
                    self.assertEqual(GatewayPushMessage.decode(data), expected)
                    self.assertEqual(GatewayPushMessage.decode(bytearray(data)), expected)
        bad_utf8 = b"\x00\x02\xff\xfe" + bytes(8) + b"\x00\x01x" + bytes(6)
        with self.assertRaises(ProtocolError):
            GatewayPushMessage.decode(bad_utf8)

    def test_answer_ok_matches_make_raw_packet(self):
        from twisted.internet.testing import StringTransport

        from mpush.protocol.body import make_raw_packet
        from mpush.protocol.messages import OkMessage
        from mpush.protocol.packet import Command, encode_packet
        from mpush.server.gateway.gateway import GatewayProtocol

        for data in ['{"a":1}', "ü" * 20000, "x" * 40000, "", None, "lone \ud800"]:
            for session_id in (1, 2**31 - 1, -(2**31), 0):
                protocol = GatewayProtocol(None, 1 << 20)
                transport = StringTransport()
                protocol.makeConnection(transport)
                try:
                    expected = encode_packet(
                        make_raw_packet(Command.OK, OkMessage(Command.GATEWAY_PUSH, 0, data), session_id)
                    )
                except ValueError:
                    self.assertRaises(ValueError, protocol.answer_ok, session_id, data)
                    continue
                protocol.answer_ok(session_id, data)
                self.assertEqual(transport.value(), expected, (data[:10] if data else data, session_id))


class BatchedMetricsTests(SynchronousTestCase):
    def test_hot_path_counts_read_as_if_counted_at_once(self):
        import random

        from prometheus_client import CollectorRegistry, Histogram

        from mpush.metrics import ACK_LATENCY_BUCKETS, PrometheusMetrics

        metrics = PrometheusMetrics()
        reference = Histogram("ref_seconds", "", buckets=ACK_LATENCY_BUCKETS, registry=CollectorRegistry())
        rng = random.Random(3)
        sent = received = 0
        for i in range(2000):
            n = rng.randrange(0, 5000)
            metrics.bytes_out(n)
            metrics.bytes_in(n + 1)
            sent, received = sent + n, received + n + 1
            metrics.push(("success", "failure", "ack_timeout")[i % 3])
            latency = rng.choice([0.0, rng.random() / 100, rng.random() * 20, *ACK_LATENCY_BUCKETS[:3]])
            metrics.ack_latency(latency)
            reference.observe(latency)
            if i % 500 == 0:
                metrics.render()  # a scrape in between
        get = metrics.registry.get_sample_value
        self.assertEqual(get("mpush_sent_bytes_total"), sent)
        self.assertEqual(get("mpush_received_bytes_total"), received)
        self.assertEqual(get("mpush_pushes_total", {"result": "success"}), 667)
        self.assertEqual(get("mpush_pushes_total", {"result": "ack_timeout"}), 666)
        expected = {
            (s.name.replace("ref_seconds", "mpush_ack_latency_seconds"), tuple(sorted(s.labels.items()))): s.value
            for family in reference.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        }
        for (name, labels), value in expected.items():
            self.assertAlmostEqual(get(name, dict(labels)), value, places=6, msg=(name, labels))


class AckTableTimerTests(SynchronousTestCase):
    def setUp(self):
        from twisted.internet.task import Clock

        from mpush.server.gateway.acks import AckTable

        self.clock = Clock()
        self.clock.advance(1_700_000_000.123)
        self.table = AckTable(self.clock)

    def test_each_wait_times_out_at_its_own_deadline(self):
        from mpush.server.gateway.acks import AckTimeout

        failed = {}
        timeouts = {1: 2.5, 2: 0.3, 3: 2.5, 4: 1.0, 5: 0.0001}
        for message_id, timeout in timeouts.items():
            self.table.expect(message_id, timeout).addErrback(
                lambda f, m=message_id: failed.setdefault(m, (f.check(AckTimeout), self.clock.seconds()))
            )
        self.assertTrue(self.table.acknowledge(4))
        start = self.clock.seconds()
        for step in (0.0001, 0.2999, 0.7, 1.5):
            self.clock.advance(step)
        self.assertEqual(sorted(failed), [1, 2, 3, 5])
        for message_id in (1, 2, 3, 5):
            self.assertIs(failed[message_id][0], AckTimeout)
            self.assertAlmostEqual(failed[message_id][1] - start, timeouts[message_id], places=6)
        self.assertEqual(len(self.table), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_a_moment_early(self):
        fired = []
        self.table.expect(7, 2.5).addErrback(lambda f: fired.append(self.clock.seconds()))
        self.clock.advance(2.4999)
        self.assertEqual(fired, [])
        self.clock.advance(0.0001)
        self.assertEqual(len(fired), 1)

    def test_no_timer_left_when_all_are_answered(self):
        for message_id in range(100):
            self.table.expect(message_id, 3.0, owner="c")
        for message_id in range(100):
            self.assertTrue(self.table.acknowledge(message_id, "c"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(len(self.table._deadlines), 0)

    def test_cancelled_and_reused_ids(self):
        waiting = self.table.expect(1, 1.0)
        waiting.addErrback(lambda f: None)
        waiting.cancel()
        results = []
        self.table.expect(1, 2.0).addErrback(lambda f: results.append(self.clock.seconds()))
        self.clock.advance(1.0)
        self.assertEqual(results, [])
        self.clock.advance(1.0)
        self.assertEqual(len(results), 1)


class BenchFrameTests(SynchronousTestCase):
    def test_gateway_push_frame_matches_the_message_encoder(self):
        from mpush.bench.wire import _gateway_push_frame
        from mpush.protocol.messages import GatewayPushMessage
        from mpush.protocol.packet import Command, Packet, encode_packet

        for user in ["user-1", "ü用户", None, "x" * 40000]:
            for content in [b"a" * 100, b"b" * 4096, b"", b"z" * 40000]:
                for flags in (0, 4, 8, 64):
                    for timeout in (3000, 0, -1):
                        expected = encode_packet(
                            Packet(Command.GATEWAY_PUSH, 77, flags,
                                   GatewayPushMessage(user, 1, timeout, content or None).encode())
                        )
                        self.assertEqual(_gateway_push_frame(77, flags, user, 1, timeout, content), expected)
