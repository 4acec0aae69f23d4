"""
BIND/UNBIND, kicks, ACK, client push, the gateway and the push center, over
StringTransport with a fake clock (one node, in-memory routers).
"""

import json

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mpush.config import BindConfig, ProxyConfig, PushConfig, load_config
from mpush.protocol.body import decode_body, make_packet, make_raw_packet
from mpush.protocol.messages import (
    BindUserMessage,
    ErrorMessage,
    GatewayPushMessage,
    HttpRequestMessage,
    KickUserMessage,
    OkMessage,
    PushMessage,
)
from mpush.protocol.packet import Command, Flags, Packet, PacketDecoder, encode_packet
from mpush.protocol.routing import (
    ClientLocation,
    decode_location,
    encode_location,
    online_users_key,
    user_route_key,
)
from mpush.server.device.bind_validator import HmacTokenValidator
from mpush.server.device.context import ConnectionState
from mpush.server.gateway.gateway import GatewayFactory

from tests.server_support import ScriptedDevice, connect, make_node


class Device(ScriptedDevice):
    """
    A scripted device with its own connection to the node.
    """

    def __init__(self, node, device_id, os_name="android", port=40000):
        super().__init__(device_id=device_id, os_name=os_name)
        self.node = node
        self.protocol, self.transport = connect(node, port=port)
        self.protocol.dataReceived(self.handshake_bytes())
        [reply] = self.read(self.transport)
        self.session_id = self.accept_handshake_ok(reply).session_id

    def send(self, cmd, message, flags=0, packet_id=None):
        packet = make_packet(cmd, message, packet_id or self.packet_id(), cipher=self.cipher, flags=flags)
        self.protocol.dataReceived(encode_packet(packet))

    def bind(self, user_id, tags=None, data=None):
        self.send(Command.BIND, BindUserMessage(user_id, data, tags))
        return self.read(self.transport)

    def unbind(self, user_id="x"):
        self.send(Command.UNBIND, BindUserMessage(user_id))
        return self.read(self.transport)

    def received(self):
        """
        Decrypted (cmd, session id, flags, body) of everything sent to it.
        """
        return [
            (p.cmd, p.session_id, p.flags, decode_body(p, self.cipher) if p.cmd != Command.ERROR else p.body)
            for p in self.read(self.transport)
        ]

    def ack(self, session_id):
        self.protocol.dataReceived(encode_packet(Packet(Command.ACK, session_id)))


def ok_of(packet):
    assert packet.cmd == Command.OK, packet
    return OkMessage.decode(packet.body)


class Gateway:
    """
    A back-end's connection to the node's gateway, over StringTransport.
    """

    def __init__(self, node, max_packet_size=1 << 20):
        factory = GatewayFactory(node.push_center, max_packet_size)
        self.protocol = factory.buildProtocol(None)
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 50000))
        self.protocol.makeConnection(self.transport)
        self.decoder = PacketDecoder(None)
        self.next_id = 100

    def push(self, user_id, content=b"hello", client_type=1, timeout=2500, flags=0, tags=None,
             condition=None):
        self.next_id += 1
        message = GatewayPushMessage(user_id, client_type, timeout, content, None, tags, condition)
        self.protocol.dataReceived(
            encode_packet(make_raw_packet(Command.GATEWAY_PUSH, message, self.next_id, flags))
        )
        return self.next_id

    def replies(self):
        data = self.transport.value()
        self.transport.clear()
        out = []
        for packet in self.decoder.feed(data):
            if packet.cmd == Command.OK:
                out.append((packet.session_id, "ok", OkMessage.decode(packet.body)))
            else:
                out.append((packet.session_id, "error", ErrorMessage.decode(packet.body)))
        return out


class BindTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.center = self.node.router_center
        self.state = self.center.remote.state

    def route_json(self, user_id, client_type=1):
        return self.state.hashes.get(user_route_key(user_id), {}).get(str(client_type))

    def test_bind_ok(self):
        device = Device(self.node, "dev-1")
        [reply] = device.bind("alice", tags="vip,beta")
        self.assertEqual(encode_packet(reply)[4:13], bytes([11, 0, 0, 0]) + reply.session_id.to_bytes(4, "big") + b"\x00")
        self.assertEqual(ok_of(reply), OkMessage(5, 0, "bind success"))
        self.assertIs(device.protocol.state, ConnectionState.BOUND)
        self.assertEqual(device.protocol.context.tags, "vip,beta")
        self.assertIs(self.center.local.lookup("alice", 1), device.protocol)
        host, port = self.center.gateway
        self.assertEqual(
            self.route_json("alice"),
            f'{{"port":{port},"host":"{host}","deviceId":"dev-1","osName":"android",'
            f'"clientVersion":"1.0","connId":"{device.protocol.conn_id}"}}',
        )
        self.assertIn("alice", self.state.smembers(online_users_key(self.center.events.public_ip)))

    def test_routes_shared_again(self):
        # Another node took this one for dead and marked its routes offline
        # (here: gone); the registry's refresh finds it and calls share_again.
        alice = Device(self.node, "dev-1", port=1)
        bob = Device(self.node, "dev-2", port=2)
        alice.bind("alice")
        bob.bind("bob")
        written = self.route_json("alice")
        for user_id in ("alice", "bob"):
            del self.state.hashes[user_route_key(user_id)]
        self.center.share_again()
        self.assertEqual(self.center.routes_unshared, 2)
        # Bob unbinds before his turn comes: his route is not written back.
        bob.unbind()
        self.assertEqual(self.center.routes_unshared, 1)
        self.node.clock.advance(0)
        self.assertEqual(self.route_json("alice"), written)
        self.assertIsNone(self.route_json("bob"))
        self.assertEqual((self.center.routes_unshared, self.center.routes_shared_again), (0, 1))

    def test_kicked_route_not_shared_again(self):
        # A re-login kick from another node leaves the connection open; the
        # route it lost must not be written back over the new one.
        alice = Device(self.node, "dev-1")
        alice.bind("alice")
        del self.state.hashes[user_route_key("alice")]
        self.center.kick_local(alice.protocol, "alice")
        self.center.share_again()
        self.node.clock.advance(0)
        self.assertIsNone(self.route_json("alice"))
        self.assertEqual((self.center.routes_unshared, self.center.routes_shared_again), (0, 0))
        # Bound again on that connection: its route is its own again.
        alice.unbind()
        alice.bind("alice")
        del self.state.hashes[user_route_key("alice")]
        self.center.share_again()
        self.node.clock.advance(0)
        self.assertIsNotNone(self.route_json("alice"))

    def test_bind_retry_answered_again(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        [reply] = device.bind("alice", tags="new")
        self.assertEqual(ok_of(reply).data, "bind success")
        self.assertEqual(device.protocol.context.tags, "new")

    def test_bind_without_user(self):
        device = Device(self.node, "dev-1")
        [reply] = device.bind(None)
        error = ErrorMessage.decode(reply.body)
        self.assertEqual((error.cmd, error.code, error.reason), (5, 0, "invalid param"))
        self.assertTrue(device.transport.disconnecting)

    def test_bind_before_handshake(self):
        protocol, transport = connect(self.node)
        message = BindUserMessage("alice")
        protocol.dataReceived(encode_packet(make_raw_packet(Command.BIND, message, 1)))
        [reply] = PacketDecoder(None).feed(transport.value())
        error = ErrorMessage.decode(reply.body)
        self.assertEqual((error.cmd, error.reason), (5, "not handshake"))
        self.assertTrue(transport.disconnecting)

    def test_switch_user_on_same_connection(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        [reply] = device.bind("bob")
        self.assertEqual(ok_of(reply), OkMessage(5, 0, "bind success"))
        self.assertIsNone(self.center.local.lookup("alice", 1))
        self.assertFalse(decode_location(self.route_json("alice")).online)
        self.assertIs(self.center.local.lookup("bob", 1), device.protocol)

    def test_second_device_kicks_first(self):
        first = Device(self.node, "dev-1", port=1)
        second = Device(self.node, "dev-2", port=2)
        first.bind("alice")
        second.bind("alice")
        [(cmd, session_id, flags, body)] = first.received()
        self.assertEqual((cmd, session_id, flags & Flags.CRYPTO), (Command.KICK, 0, Flags.CRYPTO))
        self.assertEqual(KickUserMessage.decode(body), KickUserMessage("dev-1", "alice"))
        self.assertFalse(first.transport.disconnecting)
        self.assertIs(self.center.local.lookup("alice", 1), second.protocol)
        self.assertEqual(decode_location(self.route_json("alice")).conn_id, second.protocol.conn_id)

    def test_kicked_connection_closing_leaves_new_route(self):
        first = Device(self.node, "dev-1", port=1)
        second = Device(self.node, "dev-2", port=2)
        first.bind("alice")
        second.bind("alice")
        first.protocol.connectionLost(None)
        self.assertIs(self.center.local.lookup("alice", 1), second.protocol)
        self.assertTrue(decode_location(self.route_json("alice")).online)

    def test_other_client_type_not_kicked(self):
        phone = Device(self.node, "phone", os_name="android", port=1)
        laptop = Device(self.node, "laptop", os_name="Windows 11", port=2)
        phone.bind("alice")
        laptop.bind("alice")
        self.assertEqual(phone.received(), [])
        self.assertEqual(set(self.center.local.lookup_all("alice")), {1, 2})

    def test_missing_os_name_is_unknown_type(self):
        device = Device(self.node, "dev-1", os_name=None)
        [reply] = device.bind("alice")
        self.assertEqual(ok_of(reply).data, "bind success")
        self.assertIs(self.center.local.lookup("alice", -1), device.protocol)

    def test_close_marks_route_offline(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        device.protocol.connectionLost(None)
        self.assertIsNone(self.center.local.lookup("alice", 1))
        self.assertFalse(decode_location(self.route_json("alice")).online)
        self.assertNotIn("alice", self.state.smembers(online_users_key(self.center.events.public_ip)))

    def test_unbind(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        [reply] = device.unbind("whoever")
        self.assertEqual(ok_of(reply), OkMessage(6, 0, "unbind success"))
        self.assertIsNone(self.center.local.lookup("alice", 1))
        self.assertFalse(decode_location(self.route_json("alice")).online)
        self.assertIsNone(device.protocol.context.user_id)
        self.assertIs(device.protocol.state, ConnectionState.HANDSHAKEN)

    def test_unbind_when_not_bound(self):
        device = Device(self.node, "dev-1")
        [reply] = device.unbind("alice")
        self.assertEqual(ok_of(reply).data, "unbind success")
        self.assertEqual(self.state.hashes, {})

    def test_unbind_without_user(self):
        device = Device(self.node, "dev-1")
        [reply] = device.unbind(None)
        self.assertEqual(ErrorMessage.decode(reply.body).reason, "invalid param")
        self.assertTrue(device.transport.disconnecting)

    def test_remote_kick_reaches_only_named_connection(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        host, port = self.center.gateway
        from mpush.protocol.routing import KickRequest

        self.center.remote_kick(KickRequest("alice", "dev-1", "not-this-one", 1, host, port))
        self.assertEqual(device.received(), [])
        self.center.remote_kick(KickRequest("alice", "dev-1", device.protocol.conn_id, 1, "10.9.9.9", port))
        self.assertEqual(device.received(), [])
        self.center.remote_kick(KickRequest("alice", "dev-1", device.protocol.conn_id, 1, host, port))
        [(cmd, _, _, body)] = device.received()
        self.assertEqual((cmd, KickUserMessage.decode(body).user_id), (Command.KICK, "alice"))
        self.assertFalse(device.transport.disconnecting)  # MPush's kick leaves it open

    def test_remote_operator_kick_closes_and_releases(self):
        device = Device(self.node, "dev-1")
        device.bind("alice")
        host, port = self.center.gateway
        from mpush.protocol.routing import KickRequest

        self.center.remote_kick(KickRequest("alice", "dev-1", device.protocol.conn_id, 1, host, port, close=True))
        [(cmd, _, _, body)] = device.received()
        self.assertEqual(cmd, Command.KICK)
        self.assertTrue(device.transport.disconnecting)
        self.assertIsNone(self.center.local.lookup("alice", 1))
        self.assertFalse(decode_location(self.route_json("alice")).online)

    def test_bind_over_route_of_other_node_publishes_kick(self):
        other = ClientLocation("10.1.1.1", 3001, "dev-0", "android", "1.0", "c0ffee00")
        self.state.hashes[user_route_key("alice")] = {"1": encode_location(other)}
        published = []
        self.state.subscribe("/mpush/kick/10.1.1.1:3001", published.append)
        device = Device(self.node, "dev-1")
        device.bind("alice")
        self.node.clock.advance(0)
        [kick] = published
        self.assertEqual(
            json.loads(kick),
            {"clientType": 1, "connId": "c0ffee00", "deviceId": "dev-0", "targetPort": 3001,
             "targetServer": "10.1.1.1", "userId": "alice"},
        )


class ValidatorTests(SynchronousTestCase):
    def test_refused_bind(self):
        config = load_config(None).replace(bind=BindConfig(validator="hmac", hmac_secret="s3"))
        node = make_node(config)
        device = Device(node, "dev-1")
        [reply] = device.bind("alice", data="forged")
        error = ErrorMessage.decode(reply.body)
        self.assertEqual((error.cmd, error.reason), (5, "bind failed"))
        self.assertTrue(device.transport.disconnecting)
        self.assertIsNone(node.router_center.local.lookup("alice", 1))

    def test_non_ascii_token_is_a_failed_bind(self):
        """
        Not a crash (compare_digest on a non-ASCII str raises TypeError).
        """
        config = load_config(None).replace(bind=BindConfig(validator="hmac", hmac_secret="s3"))
        node = make_node(config)
        token = HmacTokenValidator("s3").token_for("alice")
        self.assertFalse(HmacTokenValidator("s3").validate("alice", "é" + token[1:], None))
        device = Device(node, "dev-1")
        [reply] = device.bind("alice", data="tökén")
        error = ErrorMessage.decode(reply.body)
        self.assertEqual((error.cmd, error.code, error.reason), (5, 0, "bind failed"))
        self.assertTrue(device.transport.disconnecting)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_accepted_token(self):
        config = load_config(None).replace(bind=BindConfig(validator="hmac", hmac_secret="s3"))
        node = make_node(config)
        device = Device(node, "dev-1")
        token = HmacTokenValidator("s3").token_for("alice")
        [reply] = device.bind("alice", data=token)
        self.assertEqual(ok_of(reply).data, "bind success")


class ClientPushAndAckTests(SynchronousTestCase):
    def test_client_push_auto_ack(self):
        node = make_node()
        device = Device(node, "dev-1")
        device.send(Command.PUSH, PushMessage(b"up"), flags=Flags.AUTO_ACK, packet_id=77)
        [ack] = device.read(device.transport)
        self.assertEqual(encode_packet(ack), bytes.fromhex("00000000170000000000004d00"))

    def test_client_push_biz_ack_not_answered(self):
        node = make_node()
        device = Device(node, "dev-1")
        device.send(Command.PUSH, PushMessage(b"up"), flags=Flags.BIZ_ACK)
        self.assertEqual(device.read(device.transport), [])

    def test_unknown_ack_ignored(self):
        node = make_node()
        device = Device(node, "dev-1")
        device.ack(12345)
        self.assertEqual(device.read(device.transport), [])
        self.assertFalse(device.transport.disconnecting)


class SinglePushTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.clock = self.node.clock
        self.device = Device(self.node, "dev-1")
        self.device.bind("alice")
        self.gateway = Gateway(self.node)

    def test_no_ack_push(self):
        request = self.gateway.push("alice", b"hi there")
        [(cmd, session_id, flags, body)] = self.device.received()
        self.assertEqual((cmd, body), (Command.PUSH, b"hi there"))
        self.assertEqual(flags, Flags.CRYPTO)
        [(reply_id, kind, ok)] = self.gateway.replies()
        self.assertEqual((reply_id, kind, ok.cmd), (request, "ok", 16))
        result = json.loads(ok.data)
        self.assertEqual(result["userId"], "alice")
        self.assertEqual(result["clientType"], 1)
        self.assertEqual(result["timePoints"][0::2], ["push-center-begin", "before-send", "success-end"])

    def test_auto_ack_round_trip(self):
        self.gateway.push("alice", flags=Flags.AUTO_ACK)
        [(cmd, session_id, flags, _)] = self.device.received()
        self.assertEqual(flags, Flags.CRYPTO | Flags.AUTO_ACK)
        self.assertEqual(self.gateway.replies(), [])
        self.device.ack(session_id)
        [(_, kind, ok)] = self.gateway.replies()
        self.assertEqual(kind, "ok")
        self.assertEqual(json.loads(ok.data)["timePoints"][0::2],
                         ["push-center-begin", "before-send", "waiting-ack", "success-end"])

    def test_biz_ack_round_trip(self):
        self.gateway.push("alice", flags=Flags.BIZ_ACK)
        [(_, session_id, flags, _)] = self.device.received()
        self.assertEqual(flags, Flags.CRYPTO | Flags.BIZ_ACK)
        self.device.ack(session_id)
        [(_, kind, _)] = self.gateway.replies()
        self.assertEqual(kind, "ok")

    def test_ack_timeout_silent_for_java_pushers(self):
        self.gateway.push("alice", flags=Flags.AUTO_ACK, timeout=2500)
        self.clock.advance(3)
        self.assertEqual(self.gateway.replies(), [])
        self.assertEqual(len(self.node.acks), 0)

    def test_ack_timeout_reported_on_opt_in(self):
        self.gateway.push("alice", flags=Flags.AUTO_ACK | Flags.REPORT_TIMEOUTS, timeout=2500)
        self.clock.advance(2.4)
        self.assertEqual(self.gateway.replies(), [])
        self.clock.advance(0.2)
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual((kind, error.cmd, error.code, error.reason), ("error", 16, 4, "ack timeout"))
        [(_, session_id, _, _)] = self.device.received()
        self.device.ack(session_id)  # late: ignored
        self.assertEqual(self.gateway.replies(), [])

    def test_ack_arriving_in_same_turn_as_push(self):
        """
        The wait exists before the PUSH is written, so an ACK processed right
        after the write is never lost (spec 21.2 item 19).
        """
        # The Deferred path: a push to every client type the user has here.
        laptop = Device(self.node, "laptop", os_name="windows", port=3)
        laptop.bind("alice")
        for device in (self.device, laptop):
            original = device.protocol.send

            def send_and_ack(cmd, message, session_id, flags=0, device=device, original=original):
                written = original(cmd, message, session_id, flags)
                if cmd == Command.PUSH:
                    device.ack(session_id)
                return written

            device.protocol.send = send_and_ack
        self.gateway.push("alice", client_type=0, flags=Flags.AUTO_ACK)
        [(_, kind, _)] = self.gateway.replies()
        self.assertEqual(kind, "ok")

    def test_ack_arriving_during_the_synchronous_write(self):
        """
        The same through the push center's Deferred-free path: an ACK handled
        while the PUSH is being written still ends the push with OK, its
        time points in order.
        """
        original = self.device.protocol.send_push

        def send_push_and_ack(content, session_id, flags=0):
            written = original(content, session_id, flags)
            self.device.ack(session_id)
            return written

        self.device.protocol.send_push = send_push_and_ack
        self.gateway.push("alice", flags=Flags.AUTO_ACK)
        [(_, kind, data)] = self.gateway.replies()
        self.assertEqual(kind, "ok")
        names = json.loads(data.data)["timePoints"][0::2]
        self.assertEqual(names, ["push-center-begin", "before-send", "waiting-ack", "success-end"])

    def test_offline_user(self):
        self.gateway.push("nobody")
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual((kind, error.code, error.reason), ("error", 1, "user offline"))
        self.assertEqual(json.loads(error.data)["timePoints"][-2], "offline-end")

    def test_user_on_other_node_is_redirected(self):
        state = self.node.router_center.remote.state
        elsewhere = ClientLocation("10.1.1.1", 3001, "dev-9", "android", "1.0", "abcd0123")
        state.hashes[user_route_key("bob")] = {"1": encode_location(elsewhere)}
        self.gateway.push("bob")
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual((kind, error.code, error.reason), ("error", 3, "router change"))
        self.assertEqual(json.loads(error.data)["routes"], {"1": "10.1.1.1:3001"})

    def test_stale_route_of_this_node_is_offline_and_cleared(self):
        state = self.node.router_center.remote.state
        host, port = self.node.router_center.gateway
        stale = ClientLocation(host, port, "dev-9", "android", "1.0", "deadbeef")
        state.hashes[user_route_key("carol")] = {"1": encode_location(stale)}
        self.gateway.push("carol")
        [(_, _, error)] = self.gateway.replies()
        self.assertEqual(error.code, 1)
        self.assertFalse(decode_location(state.hashes[user_route_key("carol")]["1"]).online)

    def test_slow_reader_fails_push(self):
        self.device.protocol.pauseProducing()  # the transport's buffer is above the mark
        self.gateway.push("alice")
        self.assertEqual(self.device.received(), [])
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual((kind, error.code, error.reason), ("error", 2, "push to client failure"))
        self.device.protocol.resumeProducing()
        self.gateway.push("alice")
        [(_, kind, _)] = self.gateway.replies()
        self.assertEqual(kind, "ok")

    def test_closed_connection_route_dropped(self):
        self.device.protocol.close()
        self.gateway.push("alice")
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual(error.code, 1)

    def test_all_types_with_client_type_zero(self):
        laptop = Device(self.node, "laptop", os_name="windows", port=3)
        laptop.bind("alice")
        self.gateway.push("alice", client_type=0)
        self.assertEqual(len(self.device.received()), 1)
        self.assertEqual(len(laptop.received()), 1)
        [(_, kind, ok)] = self.gateway.replies()
        self.assertEqual(kind, "ok")
        self.assertNotIn("clientType", json.loads(ok.data))

    def test_non_positive_timeout_uses_default(self):
        self.gateway.push("alice", flags=Flags.AUTO_ACK | Flags.REPORT_TIMEOUTS, timeout=0)
        self.clock.advance(2.9)
        self.assertEqual(self.gateway.replies(), [])
        self.clock.advance(0.2)
        [(_, _, error)] = self.gateway.replies()
        self.assertEqual(error.code, 4)

    def test_compressed_large_push(self):
        content = b"X" * 20000
        self.gateway.push("alice", content=content)
        [(_, _, flags, body)] = self.device.received()
        self.assertEqual(flags, Flags.CRYPTO | Flags.COMPRESS)
        self.assertEqual(body, content)


class FlowControlTests(SynchronousTestCase):
    def test_pushes_over_the_rate_wait_for_the_next_window(self):
        config = load_config(None).replace(push=PushConfig(global_limit=2, global_duration=1000))
        node = make_node(config)
        device = Device(node, "dev-1")
        device.bind("alice")
        gateway = Gateway(node)
        for _ in range(3):
            gateway.push("alice", timeout=5000)
        self.assertEqual(len(device.received()), 2)
        self.assertEqual(len(gateway.replies()), 2)
        node.clock.advance(1)
        self.assertEqual(len(device.received()), 1)
        self.assertEqual(len(gateway.replies()), 1)

    def test_push_delayed_past_its_deadline_times_out(self):
        config = load_config(None).replace(push=PushConfig(global_limit=1, global_duration=5000))
        node = make_node(config)
        device = Device(node, "dev-1")
        device.bind("alice")
        gateway = Gateway(node)
        gateway.push("alice", timeout=1000)
        gateway.push("alice", timeout=1000, flags=Flags.REPORT_TIMEOUTS)
        gateway.replies()
        node.clock.advance(5)
        [(_, _, error)] = gateway.replies()
        self.assertEqual(error.code, 4)
        self.assertEqual(len(device.received()), 1)


class BroadcastTests(SynchronousTestCase):
    def setUp(self):
        self.node = make_node()
        self.devices = {}
        for user, tags, os_name in [
            ("u1", "vip,beta", "android"),
            ("u2", "beta", "ios"),
            ("u3", None, "android"),
            ("u4", "vipx", "windows"),
        ]:
            device = Device(self.node, f"dev-{user}", os_name=os_name)
            device.bind(user, tags=tags)
            self.devices[user] = device
        self.gateway = Gateway(self.node)

    def reached(self):
        return sorted(u for u, d in self.devices.items() if d.received())

    def test_broadcast_all(self):
        self.gateway.push(None, client_type=0, timeout=0, flags=Flags.AUTO_ACK)
        self.assertEqual(self.reached(), ["u1", "u2", "u3", "u4"])
        [(_, kind, ok)] = self.gateway.replies()
        self.assertEqual((kind, json.loads(ok.data)["count"]), ("ok", 4))

    def test_broadcast_drops_ack_bits(self):
        self.gateway.push(None, client_type=0, flags=Flags.AUTO_ACK)
        for device in self.devices.values():
            [(_, _, flags, _)] = device.received()
            self.assertEqual(flags & Flags.ACK_BITS, 0)

    def test_tags_substring_like_mpush(self):
        self.gateway.push(None, client_type=0, tags=("vip",))
        self.assertEqual(self.reached(), ["u1", "u4"])

    def test_tags_exact(self):
        config = load_config(None).replace(push=PushConfig(tag_match="exact"))
        self.node.config = config
        self.gateway.push(None, client_type=0, tags=("vip",))
        self.assertEqual(self.reached(), ["u1"])

    def test_condition(self):
        self.gateway.push(None, client_type=0, condition="osName == 'android' && tags != null")
        self.assertEqual(self.reached(), ["u1"])

    def test_bad_condition_is_a_clear_error(self):
        self.gateway.push(None, client_type=0, condition="require('fs')")
        [(_, kind, error)] = self.gateway.replies()
        self.assertEqual((kind, error.code), ("error", 2))
        self.assertIn("invalid condition", error.reason)
        self.assertEqual(self.reached(), [])

    def test_broadcast_flow_control_paces_and_caps(self):
        config = load_config(None).replace(
            push=PushConfig(broadcast_limit=2, broadcast_duration=1000, broadcast_max=3)
        )
        self.node.config = config
        self.gateway.push(None, client_type=0)
        self.assertEqual(len(self.reached()), 2)
        self.assertEqual(self.gateway.replies(), [])
        self.node.clock.advance(1)
        self.assertEqual(len(self.reached()), 1)
        [(_, _, ok)] = self.gateway.replies()
        self.assertEqual(json.loads(ok.data)["count"], 3)


class GatewayInputTests(SynchronousTestCase):
    def test_unsupported_command(self):
        node = make_node()
        gateway = Gateway(node)
        gateway.protocol.dataReceived(encode_packet(Packet(Command.BIND, 9)))
        [(session_id, kind, error)] = gateway.replies()
        self.assertEqual((session_id, error.cmd, error.code), (9, 5, 101))
        self.assertTrue(gateway.transport.disconnecting)

    def test_push_above_client_limit_accepted(self):
        node = make_node()
        device = Device(node, "dev-1")
        device.bind("alice")
        gateway = Gateway(node)
        gateway.push("alice", content=b"y" * 50000)
        [(_, _, _, body)] = device.received()
        self.assertEqual(len(body), 50000)

    def test_oversize_frame_closes(self):
        node = make_node()
        gateway = Gateway(node, max_packet_size=1000)
        gateway.push("alice", content=b"y" * 2000)
        self.assertTrue(gateway.transport.disconnected)

    def test_malformed_push(self):
        node = make_node()
        gateway = Gateway(node)
        gateway.protocol.dataReceived(encode_packet(Packet(Command.GATEWAY_PUSH, 5, 0, b"\x00\x05ab")))
        [(_, kind, error)] = gateway.replies()
        self.assertEqual((error.cmd, error.code), (16, 100))


class BroadcastTaskControlTests(SynchronousTestCase):
    """
    A broadcast with a task id follows C{mp:pt<taskId>} (here the in-memory
    form; tests.test_multi_node covers Redis).
    """

    def setUp(self):
        self.node = make_node()
        self.control = self.node.push_center.broadcast_control
        self.devices = []
        for i in range(5):
            device = Device(self.node, f"dev-{i}")
            device.bind(f"u{i}")
            self.devices.append(device)
        self.gateway = Gateway(self.node)

    def broadcast(self, task_id):
        message = GatewayPushMessage(None, 0, 0, b"news", task_id, None, None)
        self.gateway.protocol.dataReceived(
            encode_packet(make_raw_packet(Command.GATEWAY_PUSH, message, 1))
        )

    def reached(self):
        return sum(1 for d in self.devices if d.received())

    def test_task_rate_and_record(self):
        self.control.tasks["t1"]["q"] = "2"
        self.broadcast("t1")
        self.assertEqual(self.reached(), 2)
        self.node.clock.advance(1)
        self.assertEqual(self.reached(), 2)
        self.node.clock.advance(1)
        self.assertEqual(self.reached(), 1)
        self.assertEqual(self.control.tasks["t1"]["sc"], "5")
        self.assertEqual(sorted(self.control.users["t1"]), ["u0", "u1", "u2", "u3", "u4"])
        [(_, kind, ok)] = self.gateway.replies()
        self.assertEqual(json.loads(ok.data)["count"], 5)

    def test_cancelled_task(self):
        self.control.tasks["t2"].update(q="2", c="1")
        self.broadcast("t2")
        self.assertEqual(self.reached(), 0)
        [(_, kind, ok)] = self.gateway.replies()
        self.assertEqual(json.loads(ok.data)["count"], 0)

    def test_cancel_during_broadcast(self):
        self.control.tasks["t3"]["q"] = "2"
        self.broadcast("t3")
        self.assertEqual(self.reached(), 2)
        self.control.tasks["t3"]["c"] = "1"
        self.node.clock.advance(1)
        # The flag was read at the first pause: the window after it still ran.
        total = self.reached()
        self.node.clock.advance(5)
        total += self.reached()
        self.assertLess(total, 3)
        self.assertEqual(len(self.gateway.replies()), 1)


class AckSpoofingTests(SynchronousTestCase):
    def test_ack_from_another_connection_does_not_count(self):
        """
        Found by the fuzzer: any connection could ack any push by guessing
        the process-wide counter.  Only the connection the PUSH went to can.
        """
        node = make_node()
        device = Device(node, "dev-1", port=1)
        device.bind("alice")
        intruder = Device(node, "dev-2", port=2)
        gateway = Gateway(node)
        gateway.push("alice", flags=Flags.BIZ_ACK | Flags.REPORT_TIMEOUTS, timeout=1000)
        [(_, session_id, _, _)] = device.received()
        intruder.ack(session_id)
        self.assertEqual(gateway.replies(), [])
        device.ack(session_id)
        [(_, kind, _)] = gateway.replies()
        self.assertEqual(kind, "ok")


    def test_ack_from_another_connection_does_not_count_on_a_push_to_every_client_type(self):
        """
        The general push path (several connections: client type 0 to a user
        on a phone and a PC) binds each PUSH's ack to its connection too.
        """
        node = make_node()
        phone = Device(node, "phone", port=1)
        phone.bind("alice")
        laptop = Device(node, "laptop", os_name="windows", port=2)
        laptop.bind("alice")
        intruder = Device(node, "dev-3", port=3)
        intruder.bind("mallory")
        gateway = Gateway(node)
        gateway.push("alice", client_type=0, flags=Flags.BIZ_ACK | Flags.REPORT_TIMEOUTS, timeout=1000)
        [(_, phone_id, _, _)] = phone.received()
        [(_, laptop_id, _, _)] = laptop.received()
        intruder.ack(phone_id)
        intruder.ack(laptop_id)
        self.assertEqual(gateway.replies(), [])
        self.assertEqual(len(node.acks), 2)
        phone.ack(phone_id)
        laptop.ack(laptop_id)
        [(_, kind, _)] = gateway.replies()
        self.assertEqual(kind, "ok")
        self.assertEqual(len(node.acks), 0)


class PlaintextOnEncryptedSessionTests(SynchronousTestCase):
    """
    FAST_CONNECT carries the session id and device id in clear: whoever
    sees one can fast-connect as that device.  Without the session key, a
    body in clear must get it nowhere (MPush takes it as is).
    """

    def setUp(self):
        config = load_config(None)
        self.node = make_node(config.replace(proxy=ProxyConfig(enabled=True)))
        self.victim = Device(self.node, "dev-1", port=1)
        [ok] = self.victim.bind("alice")
        self.assertEqual(ok.cmd, Command.OK)

    def intruder(self):
        """
        A connection fast-connected with the victim's sniffed session.
        """
        protocol, transport = connect(self.node, port=2)
        sniffer = ScriptedDevice(device_id="dev-1")
        protocol.dataReceived(sniffer.fast_connect_bytes(self.victim.session_id))
        [reply] = sniffer.read(transport)
        self.assertEqual(reply.cmd, Command.FAST_CONNECT)
        return protocol, transport, sniffer

    def test_bodies_in_clear_are_refused_and_closed(self):
        messages = {
            Command.BIND: BindUserMessage("alice"),
            Command.UNBIND: BindUserMessage("alice"),
            Command.PUSH: PushMessage(b"as the victim"),
            Command.HTTP_PROXY: HttpRequestMessage(0, "http://127.0.0.1:1/", None, None),
        }
        for cmd, message in messages.items():
            protocol, transport, sniffer = self.intruder()
            protocol.dataReceived(encode_packet(make_raw_packet(cmd, message, 5)))
            [reply] = sniffer.read(transport)
            self.assertEqual(reply.cmd, Command.ERROR, cmd)
            error = ErrorMessage.decode(reply.body)
            self.assertEqual((reply.flags, error.cmd, error.code), (0, cmd, 100), cmd)
            self.assertTrue(transport.disconnecting, cmd)
        # The victim was neither kicked nor unbound.
        self.assertEqual(self.victim.received(), [])
        self.assertIs(self.node.router_center.local.lookup("alice", 1), self.victim.protocol)
        self.assertIs(self.victim.protocol.state, ConnectionState.BOUND)

    def test_encrypted_bodies_and_empty_ones_still_pass(self):
        protocol, transport, sniffer = self.intruder()
        protocol.dataReceived(encode_packet(Packet(Command.ACK, 9)))
        protocol.dataReceived(encode_packet(Packet(Command.PUSH, 10, Flags.AUTO_ACK)))
        [reply] = sniffer.read(transport)
        # No body, nothing to encrypt: a client push, acked.
        self.assertEqual((reply.cmd, reply.session_id), (Command.ACK, 10))
        protocol, transport, sniffer = self.intruder()
        bind = make_packet(Command.BIND, BindUserMessage("bob"), 11, cipher=self.victim.cipher)
        protocol.dataReceived(encode_packet(bind))
        [reply] = sniffer.read(transport)
        self.assertEqual(ok_of(reply), OkMessage(5, 0, "bind success"))


class GoneWhileWaitingTests(SynchronousTestCase):
    def test_bind_answered_after_the_device_left_logs_no_error(self):
        """
        Found by the fuzzer: a device that leaves while its BIND waits on
        Redis made the OK's failed write an unhandled error.
        """
        from twisted.internet import defer

        node = make_node()
        device = Device(node, "dev-1")
        remote = node.router_center.remote
        waiting = defer.Deferred()
        original = remote.register
        remote.register = lambda *args: waiting
        device.send(Command.BIND, BindUserMessage("alice"))
        device.protocol.connectionLost(None)
        waiting.callback(None)
        remote.register = original
        self.assertEqual(self.flushLoggedErrors(), [])
