"""
Which web pages may open the WebSocket port (C{[net] ws-allowed-origins}).

A browser lets any page open a WebSocket to any address it can reach, and
says which page asked in the C{Origin} header.  Without a check, any web
site a visitor opens can use the visitor's browser to bind and push on an
intranet-only port.  Clients that are not browsers send no Origin and are
not concerned: a page cannot leave it out.
"""

from urllib.parse import urlsplit

__all__ = ["ANY_ORIGIN", "OriginPolicy", "origin_key"]

#: The allow-list entry that lets every page in, as MPush does.
ANY_ORIGIN = "*"

_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_key(text: str) -> str:
    """
    C{text} (C{scheme://host[:port]}) as compared: lower case, with the
    port always written.

    @raise ValueError: not an http or https origin.
    """
    parts = urlsplit(text)  # ValueError on a bad IPv6 literal, as wanted
    scheme = parts.scheme.lower()
    extra = parts.username is not None or parts.query or parts.fragment or parts.path not in ("", "/")
    if scheme not in _DEFAULT_PORTS or not parts.hostname or extra:
        raise ValueError(f"not an http(s) origin: {text!r}")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    # .port raises ValueError when the port is not a number in 0..65535.
    return f"{scheme}://{host}:{parts.port or _DEFAULT_PORTS[scheme]}"


class OriginPolicy:
    """
    The pages allowed to open a WebSocket: with no entries, only pages of
    the port's own origin (the built-in page); otherwise only the listed
    origins, or any with L{ANY_ORIGIN}.
    """

    __slots__ = ("_any", "_allowed")

    def __init__(self, allowed: tuple[str, ...] = ()) -> None:
        self._any = ANY_ORIGIN in allowed
        self._allowed = frozenset(origin_key(entry) for entry in allowed if entry != ANY_ORIGIN)

    def allows(self, origin: str | None, secure: bool, host: str | None) -> bool:
        """
        Whether a handshake with this C{Origin} header (C{None} when absent)
        may go on; C{secure} and C{host} (the Host header) give the port's
        own origin.
        """
        if origin is None or self._any:
            return True
        try:
            key = origin_key(origin)
        except ValueError:
            return False  # "null" (a sandboxed page, a file) and garbage
        if self._allowed:
            return key in self._allowed
        if not host:
            return False
        try:
            own = origin_key(f"{'https' if secure else 'http'}://{host}")
        except ValueError:
            return False
        return key == own
