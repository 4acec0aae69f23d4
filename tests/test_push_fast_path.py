"""
The push path's shortcuts give exactly what the general code gives.
"""

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.routing import encode_push_result
from mpush.server.push_center import Outcome, push_result_json

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
            (b"bytes", 1, []),
        ]:
            try:
                expected = encode_push_result(user_id, client_type, points)
            except ValueError as error:
                self.assertRaises(type(error), push_result_json, user_id, client_type, points)
            else:
                self.assertEqual(push_result_json(user_id, client_type, points), expected)
