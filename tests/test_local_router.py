"""The per-server route table (spec 11.1, 11.6, 21.2 item 12)."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from mpush.protocol.client_type import ClientType
from mpush.router.local import LocalRouter


class _Context:
    __slots__ = ("device_id",)

    def __init__(self, device_id):
        self.device_id = device_id


class FakeConnection:
    """What the router is given: something with a conn id and a device id."""

    __slots__ = ("conn_id", "context")

    def __init__(self, conn_id, device_id="dev"):
        self.conn_id = conn_id
        self.context = _Context(device_id)

    def __repr__(self):
        return f"<conn {self.conn_id}>"


class LocalRouterTests(SynchronousTestCase):
    def setUp(self):
        self.router = LocalRouter()

    def test_empty(self):
        self.assertEqual(len(self.router), 0)
        self.assertEqual(self.router.user_count(), 0)
        self.assertIsNone(self.router.lookup("u1", 1))
        self.assertEqual(self.router.lookup_all("u1"), {})
        self.assertEqual(list(self.router.routes()), [])

    def test_register_and_lookup(self):
        a = FakeConnection("a")
        self.assertIsNone(self.router.register("u1", ClientType.MOBILE, a))
        self.assertIs(self.router.lookup("u1", 1), a)
        self.assertIs(self.router.lookup("u1", ClientType.MOBILE), a)
        self.assertIsNone(self.router.lookup("u1", 2))
        self.assertEqual(len(self.router), 1)

    def test_replace_returns_previous(self):
        a, b = FakeConnection("a"), FakeConnection("b")
        self.router.register("u1", 1, a)
        self.assertIs(self.router.register("u1", 1, b), a)
        self.assertIs(self.router.lookup("u1", 1), b)
        self.assertEqual(len(self.router), 1)

    def test_same_connection_again(self):
        a = FakeConnection("a")
        self.router.register("u1", 1, a)
        self.assertIsNone(self.router.register("u1", 1, a))
        self.assertEqual(len(self.router), 1)

    def test_types_are_independent(self):
        a, b = FakeConnection("a"), FakeConnection("b")
        self.router.register("u1", ClientType.MOBILE, a)
        self.assertIsNone(self.router.register("u1", ClientType.PC, b))
        self.assertEqual(self.router.lookup_all("u1"), {1: a, 2: b})
        self.assertEqual(len(self.router), 2)
        self.assertEqual(self.router.user_count(), 1)
        # Plain ints as keys, whatever the caller used.
        self.assertEqual([type(k) for k in self.router.lookup_all("u1")], [int, int])

    def test_lookup_all_is_a_copy(self):
        a = FakeConnection("a")
        self.router.register("u1", 1, a)
        self.router.lookup_all("u1").clear()
        self.assertIs(self.router.lookup("u1", 1), a)

    def test_unregister_by_owner(self):
        a = FakeConnection("a")
        self.router.register("u1", 1, a)
        self.assertTrue(self.router.unregister("u1", 1, a))
        self.assertIsNone(self.router.lookup("u1", 1))
        self.assertEqual(len(self.router), 0)
        self.assertEqual(self.router.user_count(), 0)
        self.assertFalse(self.router.unregister("u1", 1, a))

    def test_unregister_by_replaced_connection_is_ignored(self):
        # Spec 11.6: the old connection closing must not take the new route.
        a, b = FakeConnection("a"), FakeConnection("b")
        self.router.register("u1", 1, a)
        self.router.register("u1", 1, b)
        self.assertFalse(self.router.unregister("u1", 1, a))
        self.assertIs(self.router.lookup("u1", 1), b)
        self.assertEqual(len(self.router), 1)

    def test_unregister_compares_identity(self):
        a = FakeConnection("same")
        twin = FakeConnection("same")
        self.router.register("u1", 1, a)
        self.assertFalse(self.router.unregister("u1", 1, twin))
        self.assertIs(self.router.lookup("u1", 1), a)

    def test_unregister_other_type_or_user(self):
        a = FakeConnection("a")
        self.router.register("u1", 1, a)
        self.assertFalse(self.router.unregister("u1", 2, a))
        self.assertFalse(self.router.unregister("u2", 1, a))
        self.assertEqual(len(self.router), 1)

    def test_empty_users_dropped(self):
        a, b = FakeConnection("a"), FakeConnection("b")
        self.router.register("u1", 1, a)
        self.router.register("u1", 2, b)
        self.router.unregister("u1", 1, a)
        self.assertEqual(self.router.user_count(), 1)
        self.router.unregister("u1", 2, b)
        self.assertEqual(self.router.user_count(), 0)
        self.assertEqual(self.router._routes, {})

    def test_bad_input(self):
        a = FakeConnection("a")
        self.assertRaises(TypeError, self.router.register, None, 1, a)
        self.assertRaises(TypeError, self.router.register, "u1", "1", a)
        self.assertRaises(TypeError, self.router.register, "u1", True, a)
        self.assertRaises(TypeError, self.router.register, "u1", 1, None)
        self.assertRaises(TypeError, self.router.lookup, "u1", "1")
        self.assertRaises(TypeError, self.router.unregister, "u1", None, a)
        self.assertEqual(len(self.router), 0)

    def test_routes(self):
        a, b, c = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
        self.router.register("u1", 1, a)
        self.router.register("u1", 2, b)
        self.router.register("u2", 1, c)
        self.assertEqual(
            sorted(self.router.routes(), key=lambda r: (r[0], r[1])),
            [("u1", 1, a), ("u1", 2, b), ("u2", 1, c)],
        )

    def test_routes_while_removing(self):
        connections = {f"u{i}": FakeConnection(f"c{i}") for i in range(10)}
        for user_id, connection in connections.items():
            self.router.register(user_id, 1, connection)
        seen = []
        for user_id, client_type, connection in self.router.routes():
            seen.append(user_id)
            if user_id == "u0":
                # A broadcast pause: others unbind meanwhile.
                for gone in ("u5", "u6", "u7"):
                    self.router.unregister(gone, 1, connections[gone])
        self.assertEqual(len(seen), 7)
        self.assertFalse({"u5", "u6", "u7"} & set(seen))

    def test_routes_while_adding_and_replacing(self):
        old = FakeConnection("old")
        self.router.register("u0", 1, FakeConnection("first"))
        self.router.register("u1", 1, old)
        self.router.register("u1", 2, FakeConnection("pc"))
        seen = []
        for user_id, client_type, connection in self.router.routes():
            seen.append((user_id, client_type, connection.conn_id))
            if user_id == "u0":
                self.router.register("u9", 1, FakeConnection("late"))
                self.router.register("u1", 1, FakeConnection("new"))
            if (user_id, client_type) == ("u1", 1):
                self.router.unregister("u1", 2, self.router.lookup("u1", 2))
        # Registered mid-walk: not visited; replaced: the new connection;
        # removed before reached: skipped.
        self.assertEqual(seen, [("u0", 1, "first"), ("u1", 1, "new")])
        self.assertEqual(len(self.router), 3)

    def test_routes_while_user_reappears(self):
        a = FakeConnection("a")
        self.router.register("u0", 1, FakeConnection("x"))
        self.router.register("u1", 1, a)
        self.router.register("u1", 2, FakeConnection("b"))
        seen = []
        for user_id, client_type, connection in self.router.routes():
            seen.append((user_id, client_type, connection.conn_id))
            if (user_id, client_type) == ("u1", 1):
                self.router.unregister("u1", 1, a)
                self.router.unregister("u1", 2, self.router.lookup("u1", 2))
                self.router.register("u1", 2, FakeConnection("again"))
        self.assertEqual(seen, [("u0", 1, "x"), ("u1", 1, "a"), ("u1", 2, "again")])

    def test_slots(self):
        self.assertFalse(hasattr(self.router, "__dict__"))
