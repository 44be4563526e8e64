"""A pytest plugin (tests/conftest.py loads it): a run that skipped tests says so at its end, loudly, with each
reason, so that a machine without Redis or Chromium never passes for a full run."""

from __future__ import annotations

from collections import Counter


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    reasons = Counter(str(report.longrepr[2]).removeprefix("Skipped: ") if isinstance(report.longrepr, tuple)
                      else str(report.longrepr) for report in skipped)
    terminalreporter.section(f"{len(skipped)} TESTS DID NOT RUN", sep="!", red=True, bold=True)
    for reason, count in reasons.most_common():
        terminalreporter.write_line(f"{count:>4} skipped: {reason}", red=True, bold=True)
    terminalreporter.write_line("Install what they need for a full run (README, Quickstart: redis-server and "
                                "Debian's chromium); .ci/run installs both.", red=True)
