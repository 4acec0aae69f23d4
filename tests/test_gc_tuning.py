"""
L{mpush.gc_tuning}: a node raises the collector's thresholds and freezes
what exists at start.
"""

import gc

from twisted.trial.unittest import SynchronousTestCase

from mpush import gc_tuning


class TuneGcTests(SynchronousTestCase):
    def setUp(self):
        before = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *before)
        self.addCleanup(gc.unfreeze)

    def test_thresholds_raised_and_startup_objects_frozen(self):
        before = gc.get_threshold()
        self.assertEqual(gc_tuning.tune_gc(), before)
        self.assertEqual(
            gc.get_threshold(),
            (gc_tuning.GEN0_THRESHOLD, gc_tuning.GEN1_THRESHOLD, gc_tuning.GEN2_THRESHOLD),
        )
        self.assertGreater(gc.get_freeze_count(), 0)
        self.assertTrue(gc.isenabled())  # cycles are still collected

    def test_cycles_made_later_are_still_collected(self):
        gc_tuning.tune_gc()

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        self.assertGreaterEqual(gc.collect(), 2)
