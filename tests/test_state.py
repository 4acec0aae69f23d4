"""
The device connection's state machine, its table of allowed commands, and
the dispatcher's one check of it: the answers a device gets for a command
in the wrong state, byte for byte, on both adapters.
"""

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from mpush.protocol.body import make_raw_packet
from mpush.protocol.messages import BindUserMessage
from mpush.protocol.packet import Command, Flags, Packet, encode_packet
from mpush.server.device.errors import ConnectionClosed, NotHandshaken
from mpush.server.device.interfaces import IDeviceConnection
from mpush.server.device.state import (
    ALLOWED,
    ConnectionState,
    ConnectionStateMachine,
    IllegalTransition,
)
from mpush.server.ws.websocket import WebSocketConnection, make_ws_dispatcher

from tests.server_support import ScriptedDevice, connect, error_of, make_node


class StateMachineTests(SynchronousTestCase):
    def test_a_whole_life(self):
        machine = ConnectionStateMachine()
        seen = [machine.state]
        machine.establish()
        seen.append(machine.state)
        machine.bind()
        seen.append(machine.state)
        machine.unbind()
        seen.append(machine.state)
        machine.bind()
        machine.establish()  # a new handshake on a bound connection
        seen.append(machine.state)
        self.assertTrue(machine.close())
        seen.append(machine.state)
        machine.lost()
        seen.append(machine.state)
        self.assertEqual(
            [state.value for state in seen],
            ["new", "handshaken", "bound", "handshaken", "handshaken", "closing", "closed"],
        )

    def test_allowed_and_open_follow_the_state(self):
        machine = ConnectionStateMachine()
        self.assertEqual((machine.allowed, machine.is_open), (ALLOWED[ConnectionState.NEW], True))
        machine.establish()
        self.assertIn(int(Command.BIND), machine.allowed)
        machine.close()
        self.assertEqual((machine.allowed, machine.is_open), (frozenset(), False))
        machine.lost()
        self.assertEqual((machine.allowed, machine.is_open), (frozenset(), False))

    def test_illegal_transitions_are_errors(self):
        new = ConnectionStateMachine()
        with self.assertRaises(IllegalTransition) as caught:
            new.bind()
        self.assertEqual(str(caught.exception), "a new connection cannot become bound")
        closing = ConnectionStateMachine()
        closing.close()
        self.assertRaises(IllegalTransition, closing.establish)
        self.assertRaises(IllegalTransition, closing.bind)
        closed = ConnectionStateMachine()
        closed.lost()
        self.assertRaises(IllegalTransition, closed.establish)
        self.assertEqual(closed.state, ConnectionState.CLOSED)

    def test_close_lost_and_unbind_are_idempotent(self):
        machine = ConnectionStateMachine()
        machine.unbind()
        self.assertIs(machine.state, ConnectionState.NEW)
        self.assertTrue(machine.close())
        self.assertFalse(machine.close())
        machine.lost()
        machine.lost()
        self.assertFalse(machine.close())
        self.assertIs(machine.state, ConnectionState.CLOSED)

    def test_a_session_is_needed_only_to_act_for_a_device(self):
        new = ALLOWED[ConnectionState.NEW]
        for cmd in (Command.HEARTBEAT, Command.HANDSHAKE, Command.FAST_CONNECT, Command.ACK):
            self.assertIn(int(cmd), new)
        for cmd in (Command.BIND, Command.UNBIND, Command.PUSH, Command.HTTP_PROXY):
            self.assertNotIn(int(cmd), new)
            self.assertIn(int(cmd), ALLOWED[ConnectionState.HANDSHAKEN])
            self.assertIn(int(cmd), ALLOWED[ConnectionState.BOUND])

    def test_refusals(self):
        machine = ConnectionStateMachine()
        refusal = machine.refusal(int(Command.PUSH))
        self.assertIsInstance(refusal, NotHandshaken)
        self.assertEqual(refusal.reason, "not handshake")
        machine.close()
        self.assertIsInstance(machine.refusal(int(Command.PUSH)), ConnectionClosed)


class FakeChannel:
    def __init__(self):
        self.transport = StringTransport()
        self.transport.registerProducer(object(), True)

    def send_text(self, payload):
        return True

    def sendClose(self, code, reason=None):
        pass

    def dropConnection(self, abort=False):
        pass


class DeviceConnectionInterfaceTests(SynchronousTestCase):
    def test_tcp_connection(self):
        protocol, _ = connect(make_node())
        self.assertTrue(verifyObject(IDeviceConnection, protocol))

    def test_websocket_connection(self):
        node = make_node()
        connection = WebSocketConnection(node, make_ws_dispatcher(node), FakeChannel())
        connection.opened()
        self.assertTrue(verifyObject(IDeviceConnection, connection))


class WrongStateTests(SynchronousTestCase):
    """
    What a device without a session gets, checked once by the dispatcher:
    the answers MPush gives, in MPush's order.
    """

    def setUp(self):
        self.node = make_node()
        self.protocol, self.transport = connect(self.node)

    def answer(self, packet):
        self.protocol.dataReceived(encode_packet(packet))
        [reply] = ScriptedDevice().read(self.transport)
        error = error_of(reply)
        return error.cmd, error.code, error.reason

    def test_bind_without_a_user_is_invalid_param_before_not_handshake(self):
        for cmd in (Command.BIND, Command.UNBIND):
            protocol, self.transport = connect(self.node)
            self.protocol = protocol
            answer = self.answer(make_raw_packet(cmd, BindUserMessage(None), 1))
            self.assertEqual(answer, (int(cmd), 0, "invalid param"))
            self.assertTrue(self.transport.disconnecting)
            self.assertIs(protocol.state, ConnectionState.CLOSING)

    def test_bind_with_a_user_is_not_handshake(self):
        answer = self.answer(make_raw_packet(Command.UNBIND, BindUserMessage("alice"), 1))
        self.assertEqual(answer, (int(Command.UNBIND), 0, "not handshake"))

    def test_unreadable_bind_is_a_dispatch_error(self):
        self.assertEqual(self.answer(Packet(Command.BIND, 1, body=b"\x00")), (5, 100, "handle message error"))

    def test_push_is_refused_before_its_body_is_read(self):
        """
        An encrypted client PUSH before any session is not RSA-decrypted
        (which would fail, ERROR 100, and cost the handshake budget): the
        state refuses it first.
        """
        budget = []
        self.protocol.allow_rsa = lambda length: budget.append(length) or True
        garbage = Packet(Command.PUSH, 3, flags=Flags.CRYPTO, body=b"\x01" * 128)
        self.assertEqual(self.answer(garbage), (int(Command.PUSH), 0, "not handshake"))
        self.assertEqual(budget, [])
        self.assertTrue(self.transport.disconnecting)

    def test_nothing_is_handled_once_closing(self):
        self.protocol.close()
        self.protocol.dataReceived(ScriptedDevice().handshake_bytes())
        self.assertEqual(self.transport.value(), b"")
        self.assertIs(self.protocol.state, ConnectionState.CLOSING)
