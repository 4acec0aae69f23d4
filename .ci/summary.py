"""
The closing lines CI reads, from a trial run's output: the counts, then every
test that did not simply pass or fail, by name and reason, so a skip or a
todo is never silent.

trial's last line is "PASSED (...)" or "FAILED (...)" with counts such as
successes, failures, errors, skips, expectedFailures and unexpectedSuccesses;
its report has one section per such test ("[SKIPPED]", "[TODO]",
"[SUCCESS!?!]", ...), the reason first and the test's name last.

Usage: python3 .ci/summary.py TRIAL_OUTPUT_FILE
Exit status: 1 when a test failed, erred or unexpectedly succeeded (a stale
todo: remove it), or when no summary line was found; 0 otherwise.
"""

import re
import sys

SEPARATOR = re.compile(r"^={70,}$", re.M)
SECTIONS = {
    "[SKIPPED]": "skipped",
    "[TODO]": "expected failure",
    "[SUCCESS!?!]": "unexpected success",
}
TEST_NAME = re.compile(r"^[\w.]+\.test\w*$")


def listed(text):
    """(kind, test name, reason) of every skip, todo and unexpected success."""
    found = []
    for block in SEPARATOR.split(text):
        lines = [line for line in block.strip().splitlines() if line.strip()]
        if not lines or lines[0] not in SECTIONS:
            continue
        kind = SECTIONS[lines[0]]
        reason = lines[1] if len(lines) > 1 else ""
        match = re.match(r"Reason: (.*)$", reason)
        if match:
            reason = match.group(1).strip("'\"")
        names = [line for line in lines[1:] if TEST_NAME.match(line)]
        for name in names:
            found.append((kind, name, reason))
    return found


def summarize(text):
    """The lines to print and the exit status."""
    summary = re.findall(r"^(PASSED|FAILED) \((.*)\)\s*$", text, re.M)
    if not summary:
        return ["tests: no trial summary found"], 1
    counts = {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", summary[-1][1])}
    failed = counts.get("failures", 0) + counts.get("errors", 0)
    lines = [
        f"tests: {counts.get('successes', 0)} passed, {failed} failed, "
        f"{counts.get('skips', 0)} skipped, {counts.get('expectedFailures', 0)} expected failures, "
        f"{counts.get('unexpectedSuccesses', 0)} unexpected successes"
    ]
    lines += [f"{kind}: {name} ({reason})" for kind, name, reason in listed(text)]
    bad = failed + counts.get("unexpectedSuccesses", 0)
    return lines, 1 if bad or summary[-1][0] == "FAILED" else 0


def main(argv):
    with open(argv[1], errors="replace") as output:
        lines, status = summarize(output.read())
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
