"""
The seam between the connection server and wherever reusable sessions live.

Handshake saves a session and fast connect loads it; neither should care
whether that is process memory or a Redis shared with Java nodes, so both
talk to L{ISessionStore} and the implementation is chosen once from config.
"""

from __future__ import annotations

from zope.interface import Interface

__all__ = ["ISessionStore", "StoreUnavailable", "check_session_id", "check_ttl"]


class StoreUnavailable(Exception):
    """
    The backend could not answer (down, too slow, refused the command).  The
    message names the backend and the reason.  Fast connect maps it to
    SESSION_EXPIRED so the client falls back to a full handshake.
    """


class ISessionStore(Interface):
    """
    Reusable sessions by session id (spec 8.2).  Every method returns a
    L{twisted.internet.defer.Deferred} and never raises synchronously.
    """

    def save(session_id, session, ttl):
        """
        Store C{session} (an L{mpush.protocol.session.ReusableSession}) under
        C{session_id} for C{ttl} seconds; C{ttl <= 0} means no expiry.

        @return: a Deferred firing C{None}; it errbacks with
            L{StoreUnavailable} when the backend cannot answer,
            L{mpush.protocol.session.InvalidSession} when the session cannot
            be written in MPush's format (a comma in a text field), and
            C{ValueError}/C{TypeError} for a bad id or ttl.
        """

    def load(session_id):
        """
        Look C{session_id} up.

        @return: a Deferred firing the L{mpush.protocol.session.ReusableSession},
            or C{None} when it is missing, expired, blank or undecodable; it
            errbacks with L{StoreUnavailable} when the backend cannot answer.
        """

    def close():
        """
        Release connections and memory.  Later calls errback with
        L{StoreUnavailable}.

        @return: a Deferred firing C{None}.
        """


def check_session_id(session_id: object) -> str:
    """
    Both stores refuse the same ids, so a caller's bug shows the same way
    whichever store is configured.
    """
    if not isinstance(session_id, str):
        raise TypeError(f"session id must be text, not {type(session_id).__name__}")
    if not session_id:
        raise ValueError("session id must not be empty")
    return session_id


def check_ttl(ttl: object) -> int:
    """
    Whole seconds, as Redis EXPIRE takes them; C{<= 0} means no expiry.
    """
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise TypeError(f"ttl must be whole seconds (int), not {ttl!r}")
    return ttl
