"""Client-type classification by osName (spec 11.2, 21.2 item 11)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.client_type import ClientType, classify


class ClientTypeTests(SynchronousTestCase):
    def test_codes(self):
        self.assertEqual(
            [(t.name, int(t)) for t in ClientType],
            [("MOBILE", 1), ("PC", 2), ("WEB", 3), ("UNKNOWN", -1)],
        )

    def test_every_row(self):
        rows = {
            "android": ClientType.MOBILE,
            "ios": ClientType.MOBILE,
            "windows": ClientType.PC,
            "mac": ClientType.PC,
            "linux": ClientType.PC,
            "web": ClientType.WEB,
            "h5": ClientType.WEB,
        }
        for os_name, expected in rows.items():
            self.assertIs(classify(os_name), expected, os_name)

    def test_substring(self):
        self.assertIs(classify("Android 6.0.1"), ClientType.MOBILE)
        self.assertIs(classify("iOS 17"), ClientType.MOBILE)
        self.assertIs(classify("Windows 10"), ClientType.PC)
        self.assertIs(classify("macOS"), ClientType.PC)
        self.assertIs(classify("Ubuntu Linux"), ClientType.PC)
        self.assertIs(classify("mobile-web"), ClientType.WEB)
        self.assertIs(classify("H5-app"), ClientType.WEB)

    def test_case_insensitive(self):
        for os_name in ("ANDROID", "AnDrOiD", "IOS"):
            self.assertIs(classify(os_name), ClientType.MOBILE, os_name)
        for os_name in ("WINDOWS", "MAC", "LiNuX"):
            self.assertIs(classify(os_name), ClientType.PC, os_name)
        for os_name in ("WEB", "H5"):
            self.assertIs(classify(os_name), ClientType.WEB, os_name)

    def test_precedence(self):
        # MOBILE is tested before PC, PC before WEB.
        self.assertIs(classify("android-on-linux"), ClientType.MOBILE)
        self.assertIs(classify("linux-ios-bridge"), ClientType.MOBILE)
        self.assertIs(classify("webkit on windows"), ClientType.PC)
        self.assertIs(classify("h5 mac shell"), ClientType.PC)

    def test_unknown(self):
        for os_name in ("", "symbian", "blackberry", "tizen", "j2me"):
            self.assertIs(classify(os_name), ClientType.UNKNOWN, os_name)

    def test_none_is_unknown(self):
        self.assertIs(classify(None), ClientType.UNKNOWN)

    def test_not_text(self):
        for bad in (b"android", 1, ["android"]):
            self.assertRaises(TypeError, classify, bad)

    def test_int_compatible(self):
        # Hash fields and JSON use the plain code.
        self.assertEqual(str(int(classify("android"))), "1")
        self.assertEqual(classify("web"), 3)
