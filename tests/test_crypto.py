"""Crypto (spec 7): AES-CBC with fixed IV, XOR key mix, chunked RSA, key loading."""

import base64

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.crypto import (
    AES_KEY_LENGTH,
    MPUSH_DEMO_MODULUS,
    MPUSH_DEMO_PRIVATE_KEY,
    MPUSH_DEMO_PUBLIC_KEY,
    AesCipher,
    RsaPrivateKey,
    RsaPublicKey,
    mix_key,
    random_bytes,
)
from mpush.protocol.errors import CryptoError, ProtocolError

KEY = bytes.fromhex("f0e0d0c0b0a090807060504030201000")
IV = bytes(range(16))

# One generated key for the whole module: generation costs time.
_GENERATED = RsaPrivateKey.generate(1024)


class RandomAndMixTests(SynchronousTestCase):
    def test_random_bytes(self):
        a, b = random_bytes(16), random_bytes(16)
        self.assertEqual((len(a), len(b)), (16, 16))
        self.assertNotEqual(a, b)
        self.assertEqual(AES_KEY_LENGTH, 16)

    def test_mix_key_is_xor(self):
        client = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff")
        server = bytes.fromhex("00112233445566778899aabbccddeeff")
        self.assertEqual(mix_key(client, server).hex(), "f0e0d0c0b0a090807060504030201000")
        self.assertEqual(mix_key(b"\x00" * 16, b"\xff" * 16), b"\xff" * 16)
        self.assertEqual(mix_key(bytes(16), bytes(16)), bytes(16))

    def test_mix_key_lengths_must_match(self):
        self.assertRaises(CryptoError, mix_key, bytes(16), bytes(15))
        self.assertRaises(CryptoError, mix_key, None, bytes(16))


class AesTests(SynchronousTestCase):
    def test_spec_example(self):
        # Spec 20.2: AES(sessionKey, iv 00..0f) of "hello".
        cipher = AesCipher(KEY, IV)
        self.assertEqual(cipher.encrypt(b"hello").hex(), "320b78ddc8d4c87d9c5245f0cd6e622e")
        self.assertEqual(cipher.decrypt(bytes.fromhex("320b78ddc8d4c87d9c5245f0cd6e622e")), b"hello")

    def test_same_iv_every_message(self):
        cipher = AesCipher(KEY, IV)
        self.assertEqual(cipher.encrypt(b"same"), cipher.encrypt(b"same"))
        self.assertEqual(cipher.decrypt(cipher.encrypt(b"x" * 33)), b"x" * 33)

    def test_lengths(self):
        cipher = AesCipher(KEY, IV)
        for n in (0, 1, 15, 16, 17, 64, 1000):
            self.assertEqual(len(cipher.encrypt(b"a" * n)), 16 * (n // 16 + 1))

    def test_attributes(self):
        cipher = AesCipher(bytearray(KEY), IV)
        self.assertEqual((cipher.key, cipher.iv), (KEY, IV))
        self.assertFalse(hasattr(cipher, "__dict__"))
        self.assertNotIn(KEY.hex(), repr(cipher))

    def test_bad_length_raises(self):
        cipher = AesCipher(KEY, IV)
        for n in (0, 1, 15, 17, 31):
            with self.assertRaises(CryptoError, msg=str(n)):
                cipher.decrypt(b"\x00" * n)

    def test_bad_padding_raises(self):
        cipher = AesCipher(KEY, IV)
        secret = cipher.encrypt(b"0123456789")
        other = AesCipher(bytes(16), IV)
        with self.assertRaises(CryptoError) as ctx:
            other.decrypt(secret)
        self.assertIn("padding", str(ctx.exception))
        # Tampering with the last block breaks the padding too.
        tampered = secret[:-1] + bytes([secret[-1] ^ 0x55])
        self.assertRaises(CryptoError, cipher.decrypt, tampered)

    def test_crypto_error_is_protocol_error(self):
        self.assertTrue(issubclass(CryptoError, ProtocolError))

    def test_bad_key_or_iv(self):
        self.assertRaises(CryptoError, AesCipher, bytes(15), IV)
        self.assertRaises(CryptoError, AesCipher, None, IV)
        self.assertRaises(CryptoError, AesCipher, KEY, bytes(8))
        self.assertRaises(CryptoError, AesCipher, KEY, None)


class RsaDemoKeyTests(SynchronousTestCase):
    def test_demo_key_loads_and_is_recognised(self):
        private = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)
        self.assertTrue(private.is_demo_key)
        self.assertEqual(private.modulus, MPUSH_DEMO_MODULUS)
        self.assertEqual(private.key_size_bytes, 128)
        self.assertEqual(private.public_key().to_x509_base64(), MPUSH_DEMO_PUBLIC_KEY)

    def test_demo_key_is_refused_by_cryptography_itself(self):
        # The reason our own DER path exists; if this ever loads, it still works.
        der = base64.b64decode(MPUSH_DEMO_PRIVATE_KEY)
        self.assertRaises(ValueError, serialization.load_der_private_key, der, None)

    def test_demo_key_decrypts_what_its_public_key_encrypts(self):
        private = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)
        public = RsaPublicKey.from_x509_base64(MPUSH_DEMO_PUBLIC_KEY)
        self.assertEqual(private.decrypt(public.encrypt(b"handshake")), b"handshake")

    def test_pem_armour_and_line_breaks_tolerated(self):
        text = "-----BEGIN PRIVATE KEY-----\n{}\n{}\n-----END PRIVATE KEY-----\n".format(
            MPUSH_DEMO_PRIVATE_KEY[:64], MPUSH_DEMO_PRIVATE_KEY[64:]
        )
        self.assertTrue(RsaPrivateKey.from_pkcs8_base64(text).is_demo_key)

    def test_generated_key_is_not_demo(self):
        self.assertFalse(_GENERATED.is_demo_key)

    def test_demo_key_re_exported_with_crt_fields(self):
        private = RsaPrivateKey.from_pkcs8_base64(MPUSH_DEMO_PRIVATE_KEY)
        again = RsaPrivateKey.from_pkcs8_base64(private.to_pkcs8_base64())
        self.assertTrue(again.is_demo_key)
        loaded = serialization.load_der_private_key(base64.b64decode(private.to_pkcs8_base64()), None)
        self.assertEqual(loaded.private_numbers().public_numbers.e, 65537)


class RsaTests(SynchronousTestCase):
    def test_generated_key_round_trips_through_base64(self):
        text = _GENERATED.to_pkcs8_base64()
        self.assertNotIn("\n", text)
        self.assertNotIn("-----", text)
        again = RsaPrivateKey.from_pkcs8_base64(text)
        self.assertEqual(again.modulus, _GENERATED.modulus)
        self.assertEqual(again.to_pkcs8_base64(), text)
        public_text = _GENERATED.public_key().to_x509_base64()
        self.assertNotIn("\n", public_text)
        public = RsaPublicKey.from_x509_base64(public_text)
        self.assertEqual(public.modulus, _GENERATED.modulus)
        self.assertEqual(again.decrypt(public.encrypt(b"secret")), b"secret")

    def test_one_block(self):
        public = _GENERATED.public_key()
        for n in (1, 78, 117):
            secret = public.encrypt(b"p" * n)
            self.assertEqual(len(secret), 128, n)
            self.assertEqual(_GENERATED.decrypt(secret), b"p" * n)

    def test_two_and_three_blocks(self):
        public = _GENERATED.public_key()
        for n, blocks in ((118, 2), (228, 2), (234, 2), (235, 3), (300, 3)):
            data = bytes(i % 256 for i in range(n))
            secret = public.encrypt(data)
            self.assertEqual(len(secret), 128 * blocks, n)
            self.assertEqual(_GENERATED.decrypt(secret), data)

    def test_padding_is_random(self):
        public = _GENERATED.public_key()
        self.assertNotEqual(public.encrypt(b"x"), public.encrypt(b"x"))

    def test_empty_plaintext_encrypts_to_nothing(self):
        self.assertEqual(_GENERATED.public_key().encrypt(b""), b"")

    def test_wrong_block_count(self):
        secret = _GENERATED.public_key().encrypt(b"x" * 200)
        for data in (b"", secret[:-1], secret + b"\x00", secret[:100]):
            with self.assertRaises(CryptoError, msg=str(len(data))):
                _GENERATED.decrypt(data)

    def test_bad_padding_does_not_raise(self):
        # Implicit rejection (OpenSSL 3): a block with bad padding decrypts to
        # pseudo-random bytes instead of raising, so there is no padding oracle.
        plain = b"the real handshake body"
        secret = _GENERATED.public_key().encrypt(plain)
        # Build a ciphertext whose plaintext is NOT PKCS#1 type 2: m = 1.
        numbers = _GENERATED._key.private_numbers().public_numbers
        bad_block = pow(1, numbers.e, numbers.n).to_bytes(128, "big")
        result = _GENERATED.decrypt(bad_block)
        self.assertIsInstance(result, bytes)
        # A tampered real ciphertext also yields bytes, not the plaintext.
        tampered = secret[:50] + bytes([secret[50] ^ 1]) + secret[51:]
        out = _GENERATED.decrypt(tampered)
        self.assertIsInstance(out, bytes)
        self.assertNotEqual(out, plain)
        # Deterministic per (key, ciphertext): the same garbage each time.
        self.assertEqual(_GENERATED.decrypt(tampered), out)

    def test_block_above_modulus_raises(self):
        self.assertRaises(CryptoError, _GENERATED.decrypt, b"\xff" * 128)

    def test_public_key_cannot_decrypt(self):
        self.assertRaises(CryptoError, _GENERATED.public_key().decrypt, b"x" * 128)

    def test_generate_other_size(self):
        key = RsaPrivateKey.generate(2048)
        self.assertEqual(key.key_size_bytes, 256)
        secret = key.public_key().encrypt(b"y" * 300)
        self.assertEqual(len(secret), 512)  # 245-byte chunks
        self.assertEqual(key.decrypt(secret), b"y" * 300)


class KeyLoadingErrorTests(SynchronousTestCase):
    def test_not_base64(self):
        with self.assertRaises(ValueError) as ctx:
            RsaPrivateKey.from_pkcs8_base64("not base64 !!")
        self.assertIn("base64", str(ctx.exception))
        self.assertRaises(ValueError, RsaPublicKey.from_x509_base64, "@@@")

    def test_empty(self):
        self.assertRaises(ValueError, RsaPrivateKey.from_pkcs8_base64, "")
        self.assertRaises(ValueError, RsaPublicKey.from_x509_base64, "  ")

    def test_garbage_der(self):
        garbage = base64.b64encode(b"\x30\x03\x02\x01\x00").decode()
        with self.assertRaises(ValueError) as ctx:
            RsaPrivateKey.from_pkcs8_base64(garbage)
        self.assertIn("cannot load RSA private key", str(ctx.exception))
        self.assertRaises(ValueError, RsaPublicKey.from_x509_base64, garbage)

    def test_truncated_demo_key(self):
        der = base64.b64decode(MPUSH_DEMO_PRIVATE_KEY)
        for cut in (10, 100, len(der) - 3):
            with self.assertRaises(ValueError, msg=str(cut)):
                RsaPrivateKey.from_pkcs8_base64(base64.b64encode(der[:cut]).decode())

    def test_public_key_given_as_private(self):
        self.assertRaises(ValueError, RsaPrivateKey.from_pkcs8_base64, MPUSH_DEMO_PUBLIC_KEY)

    def test_private_key_given_as_public(self):
        self.assertRaises(ValueError, RsaPublicKey.from_x509_base64, _GENERATED.to_pkcs8_base64())

    def test_no_crt_key_with_wrong_exponent(self):
        # Same shape as the demo key but d does not belong to e = 65537.
        der = bytearray(base64.b64decode(MPUSH_DEMO_PRIVATE_KEY))
        d_at = der.find(bytes.fromhex("032d3e59"))
        self.assertGreater(d_at, 0)
        der[d_at + 5] ^= 0x01
        with self.assertRaises(ValueError) as ctx:
            RsaPrivateKey.from_pkcs8_base64(base64.b64encode(bytes(der)).decode())
        self.assertIn("cannot load RSA private key", str(ctx.exception))

    def test_non_rsa_key(self):
        from cryptography.hazmat.primitives.asymmetric import ec

        key = ec.generate_private_key(ec.SECP256R1())
        der = key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with self.assertRaises(ValueError) as ctx:
            RsaPrivateKey.from_pkcs8_base64(base64.b64encode(der).decode())
        self.assertIn("RSA", str(ctx.exception))
        public_der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.assertRaises(ValueError, RsaPublicKey.from_x509_base64, base64.b64encode(public_der).decode())

    def test_wraps_cryptography_key(self):
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        wrapped = RsaPrivateKey(key)
        self.assertEqual(wrapped.decrypt(wrapped.encrypt(b"z")), b"z")
