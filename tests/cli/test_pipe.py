"""`icthp JOB | head`: a reader that goes away ends the job quietly (no BrokenPipeError traceback)."""

from __future__ import annotations

import subprocess
import sys


def test_a_closed_pipe_ends_quietly():
    p = subprocess.Popen([sys.executable, "-m", "icthp_cli", "metrics"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the job writes its table
    err = p.stderr.read().decode()
    assert p.wait() == 141 and "Traceback" not in err, err
