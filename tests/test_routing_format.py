"""
The routing strings shared with MPush's Java nodes and push client: route
JSON, kick JSON, push-result JSON, node registrations, keys and channels
(spec 11.4, 11.8, 12.6, 19).
"""

from __future__ import annotations

import dataclasses
import json
import sys

from hypothesis import given
from hypothesis import strategies as st

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.client_type import ClientType
from mpush.protocol.routing import (
    NODES_KEY,
    OFFLINE_CHANNEL,
    ONLINE_CHANNEL,
    ClientLocation,
    InvalidKick,
    InvalidLocation,
    InvalidNodeInfo,
    InvalidPushResult,
    InvalidRouteField,
    KickRequest,
    NodeInfo,
    client_type_field,
    decode_kick,
    decode_location,
    decode_node_member,
    decode_push_result,
    decode_route_member,
    encode_kick,
    encode_location,
    encode_node_member,
    encode_push_result,
    encode_route_member,
    kick_channel,
    node_key,
    node_routes_key,
    online_users_key,
    parse_client_type_field,
    user_route_key,
)

ONLINE = ClientLocation(
    host="10.0.0.5",
    port=3001,
    device_id="dev-1",
    os_name="android",
    client_version="2.0",
    conn_id="8f2a6c1d",
)
SPEC_LOCATION = (
    '{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","osName":"android",'
    '"clientVersion":"2.0","connId":"8f2a6c1d"}'
)
KICK = KickRequest(
    user_id="u1",
    device_id="dev-1",
    conn_id="8f2a6c1d",
    client_type=1,
    target_server="10.0.0.5",
    target_port=3001,
)
SPEC_KICK = (
    '{"clientType":1,"connId":"8f2a6c1d","deviceId":"dev-1",'
    '"targetPort":3001,"targetServer":"10.0.0.5","userId":"u1"}'
)
SPEC_RESULT = (
    '{"clientType":1,"timePoints":["push-center-begin",1700000000000,"before-send",1700000000003,'
    '"waiting-ack",1700000000004,"success-end",1700000000050],"userId":"u1"}'
)
TIME_POINTS = [
    ("push-center-begin", 1700000000000),
    ("before-send", 1700000000003),
    ("waiting-ack", 1700000000004),
    ("success-end", 1700000000050),
]


class KeyTests(SynchronousTestCase):
    def test_keys_and_channels(self):
        self.assertEqual(user_route_key("u1"), "mp:ur:u1")
        self.assertEqual(online_users_key("1.2.3.4"), "mp:oul:1.2.3.4")
        self.assertEqual(kick_channel("10.0.0.5", 3001), "/mpush/kick/10.0.0.5:3001")
        self.assertEqual(ONLINE_CHANNEL, "/mpush/online/")
        self.assertEqual(OFFLINE_CHANNEL, "/mpush/offline/")
        self.assertEqual(node_routes_key("10.0.0.5", 3001), "mp:nr:10.0.0.5:3001")
        self.assertEqual(node_key("10.0.0.5", 3001), "mp:node:10.0.0.5:3001")
        self.assertEqual(NODES_KEY, "mp:nodes")

    def test_bad_key_input(self):
        self.assertRaises(TypeError, user_route_key, None)
        self.assertRaises(TypeError, online_users_key, b"1.2.3.4")
        self.assertRaises(TypeError, kick_channel, "h", "3001")
        self.assertRaises(TypeError, kick_channel, None, 3001)
        self.assertRaises(TypeError, node_key, "h", True)

    def test_client_type_field(self):
        self.assertEqual(client_type_field(ClientType.MOBILE), "1")
        self.assertEqual(client_type_field(ClientType.UNKNOWN), "-1")
        self.assertEqual(parse_client_type_field("-1"), -1)
        self.assertEqual(parse_client_type_field(b"3"), 3)
        self.assertRaises(TypeError, client_type_field, "1")
        self.assertRaises(TypeError, client_type_field, True)
        for bad in ("", "x", "1.0", " 1", "٣", "-", "99999999999", b"\xff", None):
            self.assertRaises(InvalidRouteField, parse_client_type_field, bad)

    def test_route_member(self):
        self.assertEqual(encode_route_member("u1", ClientType.PC), "u1\t2")
        self.assertEqual(decode_route_member("u1\t2"), ("u1", 2))
        self.assertEqual(decode_route_member(encode_route_member("a\tb", -1)), ("a\tb", -1))
        for bad in ("u1", "u1\tx", "u1\t", b"\xff\t1", 5):
            self.assertRaises(InvalidRouteField, decode_route_member, bad)

    def test_node_member(self):
        self.assertEqual(encode_node_member("10.0.0.5", 3001), "10.0.0.5:3001")
        self.assertEqual(decode_node_member("10.0.0.5:3001"), ("10.0.0.5", 3001))
        self.assertEqual(decode_node_member(b"::1:3001"), ("::1", 3001))
        for bad in ("10.0.0.5", ":3001", "h:", "h:x", "h:-1", b"\xff:1", None):
            self.assertRaises(InvalidNodeInfo, decode_node_member, bad)


class LocationTests(SynchronousTestCase):
    def test_spec_example(self):
        self.assertEqual(encode_location(ONLINE), SPEC_LOCATION)
        self.assertEqual(decode_location(SPEC_LOCATION), ONLINE)
        self.assertEqual(decode_location(SPEC_LOCATION.encode()), ONLINE)

    def test_properties(self):
        self.assertTrue(ONLINE.online)
        self.assertIs(ONLINE.client_type, ClientType.MOBILE)
        self.assertEqual(ONLINE.gateway, ("10.0.0.5", 3001))

    def test_offline_drops_conn_id(self):
        offline = ONLINE.offline()
        self.assertFalse(offline.online)
        self.assertEqual(offline.device_id, "dev-1")
        self.assertEqual(
            encode_location(offline),
            '{"port":3001,"host":"10.0.0.5","deviceId":"dev-1","osName":"android","clientVersion":"2.0"}',
        )

    def test_nulls_left_out(self):
        self.assertEqual(
            encode_location(ClientLocation(None, 3001, None, None, None, None)),
            '{"port":3001}',
        )
        self.assertEqual(
            encode_location(ClientLocation("h", 1, None, "ios", None, "c")),
            '{"port":1,"host":"h","osName":"ios","connId":"c"}',
        )

    def test_any_key_order(self):
        text = (
            '{"connId":"8f2a6c1d","clientVersion":"2.0","osName":"android",'
            '"deviceId":"dev-1","host":"10.0.0.5","port":3001}'
        )
        self.assertEqual(decode_location(text), ONLINE)
        spaced = '{ "host" : "10.0.0.5", "port" : 3001, "deviceId": "dev-1", "osName": "android", "clientVersion": "2.0", "connId": "8f2a6c1d" }'
        self.assertEqual(decode_location(spaced), ONLINE)

    def test_missing_and_null_keys(self):
        self.assertEqual(
            decode_location('{"port":3001,"host":null,"deviceId":"d"}'),
            ClientLocation(None, 3001, "d", None, None, None),
        )
        # fastjson reads a missing int as 0.
        self.assertEqual(decode_location('{"host":"h"}').port, 0)

    def test_unknown_keys_ignored(self):
        self.assertEqual(decode_location('{"port":1,"weight":3,"attrs":{}}').port, 1)

    def test_escaping(self):
        # Java would write these unescaped (invalid JSON); we write valid JSON.
        odd = ClientLocation('a"b', 1, "d\\e", "ünï", "1\n", None)
        text = encode_location(odd)
        self.assertEqual(text, '{"port":1,"host":"a\\"b","deviceId":"d\\\\e","osName":"ünï","clientVersion":"1\\n"}')
        self.assertEqual(decode_location(text), odd)
        self.assertEqual(decode_location(text.encode("utf-8")), odd)

    def test_garbage(self):
        for bad in (
            "",
            "not json",
            "{",
            "[]",
            '"text"',
            "3001",
            "null",
            '{"port":"3001"}',
            '{"port":3001.0}',
            '{"port":true}',
            '{"port":99999999999}',
            '{"port":1,"host":5}',
            '{"port":1,"connId":{}}',
            '{"port":1,"deviceId":["d"]}',
            b"\xff\xfe",
            "[" * 100000,
            None,
            3001,
        ):
            self.assertRaises(InvalidLocation, decode_location, bad)

    def test_encode_refuses_wrong_types(self):
        for bad in (
            ClientLocation("h", "3001", None, None, None, None),
            ClientLocation("h", True, None, None, None, None),
            ClientLocation(5, 1, None, None, None, None),
            ClientLocation("h", 1, b"d", None, None, None),
            ("h", 1),
        ):
            self.assertRaises(InvalidLocation, encode_location, bad)

    def test_owned_by(self):
        self.assertTrue(ONLINE.owned_by(conn_id="8f2a6c1d"))
        self.assertTrue(ONLINE.owned_by(device_id="dev-1"))
        self.assertTrue(ONLINE.owned_by(conn_id="other", device_id="dev-1"))
        self.assertFalse(ONLINE.owned_by(conn_id="other"))
        self.assertFalse(ONLINE.owned_by(device_id="dev-2"))
        self.assertFalse(ONLINE.owned_by())
        self.assertFalse(ONLINE.offline().owned_by(conn_id="8f2a6c1d", device_id="dev-1"))

    def test_frozen(self):
        with self.assertRaises(Exception):
            ONLINE.conn_id = "x"
        self.assertFalse(hasattr(ONLINE, "__dict__"))


class KickTests(SynchronousTestCase):
    def test_spec_example(self):
        self.assertEqual(encode_kick(KICK), SPEC_KICK)
        self.assertEqual(decode_kick(SPEC_KICK), KICK)
        self.assertEqual(decode_kick(SPEC_KICK.encode()), KICK)

    def test_operator_kick_asks_to_close(self):
        """close is written only when true: MPush's kick keeps its exact form."""
        closing = dataclasses.replace(KICK, close=True)
        text = encode_kick(closing)
        self.assertEqual(text, SPEC_KICK.replace('"clientType":1,', '"clientType":1,"close":true,'))
        self.assertEqual(decode_kick(text), closing)
        self.assertFalse(decode_kick(SPEC_KICK).close)
        self.assertRaises(InvalidKick, decode_kick, SPEC_KICK[:-1] + ',"close":1}')
        self.assertRaises(InvalidKick, encode_kick, dataclasses.replace(KICK, close=1))

    def test_other_key_order(self):
        text = (
            '{"userId":"u1","targetServer":"10.0.0.5","targetPort":3001,'
            '"deviceId":"dev-1","connId":"8f2a6c1d","clientType":1}'
        )
        self.assertEqual(decode_kick(text), KICK)

    def test_nulls_left_out(self):
        kick = KickRequest("u1", None, None, -1, "h", 3001)
        self.assertEqual(
            encode_kick(kick),
            '{"clientType":-1,"targetPort":3001,"targetServer":"h","userId":"u1"}',
        )
        self.assertEqual(decode_kick(encode_kick(kick)), kick)

    def test_missing_ints_are_zero(self):
        self.assertEqual(decode_kick('{"userId":"u"}'), KickRequest("u", None, None, 0, None, 0))

    def test_garbage(self):
        for bad in (
            "",
            "kick",
            "[1]",
            '{"clientType":"1"}',
            '{"targetPort":1.5}',
            '{"userId":1}',
            '{"targetServer":false}',
            b"\x80",
            None,
        ):
            self.assertRaises(InvalidKick, decode_kick, bad)

    def test_encode_refuses_wrong_types(self):
        for bad in (
            KickRequest("u1", None, None, "1", "h", 3001),
            KickRequest("u1", None, None, 1, "h", None),
            KickRequest(1, None, None, 1, "h", 3001),
            {"userId": "u1"},
        ):
            self.assertRaises(InvalidKick, encode_kick, bad)


class PushResultTests(SynchronousTestCase):
    def test_spec_example(self):
        self.assertEqual(encode_push_result("u1", 1, TIME_POINTS), SPEC_RESULT)
        self.assertEqual(decode_push_result(SPEC_RESULT), ("u1", 1, TIME_POINTS))

    def test_flat_time_points_accepted(self):
        flat = [item for pair in TIME_POINTS for item in pair]
        self.assertEqual(encode_push_result("u1", ClientType.MOBILE, flat), SPEC_RESULT)

    def test_client_type_left_out_when_not_positive(self):
        self.assertEqual(
            encode_push_result("u1", -1, [("offline-end", 5)]),
            '{"timePoints":["offline-end",5],"userId":"u1"}',
        )
        self.assertEqual(encode_push_result("u1", 0, []), '{"timePoints":[],"userId":"u1"}')
        self.assertEqual(decode_push_result('{"timePoints":[],"userId":"u1"}'), ("u1", 0, []))

    def test_null_user_left_out(self):
        self.assertEqual(encode_push_result(None, 2, []), '{"clientType":2,"timePoints":[]}')
        self.assertEqual(decode_push_result('{"clientType":2}'), (None, 2, []))

    def test_garbage(self):
        for bad in (
            "",
            "[]",
            '{"timePoints":"a"}',
            '{"timePoints":["a"]}',
            '{"timePoints":[1,"a"]}',
            '{"timePoints":["a",1.5]}',
            '{"userId":7}',
            '{"clientType":"1"}',
            b"\xff",
        ):
            self.assertRaises(InvalidPushResult, decode_push_result, bad)

    def test_encode_refuses_wrong_types(self):
        for args in (
            (1, 1, []),
            ("u", "1", []),
            ("u", 1, ["a"]),
            ("u", 1, [("a", "1")]),
            ("u", 1, [(1, 1)]),
            ("u", 1, [("a", 1, 2)]),
            ("u", 1, 5),
        ):
            self.assertRaises(InvalidPushResult, encode_push_result, *args)


class NodeInfoTests(SynchronousTestCase):
    def test_round_trip(self):
        info = NodeInfo("10.0.0.5", 3001, "1.2.3.4", 3000, 1700000000000)
        text = info.to_json()
        self.assertEqual(
            text,
            '{"connectHost":"1.2.3.4","connectPort":3000,"host":"10.0.0.5","port":3001,"startedMs":1700000000000}',
        )
        self.assertEqual(NodeInfo.from_json(text), info)
        self.assertEqual(info.gateway, ("10.0.0.5", 3001))

    def test_from_member(self):
        self.assertEqual(NodeInfo.from_member("10.0.0.5:3001"), NodeInfo("10.0.0.5", 3001, None, 0, 0))

    def test_garbage(self):
        for bad in ("", "x", "[]", '{"port":1}', '{"host":"","port":1}', '{"host":"h","port":"1"}', b"\xff"):
            self.assertRaises(InvalidNodeInfo, NodeInfo.from_json, bad)
        self.assertRaises(InvalidNodeInfo, NodeInfo(None, 1, None, 0, 0).to_json)
        self.assertRaises(InvalidNodeInfo, NodeInfo("h", "1", None, 0, 0).to_json)
        self.assertRaises(InvalidNodeInfo, NodeInfo("h", 1, 5, 0, 0).to_json)


class SansIOTests(SynchronousTestCase):
    def test_no_twisted(self):
        for name in ("mpush.protocol.routing", "mpush.protocol.client_type"):
            module = sys.modules[name]
            source = open(module.__file__, encoding="utf-8").read()
            self.assertNotIn("twisted", source.replace("Twisted", ""), name)


class JsonStringTests(SynchronousTestCase):
    """
    Route JSON writes plain strings without json.dumps; the result must be
    json.dumps's, byte for byte, whatever the text.
    """

    @given(st.text())
    def test_same_as_json_dumps(self, text):
        from mpush.protocol.routing import _dump

        self.assertEqual(_dump(text), json.dumps(text, ensure_ascii=False, separators=(",", ":")))

    def test_escapes(self):
        from mpush.protocol.routing import _dump

        for text in ('a"b', "a\\b", "tab\t", "\x00", "\x1f", "\u2028", "\udc80", "\x7f", ""):
            self.assertEqual(_dump(text), json.dumps(text, ensure_ascii=False, separators=(",", ":")))
