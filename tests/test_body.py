"""Body pipeline (spec 4): compress-then-encrypt, decrypt-then-inflate, bounds."""

import zlib

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.body import (
    decode_body,
    encode_body,
    inflate,
    make_packet,
    make_raw_packet,
)
from mpush.protocol.crypto import (
    MPUSH_DEMO_PRIVATE_KEY,
    AesCipher,
    RsaPrivateKey,
)
from mpush.protocol.errors import (
    BodyError,
    CryptoError,
    DecompressError,
    InflateTooLarge,
)
from mpush.protocol.messages import (
    AckMessage,
    BindUserMessage,
    ErrorMessage,
    HandshakeMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import Command, Flags, Packet, encode_packet

CIPHER = AesCipher(bytes.fromhex("faae5fec9add4171adade9e9adad6161"), bytes.fromhex("0102030405060708090a0b0c0d0e0f10"))


class EncodeBodyTests(SynchronousTestCase):
    def test_empty_body(self):
        self.assertEqual(encode_body(b"", CIPHER, 0), (b"", 0))

    def test_plain(self):
        self.assertEqual(encode_body(b"abc"), (b"abc", 0))

    def test_threshold_is_strictly_greater(self):
        self.assertEqual(encode_body(b"a" * 10240), (b"a" * 10240, 0))
        wire, flags = encode_body(b"a" * 10241)
        self.assertEqual(flags, Flags.COMPRESS)
        self.assertEqual(wire, zlib.compress(b"a" * 10241))
        self.assertEqual(wire[:2], b"\x78\x9c")

    def test_no_compression_when_threshold_none(self):
        self.assertEqual(encode_body(b"a" * 100000, None, None), (b"a" * 100000, 0))

    def test_compressed_even_if_larger(self):
        wire, flags = encode_body(b"\x01\x02", None, 1)
        self.assertEqual(flags, Flags.COMPRESS)
        self.assertGreater(len(wire), 2)

    def test_encrypt(self):
        wire, flags = encode_body(b"hello", CIPHER)
        self.assertEqual(flags, Flags.CRYPTO)
        self.assertEqual(wire, CIPHER.encrypt(b"hello"))

    def test_compress_then_encrypt(self):
        body = b"X" * 20000
        wire, flags = encode_body(body, CIPHER)
        self.assertEqual(flags, Flags.CRYPTO | Flags.COMPRESS)
        self.assertEqual(zlib.decompress(CIPHER.decrypt(wire)), body)

    def test_rsa_public_key_as_cipher(self):
        private = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)
        body = HandshakeMessage("d" * 150, "android", "6.0", "2.0", bytes(16), bytes(16), 1, 2).encode()
        wire, flags = encode_body(body, private.public_key(), 1024)
        self.assertEqual(flags, Flags.CRYPTO)
        self.assertEqual(len(wire), 256)
        self.assertEqual(private.decrypt(wire), body)


class DecodeBodyTests(SynchronousTestCase):
    def test_empty(self):
        self.assertEqual(decode_body(Packet(Command.ACK, flags=Flags.CRYPTO | Flags.COMPRESS), CIPHER), b"")

    def test_plain(self):
        self.assertEqual(decode_body(Packet(Command.OK, body=b"xyz")), b"xyz")

    def test_crypto_without_cipher_is_used_as_is(self):
        self.assertEqual(decode_body(Packet(Command.PUSH, flags=Flags.CRYPTO, body=b"raw")), b"raw")

    def test_cipher_ignored_without_crypto_flag(self):
        self.assertEqual(decode_body(Packet(Command.OK, body=b"raw"), CIPHER), b"raw")

    def test_round_trip_every_combination(self):
        for size in (1, 100, 10240, 10241, 50000):
            for cipher in (None, CIPHER):
                body = bytes(i % 7 for i in range(size))
                wire, flags = encode_body(body, cipher)
                self.assertEqual(decode_body(Packet(Command.PUSH, 1, flags, wire), cipher), body)

    def test_bad_ciphertext(self):
        with self.assertRaises(CryptoError):
            decode_body(Packet(Command.BIND, flags=Flags.CRYPTO, body=b"short"), CIPHER)
        other = AesCipher(bytes(16), bytes(16))
        with self.assertRaises(CryptoError):
            decode_body(Packet(Command.BIND, flags=Flags.CRYPTO, body=CIPHER.encrypt(b"hi")), other)

    def test_becomes_empty_is_message_decode_ex(self):
        with self.assertRaises(BodyError) as ctx:
            decode_body(Packet(Command.BIND, flags=Flags.CRYPTO, body=CIPHER.encrypt(b"")), CIPHER)
        self.assertEqual(str(ctx.exception), "message decode ex")
        with self.assertRaises(BodyError):
            decode_body(Packet(Command.BIND, flags=Flags.COMPRESS, body=zlib.compress(b"")))

    def test_corrupt_zlib(self):
        raw = zlib.compressobj(wbits=-15)
        raw_deflate = raw.compress(b"hello") + raw.flush()
        for data in (b"not zlib", zlib.compress(b"hello")[:-3], b"\x78\x9c", raw_deflate):
            with self.assertRaises(DecompressError, msg=repr(data)):
                decode_body(Packet(Command.PUSH, flags=Flags.COMPRESS, body=data))

    def test_gzip_is_not_accepted(self):
        gz = zlib.compressobj(wbits=31)
        data = gz.compress(b"hello") + gz.flush()
        self.assertRaises(DecompressError, decode_body, Packet(Command.PUSH, flags=Flags.COMPRESS, body=data))

    def test_trailing_bytes_after_zlib_stream_ignored(self):
        data = zlib.compress(b"hello") + b"junk"
        self.assertEqual(decode_body(Packet(Command.PUSH, flags=Flags.COMPRESS, body=data)), b"hello")

    def test_zlib_bomb_is_bounded(self):
        bomb = zlib.compress(bytes(50 * 1024 * 1024), 9)
        self.assertLess(len(bomb), 60000)
        packet = Packet(Command.PUSH, flags=Flags.COMPRESS, body=bomb)
        with self.assertRaises(InflateTooLarge) as ctx:
            decode_body(packet)
        self.assertIn("1048576", str(ctx.exception))
        self.assertTrue(issubclass(InflateTooLarge, DecompressError))
        with self.assertRaises(InflateTooLarge):
            decode_body(packet, max_inflated=1000)

    def test_inflate_limit_is_inclusive(self):
        data = zlib.compress(b"z" * 5000)
        self.assertEqual(inflate(data, 5000), b"z" * 5000)
        self.assertRaises(InflateTooLarge, inflate, data, 4999)
        self.assertRaises(ValueError, inflate, data, 0)


class MakePacketTests(SynchronousTestCase):
    def test_send_encrypts(self):
        packet = make_packet(Command.BIND, BindUserMessage("user-1", None, "tag-a"), 2, CIPHER)
        self.assertEqual(
            encode_packet(packet).hex(),
            "000000200500000100000002009df9fb1d352ceaaf86b7e3e8230fb7571866496f27fbfbb15a4865c12bfdc59a",
        )

    def test_send_keeps_caller_flags(self):
        packet = make_packet(Command.PUSH, PushMessage(b'{"msg":"hello"}'), 100001, CIPHER, flags=Flags.AUTO_ACK)
        self.assertEqual(packet.flags, 9)
        self.assertEqual(
            encode_packet(packet).hex(),
            "000000100f000009000186a10099a70eed7d13295aa35b604ed8ae59d7",
        )

    def test_send_compresses_above_threshold(self):
        packet = make_packet(Command.PUSH, PushMessage(b"X" * 20000), 1, CIPHER, flags=Flags.BIZ_ACK)
        self.assertEqual(packet.flags, 0x07)
        self.assertEqual(decode_body(packet, CIPHER), b"X" * 20000)
        self.assertEqual(len(packet.body), 48)  # spec 20.3

    def test_send_without_cipher(self):
        packet = make_packet(Command.FAST_CONNECT, OkMessage(7), 1)
        self.assertEqual((packet.flags, packet.body), (0, OkMessage(7).encode()))

    def test_send_empty(self):
        self.assertEqual(make_packet(Command.ACK, None, 5, CIPHER), Packet(Command.ACK, 5, 0, b""))
        self.assertEqual(make_packet(Command.ACK, AckMessage(), 5, CIPHER), Packet(Command.ACK, 5, 0, b""))

    def test_raw_never_compresses_or_encrypts(self):
        message = ErrorMessage(7, 103, "session expired")
        packet = make_raw_packet(Command.ERROR, message, 1)
        self.assertEqual(
            encode_packet(packet).hex(),
            "000000150a00000000000001000767000f73657373696f6e20657870697265640000",
        )
        big = make_raw_packet(Command.PUSH, PushMessage(b"a" * 20000), 3, Flags.AUTO_ACK)
        self.assertEqual((big.flags, big.body), (Flags.AUTO_ACK, b"a" * 20000))

    def test_raw_ack(self):
        self.assertEqual(
            encode_packet(make_raw_packet(Command.ACK, None, 1)).hex(), "00000000170000000000000100"
        )
