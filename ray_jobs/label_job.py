"""Ray job entrypoint: label the pending chunks of one run and stage the verdicts.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python ray_jobs/label_job.py --run-id nightly-2025-01-01

Settings come from --config / SAFEGUARD_CONFIG and SAFEGUARD_* variables (the Airflow operator
passes them in the job's runtime_env). Submitting again with the same run id labels only what is
still pending. The last line printed is the job summary as JSON (read back by the operator).
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", required=True, help="the run whose work list to label")
    parser.add_argument("--config", default=None, help="settings YAML (default: $SAFEGUARD_CONFIG; no file is read implicitly)")
    parser.add_argument("--replicas", type=int, default=None, help="override ray.num_replicas")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from safeguard_flow.raylib import LabelJobError, run_label_job
    from safeguard_flow.settings import SettingsError, load_settings

    try:
        settings = load_settings(args.config)
        if args.replicas is not None:
            settings.ray.num_replicas = args.replicas
    except SettingsError as exc:
        print(f"label job: {exc}", file=sys.stderr)
        return 2
    try:
        summary = run_label_job(settings, args.run_id)
    except LabelJobError as exc:
        print(f"label job: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    print(summary.marker_line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
