"""
The device edge: one long connection per device.

The TCP protocol and its factory frame packets; each connection's life is a
state machine (state.py) whose table of allowed commands the dispatcher
checks once, before the connection reads the body; the dispatcher then
routes the message by command code to one handler each (handshake, fast
connect, heartbeat, bind, acks, client pushes).  Handlers see a device only
as an IDeviceConnection (interfaces.py), so the WebSocket listener (ws/)
uses the same ones.  The limits, deadlines and flow control keep one node's
devices from starving each other.
"""
