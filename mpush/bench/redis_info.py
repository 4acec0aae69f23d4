"""
What a Redis server did during a scenario: its command counters, read with
one INFO over loopback before and after.

The storm reports Redis work per reconnecting device from these, so the
figure means the same for any server under test (mpush or Java MPush).
Commands a Lua script runs count under their own names as well as the
script's EVAL/EVALSHA, which is why the scripts are reported apart.
"""

from __future__ import annotations

import socket

__all__ = ["RedisInfoError", "command_calls", "per_device"]

#: Commands the bench itself sends to read the counters: not the server's work.
_OWN = {"info", "config|resetstat", "command", "command|docs", "hello", "client|setinfo"}


class RedisInfoError(Exception):
    """The --redis-port server could not be read."""


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RedisInfoError("redis closed the connection")
        data += chunk
    header, _, rest = data.partition(b"\r\n")
    if header.startswith(b"-"):
        raise RedisInfoError(header[1:].decode("utf-8", "replace"))
    if not header.startswith(b"$"):
        raise RedisInfoError(f"unexpected reply {header[:40]!r}")
    length = int(header[1:])
    while len(rest) < length + 2:
        chunk = sock.recv(65536)
        if not chunk:
            raise RedisInfoError("redis closed the connection")
        rest += chunk
    return rest[:length]


def command_calls(host: str, port: int, timeout: float = 5.0) -> dict[str, int]:
    """C{{command: calls}} from C{INFO commandstats}, less the bench's own reads."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
            text = _read_reply(sock).decode("utf-8", "replace")
    except OSError as exc:
        raise RedisInfoError(f"redis {host}:{port}: {exc.strerror or exc}") from None
    calls = {}
    for line in text.splitlines():
        if not line.startswith("cmdstat_"):
            continue
        name, _, fields = line[len("cmdstat_"):].partition(":")
        for part in fields.split(","):
            key, _, value = part.partition("=")
            if key == "calls" and name not in _OWN:
                calls[name] = int(value)
    return calls


def per_device(before: dict[str, int], after: dict[str, int], devices: int) -> dict:
    """
    Commands per device between two readings: C{all} (everything Redis
    ran, script bodies included), C{scripts} (EVAL/EVALSHA), and C{by_command}.
    """
    if devices <= 0:
        return {"all": None, "scripts": None, "by_command": {}}
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta = {name: n for name, n in delta.items() if n > 0}
    scripts = sum(n for name, n in delta.items() if name in ("eval", "evalsha"))
    return {
        "all": round(sum(delta.values()) / devices, 2),
        "scripts": round(scripts / devices, 3),
        "by_command": {name: round(n / devices, 3) for name, n in sorted(delta.items())},
    }
