"""
C{.ci/summary.py}, the closing lines of C{.ci/run}, on the output of a real
trial run: skips, todos and unexpected successes are counted and named, and
only failures, errors and unexpected successes fail CI.  And every todo in
the suite is scoped to the failure it expects.
"""

import os
import subprocess
import sys
import textwrap

from twisted.trial.unittest import TestCase

SUMMARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, ".ci", "summary.py")

SAMPLE = """
from twisted.trial.unittest import SkipTest, TestCase


class Sample(TestCase):
    def test_passes(self):
        pass

    def test_skips(self):
        raise SkipTest("no widget here")

    def test_known_bug(self):
        self.fail("still broken")

    test_known_bug.todo = "widget race"
"""

STALE_TODO = """

    def test_fixed_already(self):
        pass

    test_fixed_already.todo = "fixed long ago"
"""

FAILING = """

    def test_fails(self):
        self.fail("boom")
"""


class SummaryTests(TestCase):
    timeout = 60

    def summarize(self, source):
        """Run trial on a module of C{source}, then the summary on its output."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        with open(os.path.join(directory, "ci_sample.py"), "w") as module:
            module.write(textwrap.dedent(source))
        run = subprocess.run(
            [sys.executable, "-m", "twisted.trial", "ci_sample"],
            cwd=directory, env=dict(os.environ, PYTHONPATH=directory), capture_output=True, text=True,
        )
        log = os.path.join(directory, "trial.log")
        with open(log, "w") as output:
            output.write(run.stdout + run.stderr)
        summary = subprocess.run([sys.executable, SUMMARY, log], capture_output=True, text=True)
        return summary.stdout.splitlines(), summary.returncode

    def test_skips_and_todos_are_named(self):
        lines, status = self.summarize(SAMPLE)
        self.assertEqual(lines, [
            "tests: 1 passed, 0 failed, 1 skipped, 1 expected failures, 0 unexpected successes",
            "skipped: ci_sample.Sample.test_skips (no widget here)",
            "expected failure: ci_sample.Sample.test_known_bug (widget race)",
        ])
        self.assertEqual(status, 0)

    def test_unexpected_success_fails_ci(self):
        lines, status = self.summarize(SAMPLE + STALE_TODO)
        self.assertEqual(lines[0], "tests: 1 passed, 0 failed, 1 skipped, 1 expected failures, 1 unexpected successes")
        self.assertIn("unexpected success: ci_sample.Sample.test_fixed_already (fixed long ago)", lines)
        self.assertEqual(status, 1)

    def test_failure_fails_ci(self):
        lines, status = self.summarize(SAMPLE + FAILING)
        self.assertEqual(lines[0], "tests: 1 passed, 1 failed, 1 skipped, 1 expected failures, 0 unexpected successes")
        self.assertEqual(status, 1)

    def test_no_summary_fails_ci(self):
        log = os.path.abspath(self.mktemp())
        with open(log, "w") as output:
            output.write("make: *** [Makefile:27: test] Error 1\n")
        summary = subprocess.run([sys.executable, SUMMARY, log], capture_output=True, text=True)
        self.assertEqual((summary.stdout, summary.returncode), ("tests: no trial summary found\n", 1))


def unscoped_todos(package="tests"):
    """
    The C{todo}s in C{package}'s test cases that are not scoped to a known
    failure: trial counts any failure at all as expected under a bare
    reason string, hiding new bugs behind an old one.
    """
    import importlib
    import inspect
    import pkgutil

    from twisted.trial.unittest import SynchronousTestCase

    found = []
    root = importlib.import_module(package)
    for info in pkgutil.iter_modules(root.__path__, package + "."):
        module = importlib.import_module(info.name)
        for name, case in vars(module).items():
            if not (inspect.isclass(case) and issubclass(case, SynchronousTestCase)) or case.__module__ != info.name:
                continue
            owners = [(f"{info.name}.{name}", case)] + [
                (f"{info.name}.{name}.{attr}", method)
                for attr, method in vars(case).items() if attr.startswith("test") and callable(method)
            ]
            for where, owner in owners:
                todo = vars(owner).get("todo") if owner is case else getattr(owner, "todo", None)
                if todo is None:
                    continue
                scoped = isinstance(todo, tuple) and len(todo) == 2 and (
                    (inspect.isclass(todo[0]) and issubclass(todo[0], BaseException))
                    or (isinstance(todo[0], tuple) and all(issubclass(t, BaseException) for t in todo[0]))
                )
                if not scoped:
                    found.append(where)
    return found


class ScopedTodoTests(TestCase):
    def test_every_todo_names_the_failure_it_expects(self):
        """
        A todo is C{(ExpectedError, "reason")}, never a bare string.
        """
        self.assertEqual(unscoped_todos(), [])
