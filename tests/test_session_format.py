"""
The reusable-session and client-session strings, byte for byte as MPush's
Java server and client write them (spec 8.2, 9.2, 20.2).
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.session import (
    ClientSession,
    InvalidSession,
    ReusableSession,
    decode_client_session,
    decode_key_list,
    decode_reusable_session,
    encode_client_session,
    encode_key_list,
    encode_reusable_session,
    new_session_id,
)
from tests.vectors import load_vectors

# Spec 20.2: sessionKey f0e0d0c0b0a090807060504030201000, iv 00..0f.
SPEC_KEY = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
SPEC_IV = bytes(range(16))
SPEC_KEY_TEXT = "-16|-32|-48|-64|-80|-96|-112|-128|112|96|80|64|48|32|16|0"
SPEC_IV_TEXT = "0|1|2|3|4|5|6|7|8|9|10|11|12|13|14|15"
SPEC_RENDERING = f"{SPEC_KEY_TEXT},{SPEC_IV_TEXT}"


def _vector(vector_id: str) -> dict:
    for vector in load_vectors()["vectors"]:
        if vector["id"] == vector_id:
            return vector
    raise AssertionError(f"vector {vector_id} missing from the Java vectors")


def _session(**changes) -> ReusableSession:
    fields = dict(
        os_name="android",
        os_version="6.0",
        client_version="2.0",
        device_id="dev-1",
        session_key=SPEC_KEY,
        iv=SPEC_IV,
    )
    fields.update(changes)
    return ReusableSession(**fields)


class KeyListTests(SynchronousTestCase):
    def test_spec_example(self):
        self.assertEqual(encode_key_list(SPEC_KEY), SPEC_KEY_TEXT)
        self.assertEqual(encode_key_list(SPEC_IV), SPEC_IV_TEXT)
        self.assertEqual(decode_key_list(SPEC_KEY_TEXT), SPEC_KEY)
        self.assertEqual(decode_key_list(SPEC_IV_TEXT), SPEC_IV)

    def test_extremes_are_java_signed_bytes(self):
        self.assertEqual(encode_key_list(b"\x80\x7f\xff\x00"), "-128|127|-1|0")
        self.assertEqual(decode_key_list("-128|127|-1|0", length=4), b"\x80\x7f\xff\x00")

    def test_java_accepts_plus_sign_and_leading_zeros(self):
        self.assertEqual(decode_key_list("+5|007|-0", length=3), b"\x05\x07\x00")

    def test_wrong_count(self):
        fifteen = "|".join(["1"] * 15)
        seventeen = "|".join(["1"] * 17)
        self.assertRaises(ValueError, decode_key_list, fifteen)
        self.assertRaises(ValueError, decode_key_list, seventeen)
        self.assertRaises(ValueError, decode_key_list, "")
        self.assertRaises(ValueError, decode_key_list, SPEC_KEY_TEXT + "|")

    def test_out_of_range(self):
        base = ["0"] * 16
        for bad in ("128", "-129", "1000", "9" * 5000):
            parts = base[:15] + [bad]
            with self.assertRaises(ValueError, msg=bad):
                decode_key_list("|".join(parts))

    def test_garbage(self):
        base = ["0"] * 15
        for bad in ("a", "", " 1", "1 ", "1_0", "0x10", "1.0", "\u0663", "--1", "+"):
            with self.assertRaises(ValueError, msg=repr(bad)):
                decode_key_list("|".join(base + [bad]))

    def test_not_text(self):
        self.assertRaises(ValueError, decode_key_list, b"1|2")
        self.assertRaises(ValueError, decode_key_list, None)
        self.assertRaises(TypeError, encode_key_list, "abc")

    def test_bad_length_argument(self):
        self.assertRaises(ValueError, decode_key_list, "1", 0)

    @given(st.binary(min_size=1, max_size=64))
    def test_round_trip(self, data):
        self.assertEqual(decode_key_list(encode_key_list(data), len(data)), data)


class ReusableSessionTests(SynchronousTestCase):
    def test_exact_mpush_string(self):
        self.assertEqual(
            encode_reusable_session(_session()),
            f"android,6.0,2.0,dev-1,{SPEC_RENDERING}",
        )

    def test_decode_java_value(self):
        session = decode_reusable_session(f"android,6.0,2.0,dev-1,{SPEC_RENDERING}")
        self.assertEqual(session, _session())

    def test_decode_bytes(self):
        text = f"ios,17,1.0,\u00e9t\u00e9,{SPEC_RENDERING}"
        session = decode_reusable_session(text.encode("utf-8"))
        self.assertEqual(session.device_id, "\u00e9t\u00e9")

    def test_null_fields(self):
        session = _session(os_name=None, os_version=None, client_version=None, device_id=None)
        text = encode_reusable_session(session)
        self.assertEqual(text, f"null,null,null,null,{SPEC_RENDERING}")
        self.assertEqual(decode_reusable_session(text), session)

    def test_device_named_null_reads_as_none(self):
        # Java cannot tell them apart either.
        text = encode_reusable_session(_session(device_id="null"))
        self.assertIsNone(decode_reusable_session(text).device_id)

    def test_empty_fields_stay_empty(self):
        session = _session(os_name="", os_version="")
        self.assertEqual(decode_reusable_session(encode_reusable_session(session)), session)

    def test_five_and_seven_parts_rejected(self):
        self.assertRaises(InvalidSession, decode_reusable_session, f"6.0,2.0,dev-1,{SPEC_RENDERING}")
        self.assertRaises(
            InvalidSession, decode_reusable_session, f"android,6.0,2.0,dev,1,{SPEC_RENDERING}"
        )
        self.assertRaises(
            InvalidSession, decode_reusable_session, f"android,6.0,2.0,dev-1,{SPEC_RENDERING},"
        )

    def test_bad_key_or_iv_rejected(self):
        sixteen = SPEC_KEY_TEXT
        fifteen = "|".join(SPEC_KEY_TEXT.split("|")[:15])
        seventeen = SPEC_KEY_TEXT + "|1"
        too_big = SPEC_KEY_TEXT.replace("-16", "128", 1)
        too_small = SPEC_KEY_TEXT.replace("-16", "-129", 1)
        garbage = SPEC_KEY_TEXT.replace("-16", "x", 1)
        for bad in (fifteen, seventeen, too_big, too_small, garbage, ""):
            with self.assertRaises(InvalidSession, msg=bad):
                decode_reusable_session(f"a,b,c,d,{bad},{sixteen}")
            with self.assertRaises(InvalidSession, msg=bad):
                decode_reusable_session(f"a,b,c,d,{sixteen},{bad}")

    def test_garbage_rejected(self):
        for bad in ("", "   ", "null", "hello", ",,,,,", b"\xff\xfe,,,,,", "1,2,3,4,5,6"):
            with self.assertRaises(InvalidSession, msg=repr(bad)):
                decode_reusable_session(bad)
        self.assertRaises(InvalidSession, decode_reusable_session, None)
        self.assertRaises(InvalidSession, decode_reusable_session, 123)

    def test_other_key_length(self):
        session = _session(session_key=b"\x01" * 32, iv=b"\x02" * 32)
        text = encode_reusable_session(session)
        self.assertEqual(decode_reusable_session(text, key_length=32), session)
        self.assertRaises(InvalidSession, decode_reusable_session, text)

    def test_comma_in_field_refused_on_encode(self):
        # Java would write it and never read it back.
        self.assertRaises(InvalidSession, encode_reusable_session, _session(os_version="6,0"))
        self.assertRaises(InvalidSession, encode_reusable_session, _session(device_id="a,b"))

    def test_bad_values_refused_on_encode(self):
        self.assertRaises(InvalidSession, encode_reusable_session, _session(session_key=b""))
        self.assertRaises(InvalidSession, encode_reusable_session, _session(iv=None))
        self.assertRaises(InvalidSession, encode_reusable_session, _session(os_name=5))
        self.assertRaises(InvalidSession, encode_reusable_session, "not a session")

    def test_immutable(self):
        session = _session()
        with self.assertRaises(AttributeError):
            session.device_id = "other"
        self.assertFalse(hasattr(session, "__dict__"))

    @given(
        st.one_of(st.none(), st.text().filter(lambda s: "," not in s and s != "null")),
        st.one_of(st.none(), st.text().filter(lambda s: "," not in s and s != "null")),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
    )
    def test_round_trip(self, device_id, os_name, key, iv):
        session = _session(device_id=device_id, os_name=os_name, session_key=key, iv=iv)
        self.assertEqual(decode_reusable_session(encode_reusable_session(session)), session)


class ClientSessionTests(SynchronousTestCase):
    def test_java_client_vector(self):
        vector = _vector("exchange_fast_connect")
        given_ = vector["input"]
        expected = vector["expected"]["client_persisted_session_string"]
        session = decode_client_session(expected)
        self.assertEqual(session.session_id, given_["stored_session_id"])
        self.assertEqual(session.expire_time, 1700000000000)
        self.assertEqual(session.session_key, bytes.fromhex(given_["session_key"]))
        self.assertEqual(session.iv, bytes.fromhex(given_["iv"]))
        self.assertEqual(encode_client_session(session), expected)

    def test_spec_shape(self):
        session = ClientSession("bc2af56ed518246b3a5b52e4d72483a4", 1796070738451, SPEC_KEY, SPEC_IV)
        self.assertEqual(
            encode_client_session(session),
            f"bc2af56ed518246b3a5b52e4d72483a4,1796070738451,{SPEC_RENDERING}",
        )

    def test_wrong_part_count(self):
        self.assertRaises(InvalidSession, decode_client_session, f"abc,{SPEC_RENDERING}")
        self.assertRaises(InvalidSession, decode_client_session, f"abc,1,2,{SPEC_RENDERING}")

    def test_bad_expire_time(self):
        for bad in ("", "soon", "1.5", " 1", str(2**63), str(-(2**63) - 1)):
            with self.assertRaises(InvalidSession, msg=bad):
                decode_client_session(f"abc,{bad},{SPEC_RENDERING}")

    def test_bad_session_id(self):
        self.assertRaises(InvalidSession, decode_client_session, f",1,{SPEC_RENDERING}")
        self.assertRaises(
            InvalidSession, encode_client_session, ClientSession("", 1, SPEC_KEY, SPEC_IV)
        )
        self.assertRaises(
            InvalidSession, encode_client_session, ClientSession("a,b", 1, SPEC_KEY, SPEC_IV)
        )
        self.assertRaises(
            InvalidSession, encode_client_session, ClientSession("a", 2**63, SPEC_KEY, SPEC_IV)
        )

    def test_bad_key_or_iv(self):
        self.assertRaises(InvalidSession, decode_client_session, f"abc,1,{SPEC_KEY_TEXT},1|2")
        self.assertRaises(InvalidSession, decode_client_session, f"abc,1,x,{SPEC_IV_TEXT}")

    def test_garbage(self):
        self.assertRaises(InvalidSession, decode_client_session, "")
        self.assertRaises(InvalidSession, decode_client_session, b"\xff")
        self.assertRaises(InvalidSession, decode_client_session, None)

    def test_negative_expire_time_is_a_long(self):
        text = f"abc,-5,{SPEC_RENDERING}"
        self.assertEqual(decode_client_session(text).expire_time, -5)
        self.assertEqual(encode_client_session(decode_client_session(text)), text)


class NewSessionIdTests(SynchronousTestCase):
    def test_shape(self):
        for _ in range(100):
            self.assertRegex(new_session_id(), re.compile(r"\A[0-9a-f]{32}\Z"))

    def test_distinct(self):
        ids = {new_session_id() for _ in range(10_000)}
        self.assertEqual(len(ids), 10_000)
