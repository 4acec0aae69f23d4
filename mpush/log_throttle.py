"""
At most one log line per kind of event per interval.

An outage or an overload repeats the same failure for every device at
once: a line each would flood the log and cost the CPU the node is short
of.  The first of a kind is logged; the ones inside the interval after it
are counted, and the next line that gets through says how many were not
written.
"""


class LogThrottle:
    """
    Decides, per key, whether a line may be written now.

    @param clock: an C{IReactorTime}.
    @param interval: seconds between two lines of one key.
    """

    __slots__ = ("clock", "interval", "_last", "_held")

    def __init__(self, clock, interval=1.0):
        self.clock = clock
        self.interval = interval
        self._last = {}
        self._held = {}

    def admit(self, key):
        """
        @return: C{None} if the line of C{key} must not be written now (it
            is counted), else how many lines of C{key} were held back since
            the last one written.
        """
        now = self.clock.seconds()
        last = self._last.get(key)
        if last is not None and 0 <= now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)

    def warn(self, log, key, format, **fields):
        """
        C{log.warn(format, **fields)} unless a line of C{key} was written
        less than C{interval} ago; the next line written says how many were
        held back.
        """
        held = self.admit(key)
        if held is None:
            return
        if held:
            log.warn(format + " ({held} more like it since the last such line)", held=held, **fields)
        else:
            log.warn(format, **fields)
