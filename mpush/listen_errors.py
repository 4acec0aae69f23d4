"""
A port that cannot be listened on, said in one line.

twistd reports a failed listen as a traceback of some forty lines whose last
one names the port but not the setting that chose it.  A node that cannot
listen is a configuration problem, so it is reported like one: the address,
the config key (and command-line option) of the port, the OS error, and a
non-zero exit.
"""

from __future__ import annotations

from twisted.internet.error import CannotListenError

from mpush.os_errors import describe_errno

__all__ = ["describe_listen_error", "listen_keys"]


def listen_keys(net) -> dict[int, str]:
    """Each configured port of C{[net]}, with the key (and option) that sets it."""
    keys = {}
    for port, key in (
        (net.ws_server_port, "[net] ws-server-port"),
        (net.http_server_port, "[net] http-server-port or --http-port"),
        (net.admin_server_port, "[net] admin-server-port or --admin-port"),
        (net.gateway_server_port, "[net] gateway-server-port or --gateway-port"),
        (net.connect_server_port, "[net] connect-server-port or --connect-port"),
    ):
        if port:
            keys[port] = key
    return keys


def _os_error(error: CannotListenError) -> str:
    cause = error.socketError
    return describe_errno(getattr(cause, "errno", None)) or str(cause)


def describe_listen_error(error: CannotListenError, keys: dict[int, str]) -> str:
    """C{cannot listen on 0.0.0.0:3000 ([net] connect-server-port ...): address already in use (EADDRINUSE)}."""
    where = f"{error.interface or '*'}:{error.port}"
    key = keys.get(error.port)
    named = f" ({key})" if key else ""
    return f"cannot listen on {where}{named}: {_os_error(error)}"
