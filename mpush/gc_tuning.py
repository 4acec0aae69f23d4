"""
The cyclic garbage collector, tuned for a node that holds many objects.

A node keeps tens of thousands of connections, each a few dozen objects,
and a reconnect storm or a burst of Redis calls makes and keeps thousands
more at once.  With CPython's default thresholds (700, 10, 10) the collector
then runs full passes over all of them again and again: 10,000 concurrent
Redis commands cost 80-140 us of CPU each with the defaults and 27-35 us
with the collector off.  Reference cycles still happen (a Failure keeps its
traceback), so the collector stays on, but young collections run every
L{GEN0_THRESHOLD} allocations instead of 700, and what exists once the node
has started (modules, config, the reactor) is frozen out of every pass.
"""

import gc

#: Allocations between young-generation collections (CPython: 700).
GEN0_THRESHOLD = 50_000
#: Young collections per middle one, middle ones per full one (CPython: 10, 10).
GEN1_THRESHOLD = 20
GEN2_THRESHOLD = 100


def tune_gc():
    """
    Freeze what exists now and raise the thresholds; call once the node has
    started.  Returns the thresholds in force before.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, GEN1_THRESHOLD, GEN2_THRESHOLD)
    return before
