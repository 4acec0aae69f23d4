"""
The node's RSA key pair: configured, or generated once and kept.

MPush clients carry the server's public key, so it must not change between
restarts: with no key configured, a pair is generated on first start into the
state directory (private key mode 0600) and loaded from there afterwards.
MPush's published demo pair loads too, with a warning, because real fleets
still run on it.
"""

import os

from twisted.logger import Logger

from mpush.config import ConfigError
from mpush.protocol.crypto import RsaPrivateKey, RsaPublicKey

log = Logger()

PRIVATE_KEY_FILE = "rsa_private_key.pkcs8.b64"
PUBLIC_KEY_FILE = "rsa_public_key.x509.b64"


class KeyMaterial:
    """
    The private key a node decrypts handshakes with, and the public key
    clients must be given, in MPush's base64 form.
    """

    __slots__ = ("private_key", "public_key_base64", "origin")

    def __init__(self, private_key, origin):
        self.private_key = private_key
        self.public_key_base64 = private_key.public_key().to_x509_base64()
        self.origin = origin

    @property
    def is_demo_key(self):
        return self.private_key.is_demo_key


def load_key_material(security, state_dir):
    """
    Resolve the key pair from C{[security]} or the state directory.

    @raise ConfigError: a configured key does not load, or the configured
        public key is not the private key's.
    """
    if security.private_key:
        material = KeyMaterial(_configured(security), "config [security] private-key")
    else:
        material = _kept_or_generated(state_dir)
    if material.is_demo_key:
        log.warn(
            "RSA key: MPush's published demo key pair is in use. Its private key "
            "is public: anyone can read every handshake. Generate your own pair "
            "for production."
        )
    log.info(
        "RSA key from {origin}; configure MPush clients with publicKey = {public}",
        origin=material.origin,
        public=material.public_key_base64,
    )
    return material


def _configured(security):
    try:
        private_key = RsaPrivateKey.from_pkcs8_base64(security.private_key)
    except ValueError as error:
        raise ConfigError(f"[security] private-key: {error}") from None
    if security.public_key:
        try:
            public_key = RsaPublicKey.from_x509_base64(security.public_key)
        except ValueError as error:
            raise ConfigError(f"[security] public-key: {error}") from None
        if public_key.to_x509_base64() != private_key.public_key().to_x509_base64():
            raise ConfigError(
                "[security] public-key: does not match [security] private-key"
            )
    return private_key


def _kept_or_generated(state_dir):
    path = os.path.join(state_dir, PRIVATE_KEY_FILE)
    try:
        with open(path, encoding="ascii") as stored:
            text = stored.read().strip()
    except FileNotFoundError:
        return _generate(state_dir, path)
    except OSError as error:
        raise ConfigError(f"state-dir {state_dir}: cannot read {path}: {error}") from None
    try:
        return KeyMaterial(RsaPrivateKey.from_pkcs8_base64(text), path)
    except ValueError as error:
        raise ConfigError(f"state-dir {state_dir}: {path} is not a key: {error}") from None


def _generate(state_dir, path):
    private_key = RsaPrivateKey.generate(1024)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        try:
            _write_new(path, private_key.to_pkcs8_base64(), 0o600)
        except FileExistsError:
            # Another node sharing this directory generated one first: use it,
            # so every node of the directory has the same pair.
            return _kept_or_generated(state_dir)
        public_path = os.path.join(state_dir, PUBLIC_KEY_FILE)
        staging = f"{public_path}.{os.getpid()}.tmp"
        _write_new(staging, private_key.public_key().to_x509_base64(), 0o644)
        os.replace(staging, public_path)
    except OSError as error:
        raise ConfigError(
            f"state-dir {state_dir}: cannot store a generated key: {error}"
        ) from None
    log.info("generated a new RSA-1024 key pair in {path}", path=path)
    return KeyMaterial(private_key, f"{path} (generated now)")


def _write_new(path, text, mode):
    """
    Create C{path} with C{mode} from the start, so a secret is never
    readable by others, not even for a moment.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(descriptor, "w", encoding="ascii") as stored:
        stored.write(text + "\n")
