"""
The device edge: one long connection per device.

The TCP protocol and its factory frame packets, the dispatcher routes them by
command code to one handler each (handshake, fast connect, heartbeat, bind,
acks, client pushes), and the limits, deadlines and flow control keep one
node's devices from starving each other.
"""
