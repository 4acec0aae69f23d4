"""MPush cryptography (spec 7): chunked RSA PKCS#1 v1.5 for the handshake,
AES-128-CBC with a fixed per-session IV for everything after it, and the
XOR session-key mix.

The one non-obvious part is loading MPush's published demo private key: its
PKCS#8 blob has publicExponent 0 and all CRT fields 0, which OpenSSL (and so
`cryptography`) refuses. We parse the DER ourselves, recover p and q from
(n, 65537, d) and rebuild a normal key, so decryption runs at CRT speed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpush.protocol.errors import CryptoError

__all__ = [
    "AES_KEY_LENGTH",
    "AES_BLOCK_SIZE",
    "RSA_PADDING_OVERHEAD",
    "MPUSH_DEMO_MODULUS",
    "MPUSH_DEMO_PUBLIC_KEY",
    "MPUSH_DEMO_PRIVATE_KEY",
    "random_bytes",
    "mix_key",
    "AesCipher",
    "RsaPrivateKey",
    "RsaPublicKey",
]

AES_KEY_LENGTH = 16
AES_BLOCK_SIZE = 16
#: PKCS#1 v1.5 type-2 padding takes at least 11 bytes of every RSA block.
RSA_PADDING_OVERHEAD = 11
_DEFAULT_PUBLIC_EXPONENT = 65537

#: Modulus of the key pair shipped in MPush's reference.conf. That pair is
#: PUBLIC: anyone can decrypt handshakes made with it. The server uses this
#: constant to warn when it runs with the demo key.
MPUSH_DEMO_MODULUS = int(
    "a084f0960a86c6f274c3db88eec1255ab5a5bb895891c5c4e47b2fc1efdd9564"
    "486e1e342f037700260c762eff069d7f0d2284a166da028370b1e9e72cf9510f"
    "0f67c1720d8be092bbc65746a4e27738d100c95b0b3adb5766d357bf20d94628"
    "e212b4002cc4e8adc822efd339b955fdfe332fd8681bd9701e66194b0f6f1f1f",
    16,
)

#: MPush's published default public key (X.509 SubjectPublicKeyInfo, base64).
#: Public knowledge; for tests, the demo mode and interop with stock clients.
MPUSH_DEMO_PUBLIC_KEY = (
    "MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQCghPCWCobG8nTD24juwSVataW7iViRxcTkey/B792VZEhu"
    "HjQvA3cAJgx2Lv8GnX8NIoShZtoCg3Cx6ecs+VEPD2fBcg2L4JK7xldGpOJ3ONEAyVsLOttXZtNXvyDZRij"
    "iErQALMTorcgi79M5uVX9/jMv2Ggb2XAeZhlLD28fHwIDAQAB"
)

#: MPush's published default private key (PKCS#8, base64, e = 0 and no CRT
#: fields). It is NOT a secret: it ships in MPush's reference.conf. Never
#: use it in production.
MPUSH_DEMO_PRIVATE_KEY = (
    "MIIBNgIBADANBgkqhkiG9w0BAQEFAASCASAwggEcAgEAAoGBAKCE8JYKhsbydMPbiO7BJVq1pbuJWJHFxOR7"
    "L8Hv3ZVkSG4eNC8DdwAmDHYu/wadfw0ihKFm2gKDcLHp5yz5UQ8PZ8FyDYvgkrvGV0ak4nc40QDJWws621d"
    "m01e/INlGKOIStAAsxOityCLv0zm5Vf3+My/YaBvZcB5mGUsPbx8fAgEAAoGAAy0+WanRqwRHXUzt89Osu"
    "pPXuNNqBlCEqgTqGAt4Nimq6Ur9u2R1KXKXUotxjp71Ubw6JbuUWvJg+5Rmd9RjT0HOUEQF3rvzEepKtar"
    "aPhV5ejEIrB+nJWNfGye4yzLdfEXJBGUQzrG+wNe13izfRNXI4dN/6Q5npzqaqv0E1CkCAQACAQACAQACAQ"
    "ACAQA="
)


def random_bytes(n: int) -> bytes:
    """n bytes from the OS CSPRNG (server keys, IVs, session ids)."""
    return os.urandom(n)


def mix_key(client_key: bytes, server_key: bytes) -> bytes:
    """Session key = clientKey XOR serverKey (spec 7.3; Java's branches are both XOR)."""
    if client_key is None or server_key is None:
        raise CryptoError("mix_key needs both a client key and a server key")
    if len(client_key) != len(server_key):
        raise CryptoError(
            f"mix_key: client key has {len(client_key)} bytes, server key {len(server_key)}"
        )
    n = len(client_key)
    mixed = int.from_bytes(client_key, "big") ^ int.from_bytes(server_key, "big")
    return mixed.to_bytes(n, "big")


#: PKCS#7 padding by pad length.
_PADDING = [bytes((n,)) * n for n in range(AES_BLOCK_SIZE + 1)]


class AesCipher:
    """AES-CBC with PKCS#7 padding; every message starts again from the same IV.

    That fixed IV is an MPush protocol property (spec 7.2), not a choice we
    could change without breaking the Java client.

    A cipher that is used often (a connection receiving pushes) keeps one
    CBC context per direction instead of building one per message (a
    context costs about 750 bytes, so it is made only at the
    L{PERSIST_AFTER}th message of its direction; a connection that
    encrypts or decrypts a message now and then never has one).  Each
    message first puts the context's chaining state back to the IV:
    encrypting, with one block X = D_K(IV) XOR C_last, whose output is the
    IV itself (dropped); decrypting, with the IV as a ciphertext block
    (its garbage plaintext dropped).  Output is identical to a fresh CBC
    per message.
    """

    __slots__ = ("key", "iv", "_enc", "_enc_reset", "_dk_iv", "_dec", "_uses")

    #: Messages of one direction done with a fresh context before a
    #: persistent one is made.
    PERSIST_AFTER = 2

    def __init__(self, key: bytes, iv: bytes) -> None:
        if key is None or len(key) not in (16, 24, 32):
            raise CryptoError(
                f"AES key must be 16, 24 or 32 bytes, got {None if key is None else len(key)}"
            )
        if iv is None or len(iv) != AES_BLOCK_SIZE:
            raise CryptoError(
                f"AES IV must be {AES_BLOCK_SIZE} bytes, got {None if iv is None else len(iv)}"
            )
        self.key = bytes(key)
        self.iv = bytes(iv)
        # Each fresh encryptor()/decryptor() of _cbc() starts from the IV,
        # which is what MPush wants.
        self._enc = None
        self._enc_reset = None
        self._dk_iv = 0
        self._dec = None
        # Messages encrypted (low 16 bits) and decrypted (high bits) with
        # fresh contexts.
        self._uses = 0

    def _cbc(self) -> Cipher:
        """
        A CBC cipher from the IV.  Not kept: a node holds one AesCipher per
        connection, and a connection that only handshakes and binds would
        keep ~250 bytes for nothing; one that is busy keeps its contexts.
        """
        return Cipher(algorithms.AES(self.key), modes.CBC(self.iv))

    def __repr__(self) -> str:
        return f"<AesCipher {len(self.key) * 8}-bit>"

    def encrypt(self, data: bytes) -> bytes:
        if data.__class__ is not bytes:
            data = bytes(data)
        padded = data + _PADDING[AES_BLOCK_SIZE - len(data) % AES_BLOCK_SIZE]
        enc = self._enc
        if enc is None:
            uses = self._uses
            if uses & 0xFFFF < self.PERSIST_AFTER:
                self._uses = uses + 1
                ctx = self._cbc().encryptor()
                return ctx.update(padded) + ctx.finalize()
            enc = self._persistent_encryptor()
        out = enc.update(self._enc_reset + padded)
        self._enc_reset = (self._dk_iv ^ int.from_bytes(out[-AES_BLOCK_SIZE:], "big")).to_bytes(
            AES_BLOCK_SIZE, "big"
        )
        return out[AES_BLOCK_SIZE:]

    def _persistent_encryptor(self):
        """
        The encrypting context kept from now on, its reset block ready for
        a chaining state that is the IV.
        """
        ecb = Cipher(algorithms.AES(self.key), modes.ECB()).decryptor()
        self._dk_iv = int.from_bytes(ecb.update(self.iv) + ecb.finalize(), "big")
        self._enc_reset = (self._dk_iv ^ int.from_bytes(self.iv, "big")).to_bytes(AES_BLOCK_SIZE, "big")
        self._enc = self._cbc().encryptor()
        return self._enc

    def decrypt(self, data: bytes) -> bytes:
        n = len(data)
        if n == 0 or n % AES_BLOCK_SIZE:
            raise CryptoError(f"AES ciphertext of {n} bytes is not a positive multiple of 16")
        dec = self._dec
        if dec is None:
            uses = self._uses
            if uses >> 16 < self.PERSIST_AFTER:
                self._uses = uses + 0x10000
                ctx = self._cbc().decryptor()
                padded = ctx.update(data) + ctx.finalize()
            else:
                dec = self._dec = self._cbc().decryptor()
        if dec is not None:
            padded = dec.update(self.iv + bytes(data))[AES_BLOCK_SIZE:]
        pad = padded[-1]
        if not 0 < pad <= AES_BLOCK_SIZE or not hmac.compare_digest(padded[-pad:], _PADDING[pad]):
            raise CryptoError("AES padding is invalid (wrong key or corrupt body)")
        return padded[:-pad]


# --- a minimal DER reader, just enough for PKCS#8 RSA keys ------------------

_RSA_OID = bytes.fromhex("2a864886f70d010101")  # 1.2.840.113549.1.1.1


def _der_read(data: bytes, pos: int, tag: int) -> tuple[bytes, int]:
    """Read one TLV with the expected tag at pos; return (value, next_pos)."""
    if pos + 2 > len(data):
        raise ValueError("DER truncated")
    if data[pos] != tag:
        raise ValueError(f"DER tag 0x{data[pos]:02x} at offset {pos}, expected 0x{tag:02x}")
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("DER length is malformed")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    end = pos + length
    if end > len(data):
        raise ValueError("DER value runs past the end of the data")
    return data[pos:end], end


def _der_int(data: bytes, pos: int) -> tuple[int, int]:
    value, pos = _der_read(data, pos, 0x02)
    if not value:
        raise ValueError("DER INTEGER is empty")
    return int.from_bytes(value, "big", signed=True), pos


def _parse_pkcs8_rsa(der: bytes) -> list[int]:
    """Return the nine RSAPrivateKey integers (version, n, e, d, p, q, dP, dQ, qInv)."""
    info, _ = _der_read(der, 0, 0x30)
    _, pos = _der_int(info, 0)  # PrivateKeyInfo version
    algorithm, pos = _der_read(info, pos, 0x30)
    oid, _ = _der_read(algorithm, 0, 0x06)
    if oid != _RSA_OID:
        raise ValueError("not an RSA key (algorithm OID is not rsaEncryption)")
    octets, _ = _der_read(info, pos, 0x04)
    seq, _ = _der_read(octets, 0, 0x30)
    numbers = []
    pos = 0
    for _ in range(9):
        value, pos = _der_int(seq, pos)
        numbers.append(value)
    return numbers


def _decode_base64_key(text: str) -> bytes:
    if not isinstance(text, (str, bytes)):
        raise ValueError("key must be base64 text")
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    # Tolerate PEM armour and line breaks around the one-line form.
    lines = [line.strip() for line in text.strip().splitlines()]
    body = "".join(line for line in lines if line and not line.startswith("-----"))
    if not body:
        raise ValueError("key text is empty")
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"key is not valid base64: {exc}") from None


class RsaPrivateKey:
    """The server's RSA key: decrypts chunked PKCS#1 v1.5 handshake bodies."""

    __slots__ = ("_key", "_n", "_k")

    def __init__(self, key: rsa.RSAPrivateKey) -> None:
        self._key = key
        self._n = key.private_numbers().public_numbers.n
        self._k = (key.key_size + 7) // 8

    @classmethod
    def from_pkcs8_base64(cls, text: str) -> "RsaPrivateKey":
        """Load a base64 PKCS#8 key, including MPush's e=0 / no-CRT demo key."""
        der = _decode_base64_key(text)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError) as exc:
            # OpenSSL refuses keys without e or CRT fields (the demo key).
            return cls(_rebuild_crt_key(der, exc))
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"not an RSA private key: {type(key).__name__}")
        return cls(key)

    @classmethod
    def generate(cls, bits: int = 1024) -> "RsaPrivateKey":
        return cls(rsa.generate_private_key(public_exponent=_DEFAULT_PUBLIC_EXPONENT, key_size=bits))

    @property
    def key_size_bytes(self) -> int:
        """k: the size of one ciphertext block."""
        return self._k

    @property
    def modulus(self) -> int:
        return self._n

    @property
    def is_demo_key(self) -> bool:
        """True for MPush's published default key, which offers no secrecy."""
        return self._n == MPUSH_DEMO_MODULUS

    def to_pkcs8_base64(self) -> str:
        """One line of base64, no PEM armour. The demo key comes out with its CRT fields."""
        der = self._key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return base64.b64encode(der).decode("ascii")

    def public_key(self) -> "RsaPublicKey":
        return RsaPublicKey(self._key.public_key())

    def decrypt(self, data: bytes) -> bytes:
        """Decrypt k-byte blocks with PKCS#1 v1.5 and concatenate the results.

        A ciphertext length that is not a positive multiple of k raises
        CryptoError. A block with BAD PADDING does not raise: OpenSSL 3 (as
        used by `cryptography`) applies implicit rejection and returns
        pseudo-random bytes derived from the key and ciphertext. That is
        deliberate (Bleichenbacher / Marvin defence): the garbage then fails
        handshake validation like any other bad input, without a padding
        oracle. Keep it that way.
        """
        k = self._k
        n = len(data)
        if n == 0 or n % k:
            raise CryptoError(f"RSA ciphertext of {n} bytes is not a positive multiple of {k}")
        key = self._key
        pad = asym_padding.PKCS1v15()
        data = bytes(data)
        try:
            if n == k:
                return key.decrypt(data, pad)
            return b"".join(key.decrypt(data[i:i + k], pad) for i in range(0, n, k))
        except ValueError as exc:
            raise CryptoError(f"RSA decryption failed: {exc}") from None

    def encrypt(self, data: bytes) -> bytes:
        """Convenience: encrypt with the matching public key."""
        return self.public_key().encrypt(data)


def _rebuild_crt_key(der: bytes, first_error: Exception) -> rsa.RSAPrivateKey:
    """Rebuild a key that OpenSSL refused because e and/or the CRT fields are 0."""
    try:
        _, n, e, d, p, q, _, _, _ = _parse_pkcs8_rsa(der)
    except ValueError as exc:
        raise ValueError(f"cannot load RSA private key: {first_error}; DER: {exc}") from None
    if n <= 0 or d <= 0:
        raise ValueError("cannot load RSA private key: modulus or private exponent is not positive")
    if e > 0 and p > 0 and q > 0:
        # A complete key that OpenSSL still refused: genuinely invalid.
        raise ValueError(f"cannot load RSA private key: {first_error}")
    if e <= 0:
        e = _DEFAULT_PUBLIC_EXPONENT
    try:
        p, q = rsa.rsa_recover_prime_factors(n, e, d)
        numbers = rsa.RSAPrivateNumbers(
            p=p,
            q=q,
            d=d,
            dmp1=rsa.rsa_crt_dmp1(d, p),
            dmq1=rsa.rsa_crt_dmq1(d, q),
            iqmp=rsa.rsa_crt_iqmp(p, q),
            public_numbers=rsa.RSAPublicNumbers(e, n),
        )
        return numbers.private_key()
    except (ValueError, ArithmeticError) as exc:
        raise ValueError(
            f"cannot load RSA private key: no CRT fields and d does not match e={e} ({exc})"
        ) from None


class RsaPublicKey:
    """The client side of the handshake: chunked PKCS#1 v1.5 encryption."""

    __slots__ = ("_key", "_k")

    def __init__(self, key: rsa.RSAPublicKey) -> None:
        self._key = key
        self._k = (key.key_size + 7) // 8

    @classmethod
    def from_x509_base64(cls, text: str) -> "RsaPublicKey":
        der = _decode_base64_key(text)
        try:
            key = serialization.load_der_public_key(der)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"cannot load RSA public key: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"not an RSA public key: {type(key).__name__}")
        return cls(key)

    def to_x509_base64(self) -> str:
        der = self._key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
        return base64.b64encode(der).decode("ascii")

    @property
    def key_size_bytes(self) -> int:
        return self._k

    @property
    def modulus(self) -> int:
        return self._key.public_numbers().n

    def encrypt(self, data: bytes) -> bytes:
        """Split into k-11 byte chunks, encrypt each to k bytes, concatenate (spec 7.1)."""
        chunk = self._k - RSA_PADDING_OVERHEAD
        pad = asym_padding.PKCS1v15()
        key = self._key
        data = bytes(data)
        return b"".join(key.encrypt(data[i:i + chunk], pad) for i in range(0, len(data), chunk))

    def decrypt(self, data: bytes) -> bytes:
        """A public key cannot decrypt; present so it can sit in a cipher slot."""
        raise CryptoError("cannot decrypt with an RSA public key")
