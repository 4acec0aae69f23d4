"""
Whether debug lines are wanted at all.

A Twisted logger builds and publishes every event before any filter can
drop it: a few microseconds each, which per handshake, fast connect or bind
is a busy node's CPU.  Hot paths ask L{wanted} first.  The node's log level
gate (L{mpush.server.ops.log_gate.LogLevelGate}) keeps this in step with the
configured level; without a gate (tests, embedding) debug lines are wanted.
"""

_wanted = True


def wanted():
    """
    Whether a debug line would be kept.
    """
    return _wanted


def set_wanted(value):
    global _wanted
    _wanted = bool(value)
