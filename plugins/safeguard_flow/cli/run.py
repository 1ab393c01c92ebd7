"""The pipeline without Airflow: `sample load`, `run`, `runs list|show`."""

from __future__ import annotations

import argparse
import json
import sys

from safeguard_flow.cli.common import log_file, open_warehouse, settings_from


def register(sub) -> None:
    sm = sub.add_parser("sample", help="the demo sample").add_subparsers(dest="sample_command", required=True)
    p = sm.add_parser("load", help="(re)load the demo sample into the warehouse's `posts` table")
    p.add_argument("--path", help="a sample JSONL (default: the repo's data/ sample)")
    p.set_defaults(func=cmd_sample_load)

    p = sub.add_parser("run", help="run the pipeline without Airflow: extract, label, validate, publish")
    p.add_argument("--interval", metavar="START/END", help="one data interval, ISO dates (UTC), e.g. 2026-11-20/2026-11-21")
    p.add_argument("--relabel", metavar="POLICY", help="relabel the content in scope with this policy")
    p.add_argument("--version", type=int, help="with --relabel: the policy version (default: the active one)")
    p.add_argument("--since", metavar="DATE", help="with --relabel: only content updated since this date")
    p.add_argument("--limit", type=int, help="with --relabel: at most this many items")
    p.add_argument("--log-file", help="where the Ray/vLLM logs go (default: <home>/logs/run-<time>.log)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the run's record at the end")
    p.set_defaults(func=cmd_run)

    rs = sub.add_parser("runs", help="labelling runs").add_subparsers(dest="runs_command", required=True)
    p = rs.add_parser("list", help="recent runs, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--kind", choices=["nightly", "backfill", "relabel", "manual", "eval"])
    p.add_argument("--status", help="created, extracting, extracted, labelling, labelled, validated, quarantined, "
                                    "published or failed")
    p.set_defaults(func=cmd_runs_list)
    p = rs.add_parser("show", help="one run: counts, timings, tokens, validation")
    p.add_argument("run_id")
    p.add_argument("--json", action="store_true", help="the whole record as JSON")
    p.set_defaults(func=cmd_runs_show)


def cmd_sample_load(args: argparse.Namespace) -> int:
    from safeguard_flow.redact import mask_url
    from safeguard_flow.warehouse.sample_data import SAMPLE, load_sample, read_sample

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        n = load_sample(sql_engine, read_sample(args.path or SAMPLE))
    print(f"loaded {n} rows into table posts of {mask_url(settings.warehouse_url)}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The pipeline without Airflow: extract -> label -> validate -> publish, same run ids and tables as the DAGs."""
    from safeguard_flow import pipeline
    from safeguard_flow.console import format_run
    from safeguard_flow.pipeline.expectations import QualityGateFailed

    if bool(args.interval) == bool(args.relabel):
        raise SystemExit("run: give either --interval START/END or --relabel POLICY")
    if args.interval and (args.since or args.limit or args.version):
        raise SystemExit("run: --since, --limit and --version go with --relabel")
    settings = _run_settings(args)
    log_path = log_file(settings, args.log_file)
    print(f"full log: {log_path}")
    with open_warehouse(settings, upgrade=True) as sql_engine:
        if args.interval:
            start_text, sep, end_text = args.interval.partition("/")
            if not sep:
                raise ValueError(f"--interval {args.interval!r}: expected START/END, e.g. 2026-11-20/2026-11-21")
            start, end = pipeline.day_interval(start_text, end_text)
            run = pipeline.start_interval_run(sql_engine, settings, start, end, kind="nightly",
                                              params={"trigger": "cli"})
        else:
            since = pipeline.day_interval(args.since, "9999-12-31")[0] if args.since else None
            run = pipeline.start_relabel_run(sql_engine, settings, args.relabel, args.version,
                                             trigger_id=pipeline.cli_relabel_trigger(since, args.limit),
                                             since=since, limit=args.limit, params={"trigger": "cli"})
        if not pipeline.needs_work(run):
            why = "nothing new to label, closed as published" if run.empty else "already published"
            print(f"run {run.id}: {why}; labelled nothing ({_count(run.items)} item(s) extracted, "
                  f"{_count(run.skipped_unchanged)} unchanged skipped)")
            return 0
        print(f"run {run.id}: {run.items} item(s) in {run.chunks} chunk(s) to label against {run.label()} "
              f"({_count(run.skipped_unchanged)} unchanged skipped)")
        try:
            outcome = pipeline.label_run(sql_engine, settings, run.id, log_file=log_path, progress=True)
            if outcome.summary:
                print(f"labelled {outcome.summary.get('items', 0)} item(s): {outcome.summary.get('verdicts', 0)} "
                      f"verdict(s), {outcome.summary.get('errors', 0)} error(s) in {outcome.summary.get('wall_s', 0):.0f}s")
            report = pipeline.validate_run(sql_engine, settings, run.id)
            print(report.summary)
            counts = pipeline.publish_run(sql_engine, settings, run.id)
        except pipeline.LabelJobFailed as exc:
            print(f"label job failed: {exc}\nrerun the same command to resume (finished chunks are kept); "
                  f"full log: {log_path}", file=sys.stderr)
            return 1
        except QualityGateFailed as exc:
            print(f"{exc.report.summary}\nquarantined: nothing published; report: {exc.report.path}", file=sys.stderr)
            _errors_over_bound(sql_engine, settings, run.id, shadow_too=True)  # the counts
            return 1
        print(f"published: {counts.get('inserted', 0)} new, {counts.get('updated', 0)} updated, "
              f"{counts.get('unchanged', 0)} unchanged")
        if counts.get("quarantined"):
            print(f"warning: quarantined, not published: {', '.join(counts['quarantined'])} (`safeguard-flow runs "
                  f"show {run.id}` says why; rerun the same command after the fix to relabel only those)",
                  file=sys.stderr)
        if args.verbose:
            from safeguard_flow.warehouse import runs

            print(format_run(runs.get_run(sql_engine, settings, run.id)))
        return _errors_over_bound(sql_engine, settings, run.id)


def _errors_over_bound(sql_engine, settings, run_id: str, shadow_too: bool = False) -> int:
    """3, with the counts on stderr, when an active policy version's errors exceed the gate's bound
    (quality.max_error_rate): the run published what passed, but the command must not say all is well.
    A shadow version's errors are a warning (it never blocks the active ones), counted only if shadow_too."""
    from safeguard_flow.warehouse import run_gates

    bound = settings.quality.max_error_rate
    over = [g for g in run_gates.gates(sql_engine, settings, run_id)
            if (shadow_too or not g.shadow) and g.verdicts and g.errors / g.verdicts > bound]
    for g in over:
        print(f"error: {g.key}: {g.errors:,} of {g.verdicts:,} verdicts are errors ({g.errors / g.verdicts:.1%}), "
              f"over quality.max_error_rate={bound:g}", file=sys.stderr)
    return 3 if over else 0


def _run_settings(args: argparse.Namespace):
    """The settings, with the sample's `posts` table as the source when none is configured."""
    from safeguard_flow.settings import SourceSettings
    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE

    settings = settings_from(args)
    if not settings.sources:
        print("no sources configured (setting `sources`): labelling the sample's `posts` table "
              "(as loaded by `safeguard-flow sample load`)", file=sys.stderr)
        settings = settings.model_copy(update={"sources": [SourceSettings(**POSTS_SOURCE)]})
    return settings


def _count(value) -> str:
    return "0" if value is None else f"{value:,}"


def cmd_runs_list(args: argparse.Namespace) -> int:
    from safeguard_flow.console import runs_table
    from safeguard_flow.warehouse import runs

    settings = settings_from(args)
    with open_warehouse(settings) as sql_engine:
        found = runs.list_runs(sql_engine, settings, limit=args.limit, kind=args.kind, status=args.status)
    print(runs_table(found) if found else "no runs")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from safeguard_flow.console import format_run
    from safeguard_flow.warehouse import runs

    from safeguard_flow.console import format_gates
    from safeguard_flow.warehouse import run_gates

    settings = settings_from(args)
    with open_warehouse(settings) as sql_engine:
        run = runs.get_run(sql_engine, settings, args.run_id)
        gates = run_gates.gates(sql_engine, settings, args.run_id)
    if args.json:
        print(json.dumps({**run.to_dict(), "gates": [g.__dict__ for g in gates]}, indent=2, default=str))
    else:
        print(format_run(run))
        if gates:
            print(format_gates(gates))
    return 0
