"""The listener's limits that need no server: the open-file limit and the cap."""

from __future__ import annotations

import resource
import subprocess
import sys

from moorage.server import connection_cap


def test_the_soft_open_file_limit_is_raised_to_the_hard_one() -> None:
    """A process started with a low soft limit (1024 on many hosts) ends with soft == hard."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    code = (
        "import resource; from moorage.server import raise_nofile_limit; raise_nofile_limit(); "
        "print(*resource.getrlimit(resource.RLIMIT_NOFILE))"
    )

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    done = subprocess.run(
        [sys.executable, "-c", code], preexec_fn=lower, capture_output=True, text=True, timeout=60, check=True
    )
    soft_after, hard_after = (int(x) for x in done.stdout.split())
    assert hard_after == hard
    assert soft_after == hard


def test_the_connection_cap_leaves_three_quarters_of_the_descriptors_to_the_rest() -> None:
    assert connection_cap(1024, 1_048_576) == 1024
    assert connection_cap(1024, 1024) == 256
    assert connection_cap(10, 1) == 1
