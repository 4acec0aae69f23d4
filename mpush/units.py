"""Duration and size values written the way MPush (HOCON) writes them.

MPush operators write ``min-heartbeat = 3m`` and ``max-packet-size = 10k``; we accept
the same spellings so their ``mpush.conf`` values carry over unchanged.  The unit sets
follow the HOCON specification (Typesafe Config):

* durations: unit strings are lowercase and case sensitive, ``m`` is MINUTES;
* sizes: single letters (``k``, ``m``, ``g``...) and the ``Ki``/``KiB`` forms are powers
  of two (``10k`` = 10240), while ``kB``/``MB``... are powers of ten (``1kB`` = 1000),
  exactly as HOCON reads them.

Results are exact integers: a value that does not come out as a whole number of the
result unit (``0.1k`` bytes, ``0.5ms``) is an error rather than silently rounded.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

__all__ = ["parse_duration", "parse_size", "DURATION_UNITS", "SIZE_UNITS"]

# Milliseconds per unit.  HOCON also has ns/us; they cannot express a whole number of
# milliseconds in general and nothing in MPush uses them, so they are not offered.
DURATION_UNITS: dict[str, int] = {}
for _names, _ms in (
    (("ms", "milli", "millis", "millisecond", "milliseconds"), 1),
    (("s", "second", "seconds"), 1000),
    (("m", "minute", "minutes"), 60 * 1000),
    (("h", "hour", "hours"), 60 * 60 * 1000),
    (("d", "day", "days"), 24 * 60 * 60 * 1000),
):
    for _name in _names:
        DURATION_UNITS[_name] = _ms

# Bytes per unit, the HOCON table (exa and above omitted: nothing here is that big).
SIZE_UNITS: dict[str, int] = {"B": 1, "b": 1, "byte": 1, "bytes": 1}
for _power, (_letter, _si, _iec) in enumerate(
    (("k", "kilo", "kibi"), ("m", "mega", "mebi"), ("g", "giga", "gibi"),
     ("t", "tera", "tebi"), ("p", "peta", "pebi")),
    start=1,
):
    _upper = _letter.upper()
    for _name in (_letter, _upper, _upper + "i", _upper + "iB", _iec + "byte", _iec + "bytes"):
        SIZE_UNITS[_name] = 1024 ** _power
    # HOCON spells the decimal kilo with a lowercase k, the others uppercase.
    _si_symbol = ("k" if _letter == "k" else _upper) + "B"
    for _name in (_si_symbol, _si + "byte", _si + "bytes"):
        SIZE_UNITS[_name] = 1000 ** _power
del _names, _ms, _name, _power, _letter, _si, _iec, _upper, _si_symbol

# A number (optionally signed, optionally with a fraction), optional blanks, a unit.
_VALUE = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*([A-Za-z]*)\s*", re.ASCII)


def _split(value: str) -> tuple[Decimal, str] | None:
    match = _VALUE.fullmatch(value)
    if match is None:
        return None
    try:
        return Decimal(match.group(1)), match.group(2)
    except InvalidOperation:  # pragma: no cover - the regex only admits valid numbers
        return None


def _whole(amount: Decimal, what: str, original: object) -> int:
    if amount != amount.to_integral_value():
        raise ValueError(f"{original!r} is not a whole number of {what}")
    return int(amount)


def parse_duration(value: int | str, *, default_unit: str = "ms") -> int:
    """Return ``value`` in MILLISECONDS.

    ``value`` is an ``int`` counted in ``default_unit`` (HOCON counts bare numbers in
    milliseconds, hence the default) or a string such as ``"100ms"``, ``"10s"``,
    ``"3m"`` (minutes), ``"2h"``, ``"1d"`` or ``"1.5s"``; a string without a unit is
    also counted in ``default_unit``.  Negative values, booleans, floats and unknown
    units raise ``ValueError``.
    """
    if default_unit not in DURATION_UNITS:
        raise ValueError(f"unknown duration unit {default_unit!r} for default_unit")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"expected a duration like 10s or an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative duration, got {value!r}")
        return value * DURATION_UNITS[default_unit]
    parts = _split(value)
    if parts is None:
        raise ValueError(f"expected a duration like 10s, got {value!r}")
    amount, unit = parts
    unit = unit or default_unit
    if unit not in DURATION_UNITS:
        raise ValueError(
            f"unknown duration unit {unit!r} in {value!r} (use ms, s, m for minutes, h or d)")
    if amount < 0:
        raise ValueError(f"expected a non-negative duration, got {value!r}")
    return _whole(amount * DURATION_UNITS[unit], "milliseconds", value)


def parse_size(value: int | str) -> int:
    """Return ``value`` in BYTES.

    ``value`` is an ``int`` (bytes) or a string such as ``"512"``, ``"10k"`` (10240),
    ``"64KiB"``, ``"5m"`` (5242880), ``"1g"`` or ``"1kB"`` (1000, the HOCON decimal
    unit).  Negative values, booleans, floats and unknown units raise ``ValueError``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"expected a size like 10k or an integer, got {type(value).__name__} {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative size, got {value!r}")
        return value
    parts = _split(value)
    if parts is None:
        raise ValueError(f"expected a size like 10k, got {value!r}")
    amount, unit = parts
    if unit and unit not in SIZE_UNITS:
        raise ValueError(
            f"unknown size unit {unit!r} in {value!r} "
            f"(use B, k/K/KiB, m/M/MiB, g/G/GiB for powers of 1024, kB/MB/GB for 1000)")
    if amount < 0:
        raise ValueError(f"expected a non-negative size, got {value!r}")
    return _whole(amount * SIZE_UNITS.get(unit, 1), "bytes", value)
