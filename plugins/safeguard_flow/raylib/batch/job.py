"""Entrypoints of the Ray jobs safeguard-flow submits, run from the package itself:

    python -m safeguard_flow.raylib.batch.job label --run-id nightly-2025-01-01 [--replicas N] [--secrets URI]

The operator (RayLabelJobOperator) ships this package as `py_modules` and the settings as one JSON
document in the runtime_env (settings_env.SETTINGS_DOC_ENV), secrets apart (job_secrets). Run by
hand (`ray job submit -- python -m safeguard_flow.raylib.batch.job label --run-id R` on a cluster with the
package installed) without that document, settings come from --config / SAFEGUARD_CONFIG and
SAFEGUARD_* variables as for the `safeguard-flow` CLI. Submitting again with the same run id labels
only what is still pending. The last line printed is the job summary as JSON (read back by the
operator). Exit codes follow the CLI: 0 done, 1 the job failed, 2 bad settings or arguments.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

log = logging.getLogger(__name__)


def _settings(args: argparse.Namespace):
    """The submitter's settings document (secrets fetched from the cluster), else the usual sources."""
    from safeguard_flow.raylib.shipping.settings_env import SETTINGS_DOC_ENV, settings_from_document
    from safeguard_flow.settings import load_settings

    doc = os.environ.get(SETTINGS_DOC_ENV)
    if doc is None:
        return load_settings(args.config)
    secrets: dict[str, str] = {}
    if args.secrets:
        from safeguard_flow.raylib.shipping.job_secrets import fetch

        _connect()
        secrets = fetch(args.secrets)
    from safeguard_flow.raylib.shipping.job_secrets import apply_env

    return apply_env(settings_from_document(doc, secrets), secrets)


def _connect() -> None:
    """Join the job's own cluster (Ray sets RAY_ADDRESS for a job); run_label_job reuses the connection."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "auto", log_to_driver=True, configure_logging=False)


def cmd_label(args: argparse.Namespace) -> int:
    from safeguard_flow.raylib.batch.runner import LabelJobError, run_label_job

    settings = _settings(args)
    if args.replicas is not None:
        settings.ray.num_replicas = args.replicas
    import safeguard_flow

    # Which copy of the package runs (the runtime env's, on a cluster): says where the code came from.
    log.info("label job for run %s: safeguard_flow from %s", args.run_id, list(safeguard_flow.__path__))
    try:
        summary = run_label_job(settings, args.run_id)
    except LabelJobError as exc:
        print(f"label job: {exc}", file=sys.stderr)
        return 1
    print(summary.format())
    print(summary.marker_line(), flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m safeguard_flow.raylib.batch.job",
                                     description="Ray job entrypoints of safeguard-flow")
    parser.add_argument("--config", help="settings YAML file when no settings document came with the job "
                                         "(default: $SAFEGUARD_CONFIG or ./safeguard.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="label the pending chunks of one run and stage the verdicts")
    p.add_argument("--run-id", required=True, help="the run whose work list to label")
    p.add_argument("--replicas", type=int, default=None, help="override ray.num_replicas")
    p.add_argument("--secrets", default=None, help="where the submitter stored the job's credentials (gcs://...)")
    # Also accepted after the subcommand (ray_jobs/label_job.py passes its arguments through).
    p.add_argument("--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_label)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safeguard_flow.settings import SettingsError

    args = build_parser().parse_args(argv)
    # Plain lines (no colours): the job log ends up in an Airflow task log.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
