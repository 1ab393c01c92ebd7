"""The label step's worker process (started by pipeline/label.py, not a user command).

It reads the settings as JSON on stdin, labels the run's pending chunks (the Ray label job's
run_label_job, on a local or configured Ray) and writes the job summary as JSON to --result. Its output is the heavy
part (Ray, vLLM): the parent sends it to a log file. If it dies, the parent marks the run failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--result", required=True, help="where to write the job summary (JSON)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from safeguard_flow.raylib.batch.runner import run_label_job
    from safeguard_flow.settings import Settings

    from safeguard_flow.pipeline.run_rules import Terminated

    settings = Settings.model_validate_json(sys.stdin.read())
    try:
        summary = run_label_job(settings, args.run_id)  # marks the run failed if it raises (SIGTERM too)
    except Terminated as exc:
        print(f"label job: {exc}; the run is marked failed, finished chunks are kept", file=sys.stderr)
        return 128 + 15
    except Exception as exc:
        logging.getLogger("safeguard_flow.pipeline.label_worker").exception("label job for run %s failed", args.run_id)
        print(f"label job: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(summary.format(), file=sys.stderr, flush=True)
    # Written whole, then renamed: the parent trusts a summary only when the job got this far.
    tmp = args.result + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(summary.to_dict(), fh)
    os.replace(tmp, args.result)
    return 0


if __name__ == "__main__":
    code = main()
    # The job's work is in the warehouse and its summary on disk: skip the interpreter's teardown, where
    # Ray's driver threads and vLLM's torch state now and then crash the process (SIGSEGV seen in CI
    # after a finished job). The parent reaps what this process started.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
