"""Framing: encode_packet and the incremental PacketDecoder (spec 2)."""

import gc
import struct
import weakref

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.errors import FramingError, FrameTooLarge, NegativeLength
from mpush.protocol.packet import (
    HEADER_LENGTH,
    HEARTBEAT,
    HEARTBEAT_BYTE,
    Command,
    Flags,
    Packet,
    PacketDecoder,
    encode_packet,
)


def frame(cmd, body=b"", session_id=0, flags=0, cc=0, lrc=0, length=None):
    """A frame built by hand, independent of encode_packet."""
    if length is None:
        length = len(body)
    return struct.pack(">ibhbib", length, cmd, cc, flags, session_id, lrc) + body


class CommandAndFlagsTests(SynchronousTestCase):
    def test_command_codes(self):
        self.assertEqual(len(Command), 24)
        self.assertEqual(Command.HEARTBEAT, 1)
        self.assertEqual(Command.FAST_CONNECT, 7)
        self.assertEqual(Command.HTTP_PROXY, 12)
        self.assertEqual(Command.GATEWAY_KICK, 14)
        self.assertEqual(Command.GATEWAY_PUSH, 16)
        self.assertEqual(Command.ACK, 23)
        self.assertEqual(Command.NACK, 24)
        self.assertEqual([c.value for c in Command], list(range(1, 25)))

    def test_flags(self):
        self.assertEqual(
            [int(f) for f in (Flags.CRYPTO, Flags.COMPRESS, Flags.BIZ_ACK, Flags.AUTO_ACK, Flags.JSON_BODY)],
            [1, 2, 4, 8, 16],
        )

    def test_has_flag_is_any_bit(self):
        packet = Packet(Command.PUSH, flags=Flags.CRYPTO | Flags.AUTO_ACK)
        self.assertTrue(packet.has_flag(Flags.CRYPTO))
        self.assertTrue(packet.has_flag(Flags.AUTO_ACK))
        self.assertFalse(packet.has_flag(Flags.BIZ_ACK))
        # Server semantics: any bit of the mask.
        self.assertTrue(packet.has_flag(Flags.BIZ_ACK | Flags.AUTO_ACK))

    def test_is_heartbeat(self):
        self.assertTrue(HEARTBEAT.is_heartbeat)
        self.assertTrue(Packet(1, session_id=5).is_heartbeat)
        self.assertFalse(Packet(Command.ACK).is_heartbeat)

    def test_packet_is_frozen(self):
        packet = Packet(Command.ACK)
        with self.assertRaises(AttributeError):
            packet.cmd = 2


class EncodeTests(SynchronousTestCase):
    def test_heartbeat_is_one_byte(self):
        self.assertEqual(encode_packet(HEARTBEAT), HEARTBEAT_BYTE)
        # Whatever the other fields of a heartbeat packet.
        self.assertEqual(encode_packet(Packet(1, 9, 3, b"xyz", 4, 5)), b"\xdf")

    def test_header_layout(self):
        self.assertEqual(
            encode_packet(Packet(Command.OK, 2, 0, b"abc")),
            bytes.fromhex("000000030b0000000000000200") + b"abc",
        )

    def test_empty_body(self):
        self.assertEqual(
            encode_packet(Packet(Command.ACK, 42)), bytes.fromhex("00000000170000000000002a00")
        )

    def test_unsigned_fields_accepted(self):
        signed = encode_packet(Packet(-56, -2, -128, b"x", -1, -85))
        unsigned = encode_packet(Packet(200, 0xFFFFFFFE, 0x80, b"x", 0xFFFF, 171))
        self.assertEqual(signed, unsigned)
        self.assertEqual(signed, frame(-56, b"x", -2, -128, -1, -85))

    def test_out_of_range_fields_rejected(self):
        for packet in (
            Packet(256),
            Packet(Command.PUSH, flags=-129),
            Packet(Command.PUSH, session_id=1 << 32),
            Packet(Command.PUSH, cc=1 << 16),
            Packet(Command.PUSH, lrc=300),
        ):
            with self.assertRaises(ValueError, msg=repr(packet)):
                encode_packet(packet)

    def test_bytearray_body(self):
        self.assertEqual(
            encode_packet(Packet(Command.PUSH, 1, 0, bytearray(b"hi"))), frame(15, b"hi", 1)
        )


class DecoderTests(SynchronousTestCase):
    def test_single_frame(self):
        decoder = PacketDecoder()
        self.assertEqual(
            decoder.feed(frame(Command.BIND, b"body", 7, 1, 3, 4)),
            [Packet(5, 7, 1, b"body", 3, 4)],
        )
        self.assertEqual(decoder.buffered, 0)

    def test_partial_frames(self):
        data = frame(Command.PUSH, b"0123456789", 3)
        decoder = PacketDecoder()
        self.assertEqual(decoder.feed(data[:5]), [])
        self.assertEqual(decoder.buffered, 5)
        self.assertEqual(decoder.feed(data[5:HEADER_LENGTH]), [])
        self.assertEqual(decoder.feed(data[HEADER_LENGTH:-1]), [])
        self.assertEqual(decoder.buffered, len(data) - 1)
        self.assertEqual(decoder.feed(data[-1:]), [Packet(15, 3, 0, b"0123456789")])
        self.assertEqual(decoder.buffered, 0)

    def test_one_byte_feeds(self):
        data = b"\xdf" + frame(Command.OK, b"\x05\x00\x00", 8) + b"\xdf" + frame(Command.ACK, b"", 9)
        decoder = PacketDecoder()
        got = []
        for i in range(len(data)):
            got.extend(decoder.feed(data[i:i + 1]))
        self.assertEqual(
            got, [HEARTBEAT, Packet(11, 8, 0, b"\x05\x00\x00"), HEARTBEAT, Packet(23, 9)]
        )
        self.assertEqual(decoder.buffered, 0)

    def test_many_frames_in_one_chunk(self):
        expected = [Packet(Command.PUSH, n, 8, bytes([n % 256]) * (n % 50)) for n in range(1, 2001)]
        data = b"".join(encode_packet(p) for p in expected)
        decoder = PacketDecoder()
        self.assertEqual(decoder.feed(data), expected)
        self.assertEqual(decoder.buffered, 0)

    def test_chunks_split_across_frames(self):
        expected = [Packet(Command.PUSH, n, 0, b"x" * n) for n in range(1, 60)]
        data = b"".join(encode_packet(p) for p in expected)
        decoder = PacketDecoder()
        got = []
        for i in range(0, len(data), 37):
            got.extend(decoder.feed(data[i:i + 37]))
        self.assertEqual(got, expected)

    def test_heartbeats_between_frames(self):
        data = b"\xdf\xdf" + frame(Command.ACK, b"", 1) + b"\xdf" + frame(Command.ACK, b"", 2) + b"\xdf"
        self.assertEqual(
            PacketDecoder().feed(data),
            [HEARTBEAT, HEARTBEAT, Packet(23, 1), HEARTBEAT, Packet(23, 2), HEARTBEAT],
        )

    def test_df_inside_a_frame_is_data(self):
        body = b"\xdf\xdf\xdf"
        self.assertEqual(
            PacketDecoder().feed(frame(Command.PUSH, body, 1)), [Packet(15, 1, 0, body)]
        )

    def test_framed_heartbeat_is_cmd_1(self):
        (packet,) = PacketDecoder().feed(frame(Command.HEARTBEAT, b"", 4))
        self.assertEqual(packet.cmd, 1)
        self.assertTrue(packet.is_heartbeat)

    def test_empty_feed(self):
        decoder = PacketDecoder()
        self.assertEqual(decoder.feed(b""), [])
        self.assertEqual(decoder.buffered, 0)

    def test_signed_fields_decoded_as_java_reads_them(self):
        (packet,) = PacketDecoder().feed(bytes.fromhex("00000000c8ffff80fffffffeab"))
        self.assertEqual(
            (packet.cmd, packet.cc, packet.flags, packet.session_id, packet.lrc),
            (-56, -1, -128, -2, -85),
        )

    def test_oversize_rejected_from_header_alone(self):
        decoder = PacketDecoder(10240)
        header = frame(Command.PUSH, length=10241)
        self.assertEqual(len(header), HEADER_LENGTH)
        with self.assertRaises(FrameTooLarge) as ctx:
            decoder.feed(header)
        self.assertEqual(ctx.exception.length, 10241)
        self.assertEqual(ctx.exception.limit, 10240)
        self.assertEqual(
            str(ctx.exception), "frame body of 10241 bytes exceeds max-packet-size 10240"
        )

    def test_oversize_rejected_from_length_field(self):
        with self.assertRaises(FrameTooLarge):
            PacketDecoder(10240).feed(struct.pack(">i", 99999))

    def test_oversize_after_good_frames_keeps_them_on_the_error(self):
        good = frame(Command.ACK, b"", 1)
        with self.assertRaises(FrameTooLarge) as ctx:
            PacketDecoder(100).feed(b"\xdf" + good + frame(Command.PUSH, length=101))
        self.assertEqual(ctx.exception.packets, (HEARTBEAT, Packet(23, 1)))

    def test_exactly_max_size_accepted(self):
        body = b"m" * 10240
        decoder = PacketDecoder(10240)
        self.assertEqual(decoder.feed(frame(Command.PUSH, body, 1)), [Packet(15, 1, 0, body)])

    def test_zero_limit(self):
        decoder = PacketDecoder(0)
        self.assertEqual(decoder.feed(frame(Command.ACK, b"", 1)), [Packet(23, 1)])
        with self.assertRaises(FrameTooLarge):
            decoder.feed(frame(Command.PUSH, b"x", 1))

    def test_no_limit(self):
        body = b"b" * 100000
        self.assertEqual(PacketDecoder(None).feed(frame(Command.PUSH, body)), [Packet(15, 0, 0, body)])

    def test_negative_length(self):
        with self.assertRaises(NegativeLength) as ctx:
            PacketDecoder().feed(frame(Command.PUSH, length=-1))
        self.assertIn("-1", str(ctx.exception))
        # Also without a limit, and as soon as the length field is known.
        with self.assertRaises(NegativeLength):
            PacketDecoder(None).feed(b"\x80\x00\x00\x00")

    def test_unusable_after_error(self):
        decoder = PacketDecoder(10)
        with self.assertRaises(FrameTooLarge):
            decoder.feed(frame(Command.PUSH, length=11))
        with self.assertRaises(FramingError) as ctx:
            decoder.feed(frame(Command.ACK))
        self.assertIn("already failed", str(ctx.exception))
        self.assertEqual(decoder.buffered, 0)

    def test_invalid_limit(self):
        self.assertRaises(ValueError, PacketDecoder, -1)

    def test_large_frame_in_one_byte_feeds_is_linear(self):
        # 512 KiB fed one byte at a time: quadratic buffering would not finish.
        body = bytes(range(256)) * 2048
        data = frame(Command.PUSH, body, 1)
        decoder = PacketDecoder(None)
        got = []
        feed = decoder.feed
        for i in range(len(data)):
            got.extend(feed(data[i:i + 1]))
        self.assertEqual(got, [Packet(15, 1, 0, body)])


_int8 = st.integers(-128, 127)
_packets = st.builds(
    Packet,
    cmd=_int8.filter(lambda c: c != 1),
    session_id=st.integers(-(2**31), 2**31 - 1),
    flags=_int8,
    body=st.binary(max_size=300),
    cc=st.integers(-(2**15), 2**15 - 1),
    lrc=_int8,
)


class _Reader:
    """A caller that owns its decoder and catches its errors, as a connection does."""

    def __init__(self):
        self.decoder = PacketDecoder(16)
        self.buffer = bytearray(100_000)

    def read(self, data):
        try:
            self.decoder.feed(data)
        except FramingError as error:
            return str(error)


class DecoderFailureReferenceTests(SynchronousTestCase):
    def test_a_failed_decoder_does_not_keep_its_caller_alive(self):
        """
        A garbage flood closes thousands of connections whose decoders
        failed: a failure kept with its traceback would hold each caller
        (and its buffers) in a cycle until the cyclic GC ran.
        """
        gc.disable()
        self.addCleanup(gc.enable)
        reader = _Reader()
        self.assertIn("exceeds", reader.read(struct.pack(">i", 1000) + bytes(9)))
        self.assertRaises(FramingError, reader.decoder.feed, b"more")
        alive = weakref.ref(reader)
        del reader
        self.assertIsNone(alive())


class DecoderPropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8), st.sampled_from([None, 0, 16, 10240]))
    def test_arbitrary_bytes_give_packets_or_framing_error(self, data, cuts, limit):
        decoder = PacketDecoder(limit)
        bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
        consumed = 0
        try:
            for start, stop in zip(bounds, bounds[1:]):
                for packet in decoder.feed(data[start:stop]):
                    self.assertIsInstance(packet, Packet)
                    consumed += 1 if packet == HEARTBEAT else HEADER_LENGTH + len(packet.body)
                    if limit is not None:
                        self.assertLessEqual(len(packet.body), limit)
        except FramingError:
            return
        self.assertEqual(consumed + decoder.buffered, len(data))

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(st.one_of(st.just(HEARTBEAT), _packets), max_size=12),
        st.lists(st.integers(0, 5000), max_size=10),
    )
    def test_encode_then_feed_round_trips(self, packets, cuts):
        data = b"".join(encode_packet(p) for p in packets)
        decoder = PacketDecoder(None)
        bounds = sorted({0, len(data), *[c for c in cuts if c <= len(data)]})
        got = []
        for start, stop in zip(bounds, bounds[1:]):
            got.extend(decoder.feed(data[start:stop]))
        self.assertEqual(got, packets)
        self.assertEqual(decoder.buffered, 0)
