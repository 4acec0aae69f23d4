"""
Key material: configured pairs, the demo pair, generation into the state
directory and its races.
"""

import os
import stat

from twisted.trial.unittest import SynchronousTestCase

from mpush import keys
from mpush.config import ConfigError, SecurityConfig
from mpush.keys import PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, load_key_material
from mpush.protocol.crypto import MPUSH_DEMO_PRIVATE_KEY, MPUSH_DEMO_PUBLIC_KEY, RsaPrivateKey


class KeyMaterialTests(SynchronousTestCase):
    def setUp(self):
        self.state_dir = os.path.abspath(self.mktemp())

    def test_generated_once_then_kept(self):
        first = load_key_material(SecurityConfig(), self.state_dir)
        private_path = os.path.join(self.state_dir, PRIVATE_KEY_FILE)
        self.assertEqual(stat.S_IMODE(os.stat(private_path).st_mode), 0o600)
        with open(os.path.join(self.state_dir, PUBLIC_KEY_FILE)) as public:
            self.assertEqual(public.read().strip(), first.public_key_base64)
        again = load_key_material(SecurityConfig(), self.state_dir)
        self.assertEqual(again.public_key_base64, first.public_key_base64)
        self.assertIn("generated now", first.origin)
        self.assertNotIn("generated now", again.origin)

    def test_lost_generation_race_uses_the_winner(self):
        """
        Two nodes starting on one state directory: the one that loses the
        race to create the key file adopts the winner's key.
        """
        winner = RsaPrivateKey.generate(1024)
        real_write = keys._write_new

        def racing_write(path, text, mode):
            if path.endswith(PRIVATE_KEY_FILE) and not os.path.exists(path):
                real_write(path, winner.to_pkcs8_base64(), 0o600)
            return real_write(path, text, mode)

        self.patch(keys, "_write_new", racing_write)
        material = load_key_material(SecurityConfig(), self.state_dir)
        self.assertEqual(material.public_key_base64, winner.public_key().to_x509_base64())

    def test_demo_pair_loads_and_is_flagged(self):
        security = SecurityConfig(private_key=MPUSH_DEMO_PRIVATE_KEY, public_key=MPUSH_DEMO_PUBLIC_KEY)
        material = load_key_material(security, self.state_dir)
        self.assertTrue(material.is_demo_key)
        self.assertEqual(material.public_key_base64, MPUSH_DEMO_PUBLIC_KEY)
        self.assertFalse(os.path.exists(self.state_dir))

    def test_mismatched_public_key(self):
        other = RsaPrivateKey.generate(1024).public_key().to_x509_base64()
        security = SecurityConfig(private_key=MPUSH_DEMO_PRIVATE_KEY, public_key=other)
        error = self.assertRaises(ConfigError, load_key_material, security, self.state_dir)
        self.assertIn("does not match", str(error))

    def test_garbage_private_key(self):
        security = SecurityConfig(private_key="bm90IGEga2V5")
        error = self.assertRaises(ConfigError, load_key_material, security, self.state_dir)
        self.assertIn("[security] private-key", str(error))

    def test_corrupt_stored_key(self):
        os.makedirs(self.state_dir)
        with open(os.path.join(self.state_dir, PRIVATE_KEY_FILE), "w") as stored:
            stored.write("garbage")
        error = self.assertRaises(ConfigError, load_key_material, SecurityConfig(), self.state_dir)
        self.assertIn("is not a key", str(error))

    def test_unwritable_state_dir(self):
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        error = self.assertRaises(ConfigError, load_key_material, SecurityConfig(), blocker)
        self.assertIn(f"state-dir {blocker}", str(error))
        self.assertIn("Not a directory", str(error))
