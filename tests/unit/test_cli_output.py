"""The label command is quiet: while the engine runs, the process's descriptors and its children's
(vLLM's logs, its engine-core process) go to the log file; the progress bar still reaches the terminal."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import os, subprocess, sys
from safeguard_flow.cli.common import output_to_log
print("before", flush=True)
with output_to_log(sys.argv[1]) as terminal:
    os.write(1, b"INFO engine says hi\\n")
    os.write(2, b"WARNING from C++\\n")
    print("a python print")
    subprocess.run([sys.executable, "-c", "print('(EngineCore pid=1) INFO child noise')"], check=True)
    print("labelling 3/3", file=terminal)
print("after")
"""


def test_engine_output_goes_to_the_log_and_the_bar_to_the_terminal(tmp_path):
    log = tmp_path / "label.log"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(log)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["before", "after"] and proc.stderr.strip() == "labelling 3/3"
    for noise in ("engine says hi", "from C++", "a python print", "child noise"):
        assert noise in log.read_text()
