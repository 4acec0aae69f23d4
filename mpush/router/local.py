"""
The routes of the connections bound on this server: user id -> client type
-> connection (spec 11.1).

Every push and every kick starts here, and a busy node holds one entry per
bound connection, so it is a plain dict, empty entries dropped.  Removal is by owner only: a connection that has been replaced by a
newer bind of the same user and client type can never take the newer route
down with it (spec 11.6, and the fix of 21.2 item 12).
"""

from __future__ import annotations

from typing import Iterator

__all__ = ["LocalRouter"]


def _client_type(client_type: object) -> int:
    if isinstance(client_type, bool) or not isinstance(client_type, int):
        raise TypeError(f"client type must be an int, not {client_type!r}")
    # ClientType members and plain ints must land on the same key.
    return int(client_type)


def _user_id(user_id: object) -> str:
    if not isinstance(user_id, str):
        raise TypeError(f"user id must be text, not {type(user_id).__name__}")
    return user_id


class LocalRouter:
    """
    In-memory routes.  Connections are opaque here; callers give objects
    with C{.conn_id} and C{.context.device_id}, compared by identity.

    A user with one route (nearly all of them) is held as a
    C{(client_type, connection)} pair, a user with several as a dict by
    client type: a one-entry dict per bound device would cost three times
    the memory.
    """

    __slots__ = ("_routes", "_count")

    def __init__(self) -> None:
        self._routes: dict[str, tuple[int, object] | dict[int, object]] = {}
        self._count = 0

    def _by_type(self, user_id: str) -> dict[int, object]:
        """A copy of C{user_id}'s routes as a dict (empty when none)."""
        held = self._routes.get(user_id)
        if held is None:
            return {}
        if type(held) is tuple:
            return {held[0]: held[1]}
        return dict(held)

    def _store(self, user_id: str, by_type: dict[int, object]) -> None:
        if not by_type:
            self._routes.pop(user_id, None)
        elif len(by_type) == 1:
            [(client_type, connection)] = by_type.items()
            self._routes[user_id] = (client_type, connection)
        else:
            self._routes[user_id] = by_type

    def register(self, user_id: str, client_type: int, connection: object) -> object | None:
        """
        Route (user_id, client_type) to C{connection}.

        @return: the connection it replaced (the one to kick), or C{None};
            re-registering the same connection returns C{None}.
        """
        user_id = _user_id(user_id)
        client_type = _client_type(client_type)
        if connection is None:
            raise TypeError("connection must not be None")
        held = self._routes.get(user_id)
        if held is None:
            self._routes[user_id] = (client_type, connection)
            self._count += 1
            return None
        by_type = self._by_type(user_id)
        previous = by_type.get(client_type)
        by_type[client_type] = connection
        self._store(user_id, by_type)
        if previous is None:
            self._count += 1
            return None
        if previous is connection:
            return None
        return previous

    def lookup(self, user_id: str, client_type: int) -> object | None:
        """The connection routed for (user_id, client_type), or C{None}."""
        client_type = _client_type(client_type)
        held = self._routes.get(user_id)
        if held is None:
            return None
        if type(held) is tuple:
            return held[1] if held[0] == client_type else None
        return held.get(client_type)

    def lookup_all(self, user_id: str) -> dict[int, object]:
        """A copy of every route of C{user_id}: client type -> connection."""
        return self._by_type(user_id)

    def unregister(self, user_id: str, client_type: int, connection: object) -> bool:
        """
        Remove the route only while it is still C{connection}'s.

        @return: whether a route was removed.
        """
        client_type = _client_type(client_type)
        by_type = self._by_type(user_id)
        if by_type.get(client_type) is not connection:
            return False
        del by_type[client_type]
        self._store(user_id, by_type)
        self._count -= 1
        return True

    def __len__(self) -> int:
        """Number of routes (bound connections)."""
        return self._count

    def user_count(self) -> int:
        """Number of distinct users with at least one route."""
        return len(self._routes)

    def routes(self) -> Iterator[tuple[str, int, object]]:
        """
        Every route as (user_id, client_type, connection), safe to walk while
        routes change (a broadcast pauses between batches).

        Only the user ids are copied up front; each user's routes are read
        when the walk reaches it, so a route removed meanwhile is not
        yielded, a replaced one yields its new connection, and users bound after the walk began are not visited.
        """
        for user_id in list(self._routes):
            for client_type in list(self._by_type(user_id)):
                # Re-read at each step: the consumer may have paused (or
                # unbound something) since the previous route.
                connection = self.lookup(user_id, client_type)
                if connection is not None:
                    yield user_id, client_type, connection

    def __repr__(self) -> str:
        return f"<LocalRouter routes={self._count} users={len(self._routes)}>"
