"""Tests for mpush.units: HOCON-style durations (milliseconds) and sizes (bytes)."""

from hypothesis import given, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mpush.units import DURATION_UNITS, SIZE_UNITS, parse_duration, parse_size


class ParseDurationTests(SynchronousTestCase):

    def test_mpush_reference_values(self):
        """The values MPush's reference.conf and mpush.conf use."""
        self.assertEqual(parse_duration("3m"), 180000)
        self.assertEqual(parse_duration("1d"), 86400000)
        self.assertEqual(parse_duration("10s"), 10000)
        self.assertEqual(parse_duration("100ms"), 100)
        self.assertEqual(parse_duration("1m"), 60000)
        self.assertEqual(parse_duration("5s"), 5000)

    def test_every_unit(self):
        for text, expected in [
            ("7ms", 7), ("7milli", 7), ("7millis", 7), ("7millisecond", 7),
            ("7milliseconds", 7),
            ("7s", 7000), ("7second", 7000), ("7seconds", 7000),
            ("7m", 420000), ("7minute", 420000), ("7minutes", 420000),
            ("7h", 25200000), ("7hour", 25200000), ("7hours", 25200000),
            ("7d", 604800000), ("7day", 604800000), ("7days", 604800000),
        ]:
            self.assertEqual(parse_duration(text), expected, text)

    def test_int_in_default_unit(self):
        self.assertEqual(parse_duration(250), 250)
        self.assertEqual(parse_duration(3, default_unit="s"), 3000)
        self.assertEqual(parse_duration(2, default_unit="m"), 120000)
        self.assertEqual(parse_duration(1, default_unit="d"), 86400000)
        self.assertEqual(parse_duration(0), 0)

    def test_string_without_unit_uses_default_unit(self):
        self.assertEqual(parse_duration("250"), 250)
        self.assertEqual(parse_duration("86400", default_unit="s"), 86400000)

    def test_whitespace_and_fractions(self):
        """HOCON allows blanks between number and unit, and decimal numbers."""
        self.assertEqual(parse_duration(" 10 s "), 10000)
        self.assertEqual(parse_duration("1.5s"), 1500)
        self.assertEqual(parse_duration("0.5m"), 30000)
        self.assertEqual(parse_duration(".5s"), 500)
        self.assertEqual(parse_duration("+2s"), 2000)

    def test_result_is_int(self):
        self.assertIs(type(parse_duration("1.0s")), int)
        self.assertIs(type(parse_duration(3, default_unit="s")), int)

    def test_negative_rejected(self):
        for value in (-1, "-1s", "-0.5m"):
            e = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("non-negative", str(e))

    def test_garbage_rejected(self):
        for value in ("", "   ", "abc", "s", "1 2s", "1s2", "10 s s", "1e3ms", "--1s",
                      "1.2.3s", "\u0661\u0660s"):
            e = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn(repr(value), str(e))

    def test_unknown_unit_rejected(self):
        """HOCON duration units are lowercase and exact; no ns/us either."""
        for value in ("10S", "10M", "10sec", "10mins", "10ns", "10us", "10w", "10y"):
            e = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn("unknown duration unit", str(e))

    def test_non_whole_milliseconds_rejected(self):
        e = self.assertRaises(ValueError, parse_duration, "0.5ms")
        self.assertIn("whole number of milliseconds", str(e))
        self.assertRaises(ValueError, parse_duration, "0.0001s")

    def test_wrong_types_rejected(self):
        for value in (True, False, 1.5, 10.0, None, [1], b"10s"):
            e = self.assertRaises(ValueError, parse_duration, value)
            self.assertIn(type(value).__name__, str(e))

    def test_bad_default_unit(self):
        e = self.assertRaises(ValueError, parse_duration, 5, default_unit="fortnight")
        self.assertIn("fortnight", str(e))

    @given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(DURATION_UNITS)))
    def test_property_number_times_unit(self, amount, unit):
        self.assertEqual(parse_duration(f"{amount}{unit}"), amount * DURATION_UNITS[unit])
        self.assertEqual(parse_duration(amount, default_unit=unit),
                         amount * DURATION_UNITS[unit])


class ParseSizeTests(SynchronousTestCase):

    def test_mpush_reference_values(self):
        """Spec 17.1: binary units as HOCON reads MPush's reference.conf."""
        self.assertEqual(parse_size("10k"), 10240)
        self.assertEqual(parse_size("32k"), 32768)
        self.assertEqual(parse_size("64k"), 65536)
        self.assertEqual(parse_size("5m"), 5242880)
        self.assertEqual(parse_size("10m"), 10485760)
        self.assertEqual(parse_size("20m"), 20971520)
        self.assertEqual(parse_size("1g"), 1073741824)
        self.assertEqual(parse_size("256b"), 256)
        self.assertEqual(parse_size("0.5k"), 512)  # used in old MPush traffic shaping

    def test_binary_spellings(self):
        for unit in ("k", "K", "Ki", "KiB", "kibibyte", "kibibytes"):
            self.assertEqual(parse_size(f"3{unit}"), 3072, unit)
        for unit in ("m", "M", "Mi", "MiB", "mebibyte", "mebibytes"):
            self.assertEqual(parse_size(f"3{unit}"), 3 * 1024**2, unit)
        for unit in ("g", "G", "Gi", "GiB", "gibibyte", "gibibytes"):
            self.assertEqual(parse_size(f"3{unit}"), 3 * 1024**3, unit)
        self.assertEqual(parse_size("1t"), 1024**4)
        self.assertEqual(parse_size("1PiB"), 1024**5)

    def test_decimal_spellings_are_powers_of_ten(self):
        """HOCON: kB, MB, GB are SI units; only the single letters are binary."""
        self.assertEqual(parse_size("3kB"), 3000)
        self.assertEqual(parse_size("3kilobytes"), 3000)
        self.assertEqual(parse_size("3MB"), 3000000)
        self.assertEqual(parse_size("3megabyte"), 3000000)
        self.assertEqual(parse_size("3GB"), 3 * 10**9)

    def test_bytes(self):
        self.assertEqual(parse_size(10240), 10240)
        self.assertEqual(parse_size(0), 0)
        self.assertEqual(parse_size("512"), 512)
        for unit in ("B", "b", "byte", "bytes"):
            self.assertEqual(parse_size(f"9{unit}"), 9)

    def test_whitespace(self):
        self.assertEqual(parse_size(" 10 k "), 10240)

    def test_negative_rejected(self):
        for value in (-1, "-1", "-10k"):
            e = self.assertRaises(ValueError, parse_size, value)
            self.assertIn("non-negative", str(e))

    def test_garbage_rejected(self):
        for value in ("", "abc", "k", "10 k k", "1,024", "0x10", "1e3", "\u0661k"):
            e = self.assertRaises(ValueError, parse_size, value)
            self.assertIn("expected a size like 10k", str(e))

    def test_unknown_unit_rejected(self):
        """'kb' is not HOCON (it is ambiguous), nor are bits or made-up units."""
        for value in ("10kb", "10KB", "10mb", "10Kib", "10kbit", "10x", "10EiB"):
            e = self.assertRaises(ValueError, parse_size, value)
            self.assertIn("unknown size unit", str(e))

    def test_non_whole_bytes_rejected(self):
        e = self.assertRaises(ValueError, parse_size, "0.1k")
        self.assertIn("whole number of bytes", str(e))
        self.assertRaises(ValueError, parse_size, "1.5")

    def test_wrong_types_rejected(self):
        for value in (True, False, 10.0, None, {}, b"10k"):
            e = self.assertRaises(ValueError, parse_size, value)
            self.assertIn(type(value).__name__, str(e))

    @given(st.integers(min_value=0, max_value=10**9), st.sampled_from(sorted(SIZE_UNITS)))
    def test_property_number_times_unit(self, amount, unit):
        self.assertEqual(parse_size(f"{amount} {unit}"), amount * SIZE_UNITS[unit])
