"""`esnet dft --nice`: under Linux autogroup scheduling, nice only counts inside a session, so a job
leading its own session lowers its session's autogroup too (the cause of issue 18's per-process
training levels: background GPAW workers in another session took a full share despite nice)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from esnet_tf.dft.runner import AUTOGROUP_SWITCH, lower_session_priority

needs_autogroup = pytest.mark.skipif(
    not AUTOGROUP_SWITCH.is_file() or AUTOGROUP_SWITCH.read_text().strip() != "1",
    reason="Linux autogroup scheduling is off or absent here (/proc/sys/kernel/sched_autogroup_enabled)")

PROBE = ("import sys; from pathlib import Path; from esnet_tf.dft.runner import lower_session_priority; "
         "import json; w = lower_session_priority(int(sys.argv[1])); "
         "print(json.dumps([w, Path('/proc/self/autogroup').read_text().strip()]))")


def _probe(nice: int, new_session: bool) -> tuple[str | None, str]:
    """The warning of `lower_session_priority(nice)` in a child process, and the child's autogroup line.

    The line is empty in the kernel's default autogroup (a process whose session was never
    `setsid`, as under some CI runners): /proc/PID/autogroup prints nothing for it."""
    out = subprocess.run([sys.executable, "-c", PROBE, str(nice)], capture_output=True, text=True, check=True,
                         start_new_session=new_session)
    warning, group = json.loads(out.stdout)
    return warning, group


@needs_autogroup
def test_session_leader_lowers_its_autogroup():
    warning, group = _probe(7, new_session=True)
    assert warning is None
    assert group.endswith("nice 7")


@needs_autogroup
def test_non_leader_is_told_why_nice_is_not_enough_and_leaves_the_session_alone():
    before = Path("/proc/self/autogroup").read_text().strip()
    warning, group = _probe(7, new_session=False)
    assert "setsid esnet dft" in warning and "autogroup" in warning
    assert Path("/proc/self/autogroup").read_text().strip() == before
    assert group == before


def test_nice_zero_does_nothing():
    assert lower_session_priority(0) is None
