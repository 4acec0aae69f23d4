"""Field codec (spec 3): integers, length-prefixed bytes/strings, header maps."""

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.errors import BodyError, MalformedField, TruncatedBody
from mpush.protocol.fields import FieldReader, FieldWriter, decode_headers, encode_headers


def write(method, value):
    writer = FieldWriter()
    getattr(writer, method)(value)
    return writer.getvalue()


class IntegerTests(SynchronousTestCase):
    def test_widths_and_byte_order(self):
        self.assertEqual(write("write_byte", -1), b"\xff")
        self.assertEqual(write("write_short", 0x1234), b"\x12\x34")
        self.assertEqual(write("write_int", 240000), bytes.fromhex("0003a980"))
        self.assertEqual(write("write_long", 1700000000000), bytes.fromhex("0000018bcfe56800"))
        self.assertEqual(write("write_long", -2), b"\xff" * 7 + b"\xfe")

    def test_limits(self):
        for method, bits in (("write_byte", 8), ("write_short", 16), ("write_int", 32), ("write_long", 64)):
            low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            reader = FieldReader(write(method, low) + write(method, high))
            read = getattr(reader, method.replace("write", "read"))
            self.assertEqual((read(), read()), (low, high))
            self.assertRaises(ValueError, write, method, high + 1)
            self.assertRaises(ValueError, write, method, low - 1)

    def test_non_int_rejected(self):
        self.assertRaises(ValueError, write, "write_int", "5")
        self.assertRaises(ValueError, write, "write_byte", True)
        self.assertRaises(ValueError, write, "write_long", 1.5)

    def test_chaining(self):
        writer = FieldWriter()
        self.assertIs(writer.write_byte(1).write_short(2).write_int(3).write_long(4), writer)
        self.assertEqual(len(writer.getvalue()), 15)

    def test_truncated_integers(self):
        for method, size in (("read_byte", 1), ("read_short", 2), ("read_int", 4), ("read_long", 8)):
            reader = FieldReader(b"\x01" * (size - 1))
            with self.assertRaises(TruncatedBody, msg=method):
                getattr(reader, method)()

    def test_remaining_and_trailing_bytes(self):
        reader = FieldReader(b"\x00\x00\x00\x07extra")
        self.assertEqual(reader.read_int(), 7)
        self.assertEqual(reader.remaining, 5)


class BytesTests(SynchronousTestCase):
    def test_null_and_empty_are_zero_length(self):
        self.assertEqual(write("write_bytes", None), b"\x00\x00")
        self.assertEqual(write("write_bytes", b""), b"\x00\x00")
        self.assertIsNone(FieldReader(b"\x00\x00").read_bytes())

    def test_short_length(self):
        self.assertEqual(write("write_bytes", b"abc"), b"\x00\x03abc")
        self.assertEqual(FieldReader(b"\x00\x03abcZ").read_bytes(), b"abc")

    def test_length_32766_uses_int16(self):
        data = b"a" * 32766
        encoded = write("write_bytes", data)
        self.assertEqual(encoded[:2], b"\x7f\xfe")
        self.assertEqual(len(encoded), 32768)
        self.assertEqual(FieldReader(encoded).read_bytes(), data)

    def test_length_32767_uses_extension_of_zero(self):
        data = b"b" * 32767
        encoded = write("write_bytes", data)
        self.assertEqual(encoded[:6], bytes.fromhex("7fff00000000"))
        self.assertEqual(len(encoded), 32773)
        self.assertEqual(FieldReader(encoded).read_bytes(), data)

    def test_length_32768_uses_extension_of_one(self):
        data = b"c" * 32768
        encoded = write("write_bytes", data)
        self.assertEqual(encoded[:6], bytes.fromhex("7fff00000001"))
        self.assertEqual(FieldReader(encoded).read_bytes(), data)

    def test_truncated_data(self):
        with self.assertRaises(TruncatedBody) as ctx:
            FieldReader(b"\x00\x05abc").read_bytes()
        self.assertIn("5 bytes", str(ctx.exception))

    def test_truncated_length(self):
        self.assertRaises(TruncatedBody, FieldReader(b"\x00").read_bytes)
        self.assertRaises(TruncatedBody, FieldReader(b"").read_bytes)

    def test_truncated_extension(self):
        self.assertRaises(TruncatedBody, FieldReader(b"\x7f\xff\x00\x00").read_bytes)
        self.assertRaises(TruncatedBody, FieldReader(b"\x7f\xff\x00\x00\x00\x01" + b"x" * 32767).read_bytes)

    def test_negative_length(self):
        with self.assertRaises(MalformedField) as ctx:
            FieldReader(b"\xff\xfe" + b"x" * 10).read_bytes()
        self.assertIn("negative length", str(ctx.exception))

    def test_negative_extension(self):
        with self.assertRaises(MalformedField):
            FieldReader(b"\x7f\xff\xff\xff\xff\xff" + b"x" * 10).read_bytes()

    def test_errors_are_body_errors(self):
        self.assertTrue(issubclass(TruncatedBody, BodyError))
        self.assertTrue(issubclass(MalformedField, BodyError))

    @settings(max_examples=100, deadline=None)
    @given(st.lists(st.one_of(st.none(), st.binary(max_size=70000).filter(bool)), max_size=4))
    def test_round_trip(self, values):
        writer = FieldWriter()
        for value in values:
            writer.write_bytes(value)
        reader = FieldReader(writer.getvalue())
        self.assertEqual([reader.read_bytes() for _ in values], values)
        self.assertEqual(reader.remaining, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=64))
    def test_garbage_gives_value_or_body_error(self, data):
        reader = FieldReader(data)
        try:
            reader.read_string()
            reader.read_bytes()
            reader.read_headers()
        except BodyError:
            pass


class StringTests(SynchronousTestCase):
    def test_null_and_empty_both_decode_as_none(self):
        self.assertEqual(write("write_string", None), b"\x00\x00")
        self.assertEqual(write("write_string", ""), b"\x00\x00")
        self.assertIsNone(FieldReader(write("write_string", "")).read_string())

    def test_utf8(self):
        self.assertEqual(write("write_string", "中文"), bytes.fromhex("0006e4b8ade69687"))
        self.assertEqual(FieldReader(bytes.fromhex("0006e4b8ade69687")).read_string(), "中文")

    def test_long_string(self):
        text = "é" * 20000  # 40000 UTF-8 bytes: the length counts bytes, not characters
        encoded = write("write_string", text)
        self.assertEqual(encoded[:6], bytes.fromhex("7fff00001c41"))
        self.assertEqual(FieldReader(encoded).read_string(), text)

    def test_bad_utf8(self):
        with self.assertRaises(MalformedField) as ctx:
            FieldReader(b"\x00\x02\xc3\x28").read_string()
        self.assertIn("UTF-8", str(ctx.exception))

    def test_unencodable_string(self):
        self.assertRaises(ValueError, write, "write_string", "\ud800")

    def test_non_string_rejected(self):
        self.assertRaises(ValueError, write, "write_string", 5)
        self.assertRaises(ValueError, write, "write_string", b"bytes")


class HeaderTests(SynchronousTestCase):
    def test_encode_keeps_order(self):
        self.assertEqual(
            encode_headers({"readTimeout": "10000", "Content-Type": "text/plain"}),
            "readTimeout:10000\nContent-Type:text/plain\n",
        )

    def test_encode_none_and_empty_map(self):
        self.assertIsNone(encode_headers(None))
        self.assertIsNone(encode_headers({}))
        self.assertEqual(write("write_headers", {}), b"\x00\x00")
        self.assertEqual(write("write_headers", None), b"\x00\x00")

    def test_encode_null_value_and_int(self):
        self.assertEqual(encode_headers({"a": None, "t": 3000}), "a:null\nt:3000\n")

    def test_encode_rejects_what_java_would_corrupt(self):
        for bad in ({"": "v"}, {"a:b": "v"}, {"a\nb": "v"}, {"a": "x\ny"}, {"a": b"v"}, {1: "v"}):
            self.assertRaises(ValueError, encode_headers, bad)

    def test_decode_none(self):
        self.assertIsNone(decode_headers(None))
        self.assertEqual(decode_headers(""), {})

    def test_decode_no_trimming(self):
        self.assertEqual(decode_headers("a: b\n c :d\n"), {"a": " b", " c ": "d"})

    def test_decode_splits_at_first_colon(self):
        self.assertEqual(decode_headers("Host:example.com:8080\n"), {"Host": "example.com:8080"})

    def test_decode_skips_lines_without_name(self):
        self.assertEqual(decode_headers("novalue\n:x\n\nk:v\n"), {"k": "v"})

    def test_decode_empty_value_reuses_previous(self):
        self.assertEqual(decode_headers("a:1\nb:\n"), {"a": "1", "b": "1"})
        # First header with an empty value: None.
        self.assertEqual(decode_headers("b:\na:1\n"), {"b": None, "a": "1"})
        # Skipped lines do not reset the carried value.
        self.assertEqual(decode_headers("a:1\njunk\nb:\n"), {"a": "1", "b": "1"})

    def test_decode_ignores_text_after_last_newline(self):
        self.assertEqual(decode_headers("a:1\nb:2"), {"a": "1"})
        self.assertEqual(decode_headers("b:2"), {})

    def test_decode_duplicate_names_last_wins(self):
        self.assertEqual(decode_headers("a:1\na:2\n"), {"a": "2"})

    def test_read_headers(self):
        encoded = write("write_headers", {"x": "1"})
        self.assertEqual(encoded, b"\x00\x04x:1\n")
        self.assertEqual(FieldReader(encoded).read_headers(), {"x": "1"})
        self.assertIsNone(FieldReader(b"\x00\x00").read_headers())

    @settings(max_examples=200, deadline=None)
    @given(
        st.dictionaries(
            st.text(min_size=1).filter(lambda s: ":" not in s and "\n" not in s),
            st.text(min_size=1).filter(lambda s: "\n" not in s),
            max_size=6,
        )
    )
    def test_round_trip_non_empty_values(self, headers):
        self.assertEqual(decode_headers(encode_headers(headers)), headers or None)
