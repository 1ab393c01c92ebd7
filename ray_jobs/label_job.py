"""Ray job entrypoint kept for `ray job submit ... -- python ray_jobs/label_job.py --run-id R`.

The job lives in the package: `python -m safeguard_flow.raylib.batch.job label --run-id R` (what the
operator submits). This shim forwards its arguments there.
"""

from __future__ import annotations

import sys

from safeguard_flow.raylib.batch.job import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
