"""
Heartbeat negotiation and idle detection, as pure arithmetic (spec 8.4, 10.1).

The connection server owns the timer; this module only decides, so the rules
can be tested without a reactor and shared by every transport.
"""

#: Slack MPush adds to the heartbeat before a read counts as late (ms).
READ_GRACE_MS = 1000


def negotiate_heartbeat(client_max_heartbeat, min_heartbeat, max_heartbeat):
    """
    The heartbeat (ms) a server grants a client: the client's preferred
    maximum clamped into the server's range, the minimum winning when the
    range is inverted.  The client's own minimum is ignored, as in MPush.
    """
    return max(min_heartbeat, min(client_max_heartbeat, max_heartbeat))


class IdleCheck:
    """
    The idle rule of one connection: at each check, a connection that has
    read nothing for longer than C{heartbeat + 1 s} collects a strike; a read
    in time clears them; more than C{max_timeouts} consecutive strikes close
    the connection (so with MPush's default of 2 it closes at the third).
    """

    __slots__ = ("max_timeouts", "timeouts")

    def __init__(self, max_timeouts):
        self.max_timeouts = max_timeouts
        self.timeouts = 0

    def expired(self, now_ms, last_read_ms, heartbeat_ms):
        """
        Record one check; return C{True} when the connection must close.
        """
        if now_ms - last_read_ms > heartbeat_ms + READ_GRACE_MS:
            self.timeouts += 1
        else:
            self.timeouts = 0
        return self.timeouts > self.max_timeouts
