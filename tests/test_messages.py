"""Message bodies (spec 6): every message round-trips; malformed bodies fail cleanly."""

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.errors import BodyError, ErrorCode, MalformedField, TruncatedBody
from mpush.protocol.fields import FieldWriter
from mpush.protocol.messages import (
    AckMessage,
    BindUserMessage,
    ErrorMessage,
    FastConnectMessage,
    FastConnectOkMessage,
    GatewayKickUserMessage,
    GatewayPushMessage,
    HandshakeMessage,
    HandshakeOkMessage,
    HttpRequestMessage,
    HttpResponseMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)

SAMPLES = [
    HandshakeMessage("dev-1", "android", "6.0", "2.0", bytes(range(16)), bytes(range(240, 256)), 240000, 240000),
    HandshakeMessage("d", None, None, None, None, None, 0, -1, -5),
    HandshakeOkMessage(b"k" * 16, 180000, "0123456789abcdef0123456789abcdef", 1700000000000),
    HandshakeOkMessage(b"k" * 16, 1, None, 0),
    FastConnectMessage("abc", "dev-1", 240000, 240000),
    FastConnectOkMessage(3000),
    BindUserMessage("u"),
    BindUserMessage("user-1", "alias", "tag-a,tag-b"),
    OkMessage(5, 0, "bind success"),
    OkMessage(16),
    ErrorMessage(7, 103, "session expired"),
    ErrorMessage(5, 0, "invalid param", '{"x":1}'),
    KickUserMessage("dev-1", "user-1"),
    PushMessage(b'{"msg":"hello"}'),
    PushMessage(b"\x00" * 40000),
    AckMessage(),
    HttpRequestMessage(1, "http://example.com/api", {"readTimeout": "10000"}, b"a=1"),
    HttpRequestMessage(0, "http://h/", None, None),
    HttpResponseMessage(200, "OK", {"Content-Type": "text/plain", "content-length": "5"}, b"hello"),
    HttpResponseMessage(502, "Bad Gateway", None, None),
    GatewayPushMessage("user-1", 1, 2500, b"content"),
    GatewayPushMessage(None, 0, 0, b"c", "task-1", ("a", "b"), "tags.indexOf('a') >= 0"),
    GatewayPushMessage(None, 0, 0, b"c", None, (), None),
    GatewayKickUserMessage("u", "d", "c0ffee12", 1, "10.0.0.1", 3001),
]


class RoundTripTests(SynchronousTestCase):
    def test_every_sample_round_trips(self):
        for message in SAMPLES:
            body = message.encode()
            self.assertIsInstance(body, bytes)
            self.assertEqual(type(message).decode(body), message, repr(message))

    def test_every_message_class_is_sampled(self):
        classes = {type(m) for m in SAMPLES}
        self.assertEqual(len(classes), 14)

    def test_trailing_bytes_ignored(self):
        for message in SAMPLES:
            if isinstance(message, (PushMessage, AckMessage)):
                continue
            self.assertEqual(type(message).decode(message.encode() + b"\x01\x02\x03"), message)

    def test_frozen_and_slotted(self):
        for message in SAMPLES:
            self.assertTrue(dataclasses.is_dataclass(message))
            self.assertFalse(hasattr(message, "__dict__"), type(message).__name__)
            field = dataclasses.fields(message)[0].name if dataclasses.fields(message) else None
            if field:
                with self.assertRaises(dataclasses.FrozenInstanceError):
                    setattr(message, field, None)

    def test_empty_strings_decode_as_none(self):
        self.assertEqual(
            BindUserMessage.decode(BindUserMessage("u", "", "").encode()), BindUserMessage("u")
        )


class LayoutTests(SynchronousTestCase):
    """Field order and widths, written independently with FieldWriter."""

    def test_handshake_ok_layout(self):
        self.assertEqual(
            HandshakeOkMessage(b"\x01" * 16, 7, "s", 9).encode(),
            FieldWriter().write_bytes(b"\x01" * 16).write_int(7).write_string("s").write_long(9).getvalue(),
        )

    def test_bind_order_is_user_data_tags(self):
        self.assertEqual(BindUserMessage("u").encode(), bytes.fromhex("0001750000 0000".replace(" ", "")))
        self.assertEqual(
            BindUserMessage("u", "d", "t").encode(), bytes.fromhex("000175000164000174")
        )

    def test_ok_and_error_layout(self):
        self.assertEqual(OkMessage(5, 0, "bind success").encode().hex(), "0500000c62696e642073756363657373")
        self.assertEqual(
            ErrorMessage(7, 103, "session expired").encode().hex(),
            "0767000f73657373696f6e20657870697265640000",
        )

    def test_fast_connect_layout(self):
        self.assertEqual(
            FastConnectMessage("abc", "dev-1", 240000, 240000).encode().hex(),
            "000361626300056465762d310003a9800003a980",
        )

    def test_push_body_is_content(self):
        self.assertEqual(PushMessage(b"raw").encode(), b"raw")
        self.assertEqual(PushMessage.decode(b"raw"), PushMessage(b"raw"))

    def test_ack_is_empty(self):
        self.assertEqual(AckMessage().encode(), b"")
        self.assertEqual(AckMessage.decode(b""), AckMessage())

    def test_gateway_push_layout(self):
        message = GatewayPushMessage("u", 1, 2500, b"hi", "t1", ("a", "b"), "c")
        expected = (
            FieldWriter()
            .write_string("u")
            .write_int(1)
            .write_int(2500)
            .write_bytes(b"hi")
            .write_string("t1")
            .write_string('["a","b"]')
            .write_string("c")
            .getvalue()
        )
        self.assertEqual(message.encode(), expected)

    def test_gateway_kick_layout(self):
        message = GatewayKickUserMessage("u", "d", "c", -1, "h", 3001)
        expected = (
            FieldWriter()
            .write_string("u")
            .write_string("d")
            .write_string("c")
            .write_int(-1)
            .write_string("h")
            .write_int(3001)
            .getvalue()
        )
        self.assertEqual(message.encode(), expected)

    def test_http_request_layout(self):
        message = HttpRequestMessage(3, "http://x/", {"a": "b"}, b"q")
        self.assertEqual(message.encode(), b"\x03\x00\x09http://x/\x00\x04a:b\n\x00\x01q")
        self.assertEqual(message.method_name, "DELETE")
        self.assertEqual(HttpRequestMessage(9, None, None, None).method_name, "GET")


class ErrorMessageTests(SynchronousTestCase):
    def test_from_code_uses_java_reason(self):
        message = ErrorMessage.from_code(7, ErrorCode.SESSION_EXPIRED)
        self.assertEqual(message, ErrorMessage(7, 103, "session expired", None))
        self.assertEqual(
            ErrorMessage.from_code(16, ErrorCode.OFFLINE, '{"a":1}'),
            ErrorMessage(16, 1, "user offline", '{"a":1}'),
        )

    def test_reason_texts(self):
        self.assertEqual(
            {code.name: code.reason for code in ErrorCode},
            {
                "OFFLINE": "user offline",
                "PUSH_CLIENT_FAILURE": "push to client failure",
                "ROUTER_CHANGE": "router change",
                "ACK_TIMEOUT": "ack timeout",
                "DISPATCH_ERROR": "handle message error",
                "UNSUPPORTED_CMD": "unsupported command",
                "REPEAT_HANDSHAKE": "repeat handshake",
                "SESSION_EXPIRED": "session expired",
                "INVALID_DEVICE": "invalid device",
                "UNKNOWN": "unknown",
            },
        )
        self.assertEqual(
            [int(c) for c in ErrorCode], [1, 2, 3, 4, 100, 101, 102, 103, 104, -1]
        )

    def test_unknown_code_lookup(self):
        self.assertIs(ErrorCode.of(103), ErrorCode.SESSION_EXPIRED)
        self.assertIs(ErrorCode.of(55), ErrorCode.UNKNOWN)

    def test_ad_hoc_reason(self):
        message = ErrorMessage(2, 0, "Param invalid")
        self.assertEqual(ErrorMessage.decode(message.encode()), message)

    def test_cmd_out_of_byte_range(self):
        self.assertRaises(ValueError, OkMessage(200).encode)


class GatewayTagsTests(SynchronousTestCase):
    def _body_with_tags(self, tags_text):
        return (
            FieldWriter()
            .write_string(None)
            .write_int(0)
            .write_int(0)
            .write_bytes(b"c")
            .write_string(None)
            .write_string(tags_text)
            .write_string(None)
            .getvalue()
        )

    def test_compact_json_like_fastjson(self):
        body = GatewayPushMessage(None, 0, 0, b"c", None, ("a", "中"), None).encode()
        self.assertIn('["a","中"]'.encode(), body)

    def test_frozenset_tags_sorted(self):
        message = GatewayPushMessage(None, 0, 0, b"c", None, frozenset({"b", "a"}))
        self.assertIn(b'["a","b"]', message.encode())
        self.assertEqual(GatewayPushMessage.decode(message.encode()).tags, ("a", "b"))

    def test_decode_accepts_spaced_json(self):
        decoded = GatewayPushMessage.decode(self._body_with_tags('[ "x" , "y" ]'))
        self.assertEqual(decoded.tags, ("x", "y"))

    def test_decode_rejects_non_array(self):
        for text in ('{"a":1}', '"a"', "null", "5"):
            with self.assertRaises(MalformedField, msg=text):
                GatewayPushMessage.decode(self._body_with_tags(text))

    def test_decode_rejects_non_string_members(self):
        for text in ("[1]", '["a",null]', '[["a"]]'):
            with self.assertRaises(MalformedField, msg=text):
                GatewayPushMessage.decode(self._body_with_tags(text))

    def test_decode_rejects_invalid_json(self):
        for text in ("[", "not json", "[" * 5000 + "]" * 5000):
            with self.assertRaises(MalformedField, msg=text[:20]):
                GatewayPushMessage.decode(self._body_with_tags(text))

    def test_encode_rejects_bad_tags(self):
        self.assertRaises(ValueError, GatewayPushMessage(None, 0, 0, b"c", None, "ab").encode)
        self.assertRaises(ValueError, GatewayPushMessage(None, 0, 0, b"c", None, (1,)).encode)


class MalformedBodyTests(SynchronousTestCase):
    def test_truncated_bodies(self):
        for message in SAMPLES:
            body = message.encode()
            if isinstance(message, (PushMessage, AckMessage)) or not body:
                continue
            for cut in range(len(body) - 1, -1, -max(1, len(body) // 7)):
                with self.assertRaises(TruncatedBody, msg=f"{type(message).__name__} cut at {cut}"):
                    type(message).decode(body[:cut])

    def test_empty_body_is_truncated(self):
        self.assertRaises(TruncatedBody, HandshakeMessage.decode, b"")
        self.assertRaises(TruncatedBody, FastConnectOkMessage.decode, b"\x00\x00")

    def test_negative_length_field(self):
        self.assertRaises(MalformedField, BindUserMessage.decode, b"\x80\x00")

    def test_bad_utf8_field(self):
        self.assertRaises(MalformedField, KickUserMessage.decode, b"\x00\x01\xff\x00\x00")

    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(sorted({type(m) for m in SAMPLES}, key=lambda c: c.__name__)),
        st.binary(max_size=80),
    )
    def test_garbage_gives_message_or_body_error(self, cls, body):
        try:
            message = cls.decode(body)
        except BodyError:
            return
        self.assertIsInstance(message, cls)
