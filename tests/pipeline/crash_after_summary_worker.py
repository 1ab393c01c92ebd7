"""A stand-in label worker for test_worker_exit.py. First argument: `after` writes its summary the way
the real worker does, then dies by SIGSEGV (a crash in Ray's or torch's teardown); `before` dies by
SIGSEGV with no summary; `exit1` exits with code 1 and no summary."""

import json
import os
import signal
import sys

if __name__ == "__main__":
    sys.stdin.read()
    how = sys.argv[1]
    result = sys.argv[sys.argv.index("--result") + 1]
    if how == "after":
        with open(result + ".tmp", "w") as fh:
            json.dump({"items": 3, "errors": 0}, fh)
        os.replace(result + ".tmp", result)
    if how in ("after", "before"):
        os.kill(os.getpid(), signal.SIGSEGV)
    sys.exit(1)
