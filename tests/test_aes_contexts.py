"""
AesCipher's kept CBC contexts give what a fresh CBC context per message
gives, message after message, both ways.
"""

import os
import random

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.crypto import AesCipher
from mpush.protocol.errors import CryptoError


def fresh_encrypt(key, iv, data):
    padder = padding.PKCS7(128).padder()
    padded = padder.update(data) + padder.finalize()
    ctx = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return ctx.update(padded) + ctx.finalize()


def fresh_decrypt(key, iv, data):
    ctx = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = ctx.update(data) + ctx.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


class KeptContextTests(SynchronousTestCase):
    def setUp(self):
        self.random = random.Random(7)

    def messages(self, n):
        sizes = [0, 1, 15, 16, 17, 31, 32, 100, 4096, 10000]
        for i in range(n):
            size = sizes[i % len(sizes)] if i < 2 * len(sizes) else self.random.randrange(0, 300)
            yield self.random.randbytes(size)

    def test_encrypt_many_in_a_row(self):
        for key_size in (16, 24, 32):
            key, iv = os.urandom(key_size), os.urandom(16)
            cipher = AesCipher(key, iv)
            for message in self.messages(300):
                self.assertEqual(cipher.encrypt(message), fresh_encrypt(key, iv, message))
            self.assertIsNotNone(cipher._enc)

    def test_decrypt_many_in_a_row(self):
        key, iv = os.urandom(16), os.urandom(16)
        cipher = AesCipher(key, iv)
        for message in self.messages(300):
            self.assertEqual(cipher.decrypt(fresh_encrypt(key, iv, message)), message)
        self.assertIsNotNone(cipher._dec)

    def test_both_ways_interleaved_with_failures(self):
        """
        Bad padding, a wrong key's ciphertext and bad lengths in between
        change nothing for the messages after them.
        """
        key, iv = os.urandom(16), os.urandom(16)
        cipher = AesCipher(key, iv)
        other = os.urandom(16)
        for i, message in enumerate(self.messages(200)):
            self.assertEqual(cipher.encrypt(message), fresh_encrypt(key, iv, message))
            if i % 3 == 0:
                self.assertRaises(CryptoError, cipher.decrypt, fresh_encrypt(key, iv, message)[:-1] or b"x")
            if i % 5 == 0:
                garbage = fresh_encrypt(other, iv, message)
                try:
                    plain = cipher.decrypt(garbage)
                except CryptoError:
                    pass
                else:
                    # Valid padding by chance: the plaintext a fresh context gives.
                    ctx = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
                    raw = ctx.update(garbage) + ctx.finalize()
                    self.assertEqual(plain, raw[: -raw[-1]])
            self.assertEqual(cipher.decrypt(fresh_encrypt(key, iv, message)), message)
            self.assertEqual(fresh_decrypt(key, iv, cipher.encrypt(message)), message)

    def test_invalid_padding_is_refused_like_the_unpadder(self):
        key, iv = os.urandom(16), os.urandom(16)
        cipher = AesCipher(key, iv)
        raw_cipher = Cipher(algorithms.AES(key), modes.CBC(iv))
        for last in (0, 17, 255):
            for prefix_pad in (b"\x00" * 15, b"\x02" * 15):
                block = prefix_pad + bytes((last,))
                ctx = raw_cipher.encryptor()
                data = ctx.update(block) + ctx.finalize()
                for _ in range(4):  # fresh, then kept contexts
                    self.assertRaises(CryptoError, cipher.decrypt, data)
        ctx = raw_cipher.encryptor()
        data = ctx.update(b"\x01" * 14 + b"\x03\x02") + ctx.finalize()
        for _ in range(4):
            self.assertRaises(CryptoError, cipher.decrypt, data)

    def test_contexts_made_only_for_a_busy_cipher(self):
        key, iv = os.urandom(16), os.urandom(16)
        cipher = AesCipher(key, iv)
        for _ in range(AesCipher.PERSIST_AFTER):
            cipher.decrypt(cipher.encrypt(b"bind"))
        self.assertIsNone(cipher._enc)
        self.assertIsNone(cipher._dec)
        cipher.decrypt(cipher.encrypt(b"push"))
        self.assertIsNotNone(cipher._enc)
        self.assertIsNotNone(cipher._dec)

    def test_memoryview_and_bytearray_input(self):
        key, iv = os.urandom(16), os.urandom(16)
        cipher = AesCipher(key, iv)
        for _ in range(5):
            self.assertEqual(cipher.encrypt(bytearray(b"abc")), fresh_encrypt(key, iv, b"abc"))
            self.assertEqual(cipher.encrypt(memoryview(b"abcd")), fresh_encrypt(key, iv, b"abcd"))
            self.assertEqual(cipher.decrypt(memoryview(fresh_encrypt(key, iv, b"xy"))), b"xy")
            self.assertEqual(cipher.decrypt(bytearray(fresh_encrypt(key, iv, b"xy"))), b"xy")
