"""`safeguard-flow`: label files, prepare the local model, manage the warehouse schema and policies."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Sequence


def _settings(args: argparse.Namespace):
    from safeguard_flow.settings import load_settings

    return load_settings(args.config)


def cmd_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling.files import VerdictWriter, read_items
    from safeguard_flow.labelling.loop import LabelStats, label_stream
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.console import summary

    settings = _settings(args)
    policies = load_policy_set(args.policies)
    if args.policy:
        unknown = set(args.policy) - {p.name for p in policies}
        if unknown:
            raise SystemExit(f"--policy: no policy named {', '.join(sorted(unknown))} in {args.policies}")
        policies = [p for p in policies if p.name in args.policy]
    items = list(read_items(args.input))
    if args.limit:
        items = items[: args.limit]
    stats = LabelStats()
    log_path = _log_file(settings, args.log_file)
    print(f"full log: {log_path}")
    with _output_to_log(log_path) as terminal:
        engine = build_engine(settings)
        try:
            with VerdictWriter(args.output) as writer, tqdm(total=len(items), unit="item", desc="labelling",
                                                            file=terminal) as bar:
                for verdicts in label_stream(engine, items, policies, chunk_size=args.chunk_size,
                                             max_content_chars=settings.model.max_content_chars, stats=stats,
                                             progress=bar.update):
                    writer.write(verdicts)
        finally:
            engine.close()
    print(summary(stats, engine.model_name))
    print(f"wrote {writer.count:,} verdicts for {len(items):,} items x {len(policies)} policies to {args.output}")
    return 0


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model

    settings = _settings(args)
    path = local_model.prepare(settings, key=args.name or args.key, force=args.force)
    print(path)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model, presets as model_presets

    settings = _settings(args)
    # What the engine will use and why (preset, setting or default, field by field), then the cache.
    in_force = model_presets.resolve(settings).as_dict()
    print(json.dumps({"in_force": in_force, "cache": local_model.info(settings)}, indent=2, default=str))
    return 0


def cmd_model_verify(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model

    problems = local_model.verify(_settings(args), key=args.key)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from safeguard_flow.warehouse import schema

    settings = _settings(args)
    schema.upgrade(settings)
    print(f"warehouse at revision {schema.current(settings)}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from safeguard_flow.warehouse import schema

    print(schema.current(_settings(args)) or "empty (run `safeguard-flow db upgrade`)")
    return 0


def cmd_policies_validate(args: argparse.Namespace) -> int:
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.policy_quality.lint import lint, tokenizer_for
    from safeguard_flow.console import table

    settings = _settings(args)
    policies = load_policy_set(args.directory or settings.policies_dir)
    try:
        tokenizer, count = tokenizer_for(settings)
        lengths = {r.policy: r for r in lint(policies, settings, count)}
    except (OSError, ImportError) as exc:  # no prepared model / no transformers: say so, still validate
        print(f"warning: token lengths not checked: {exc}", file=sys.stderr)
        tokenizer, lengths = "none", {}
    print(table(["policy", "format", "effort", "words", "tokens", "length", "sha256"],
                [[p.name, p.output_format.value, p.reasoning_effort.value, len(p.text.split()),
                  lengths[p.name].tokens if p.name in lengths else "n/a",
                  lengths[p.name].level if p.name in lengths else "n/a", p.sha256[:12]] for p in policies]))
    print(f"tokens: {tokenizer}, of the instruction the model gets (policy text and output format line)")
    for r in lengths.values():
        if r.level != "ok":
            print(f"{r.level}: {r.policy}: {r.message}", file=sys.stderr)
    return 1 if any(r.level == "error" for r in lengths.values()) else 0


def cmd_policies_publish(args: argparse.Namespace) -> int:
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.console import table
    from safeguard_flow.warehouse import policy_store, schema
    from safeguard_flow.warehouse.db import make_engine

    settings = _settings(args)
    policies = load_policy_set(args.directory or settings.policies_dir)
    schema.upgrade(settings)
    engine = make_engine(settings)
    try:
        results = policy_store.publish_policies(engine, settings, policies, author=args.author, shadow=args.shadow)
    finally:
        engine.dispose()

    def outcome(r) -> str:
        if r.shadow:
            return ("new version, " if r.created else "") + f"shadow (BI keeps v{r.previous_version})"
        if r.created:
            return "new version"
        return f"current again (was v{r.previous_version})" if r.changed else "unchanged"

    print(table(["policy", "version", "outcome"], [[r.policy.name, r.version, outcome(r)] for r in results]))
    if any((r.changed or r.shadow) and r.previous_version is not None for r in results):
        # The asset events that start safeguard_relabel come from the sync DAG, which announces every
        # change it has not announced yet (these included) at its next run. Both DAGs start unpaused;
        # a triggered run of a paused DAG stays queued, hence the unpause (a no-op when unpaused).
        print("changed versions reach Airflow with the next safeguard_policy_sync run (hourly), which starts "
              "safeguard_relabel for them. To relabel now:\n"
              "  airflow dags unpause safeguard_relabel && airflow dags unpause safeguard_policy_sync && "
              "airflow dags trigger safeguard_policy_sync")
    if any(r.created and r.previous_version is None for r in results):
        print("first versions label new content from the next nightly run; to label existing content, trigger "
              "safeguard_relabel with '{\"policy\": \"NAME\"}'")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from safeguard_flow.policy_quality.metrics import MODERATION_2022_KEYS, load_truth, plot_scores, score, score_table
    from safeguard_flow.domain.verdicts import Verdict

    keys = dict(MODERATION_2022_KEYS)
    for pair in args.truth_key or []:
        policy, sep, key = pair.partition("=")
        if not sep:
            raise ValueError(f"--truth-key: expected POLICY=COLUMN, got {pair!r}")
        keys[policy] = key
    truth = load_truth(args.truth, keys)
    fields = set(Verdict.__dataclass_fields__)
    with open(args.verdicts, encoding="utf-8") as fh:
        verdicts = [Verdict(**{k: v for k, v in json.loads(line).items() if k in fields}) for line in fh if line.strip()]
    scores = score(verdicts, truth)
    print(score_table(scores))
    if args.plot:
        print(f"plot: {plot_scores(scores, args.plot)}")
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from safeguard_flow import settings as settings_mod
    from safeguard_flow.redact import mask_url
    from safeguard_flow.console import table

    settings = _settings(args)
    if args.airflow_connection:
        settings = _with_warehouse_connection(settings, args.airflow_connection)
    rows = settings_mod.describe(settings)
    if args.json:
        print(json.dumps([{"setting": k, "value": v, "source": o} for k, v, o in rows], indent=2, default=str))
    else:
        print(table(["setting", "value", "source"], [[k, json.dumps(v) if not isinstance(v, str) else v, o]
                                                    for k, v, o in rows]))
        print(f"in force: home {settings.home_path}, warehouse {mask_url(settings.warehouse_url)}")
    in_use = {o.removeprefix("yaml ") for _, _, o in rows if o.startswith("yaml ")}
    local = Path("safeguard.yaml").resolve()
    if local.is_file() and str(local) not in in_use:
        print(f"note: {local} is not read (name it with --config or SAFEGUARD_CONFIG)", file=sys.stderr)
    return 0


def _with_warehouse_connection(settings, conn_id: str):
    """The settings as an Airflow task sees them: the warehouse connection's fields applied."""
    try:
        from safeguard_flow.airflow.warehouse_hook import SafeguardWarehouseHook
    except ImportError as exc:
        raise SystemExit(f"--airflow-connection needs Airflow (pip install 'safeguard-flow[airflow]'): {exc}") from None

    return SafeguardWarehouseHook(conn_id, settings=settings).settings


def _run_settings(args: argparse.Namespace):
    """The settings, with the sample's `posts` table as the source when none is configured."""
    from safeguard_flow.warehouse.sample_data import POSTS_SOURCE
    from safeguard_flow.settings import SourceSettings

    settings = _settings(args)
    if not settings.sources:
        print("no sources configured (setting `sources`): labelling the sample's `posts` table "
              "(as loaded by `safeguard-flow sample load`)", file=sys.stderr)
        settings = settings.model_copy(update={"sources": [SourceSettings(**POSTS_SOURCE)]})
    return settings


@contextlib.contextmanager
def _output_to_log(log_path):
    """Quiet by default: while the engine runs, this process's stdout and stderr descriptors (vLLM's
    logs, its engine-core process, C++ warnings) go to the log file; yields a stream to the terminal
    for the progress bar. Descriptors, not sys.stdout: vLLM's handlers and child processes write to
    the descriptors whatever sys.stdout is."""
    import os

    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    terminal = open(saved_err, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        yield terminal
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err, log_fd):
            os.close(fd)
        terminal.close()


def _log_file(settings, given: str | None):
    """Where the heavy logs (Ray, vLLM, GX) go; every record of this process goes there too."""
    import datetime as dt
    import logging
    from pathlib import Path

    path = Path(given) if given else settings.home_path / "logs" / f"run-{dt.datetime.now():%Y%m%dT%H%M%S}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    return path


def cmd_run(args: argparse.Namespace) -> int:
    """The pipeline without Airflow: extract -> label -> validate -> publish, same run ids and tables as the DAGs."""
    from safeguard_flow import pipeline
    from safeguard_flow.pipeline.expectations import QualityGateFailed
    from safeguard_flow.console import format_run
    from safeguard_flow.warehouse import schema
    from safeguard_flow.warehouse.db import make_engine

    if bool(args.interval) == bool(args.relabel):
        raise SystemExit("run: give either --interval START/END or --relabel POLICY")
    if args.interval and (args.since or args.limit or args.version):
        raise SystemExit("run: --since, --limit and --version go with --relabel")
    settings = _run_settings(args)
    log_path = _log_file(settings, args.log_file)
    print(f"full log: {log_path}")
    schema.upgrade(settings)
    engine = make_engine(settings)
    try:
        if args.interval:
            start_text, sep, end_text = args.interval.partition("/")
            if not sep:
                raise ValueError(f"--interval {args.interval!r}: expected START/END, e.g. 2026-11-20/2026-11-21")
            start, end = pipeline.day_interval(start_text, end_text)
            run = pipeline.start_interval_run(engine, settings, start, end, kind="nightly",
                                              params={"trigger": "cli"})
        else:
            since = pipeline.day_interval(args.since, "9999-12-31")[0] if args.since else None
            run = pipeline.start_relabel_run(engine, settings, args.relabel, args.version,
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
            outcome = pipeline.label(engine, settings, run.id, log_file=log_path, progress=True)
            if outcome.summary:
                print(f"labelled {outcome.summary.get('items', 0)} item(s): {outcome.summary.get('verdicts', 0)} "
                      f"verdict(s), {outcome.summary.get('errors', 0)} error(s) in {outcome.summary.get('wall_s', 0):.0f}s")
            report = pipeline.validate(engine, settings, run.id)
            print(report.summary)
            counts = pipeline.publish(engine, settings, run.id)
        except pipeline.LabelJobFailed as exc:
            print(f"label job failed: {exc}\nrerun the same command to resume (finished chunks are kept); "
                  f"full log: {log_path}", file=sys.stderr)
            return 1
        except QualityGateFailed as exc:
            print(f"{exc.report.summary}\nquarantined: nothing published; report: {exc.report.path}", file=sys.stderr)
            return 1
        print(f"published: {counts.get('inserted', 0)} new, {counts.get('updated', 0)} updated, "
              f"{counts.get('unchanged', 0)} unchanged")
        if args.verbose:
            from safeguard_flow.warehouse import runs

            print(format_run(runs.get_run(engine, settings, run.id)))
        return 0
    finally:
        engine.dispose()


def _count(value) -> str:
    return "0" if value is None else f"{value:,}"


def cmd_runs_list(args: argparse.Namespace) -> int:
    from safeguard_flow.console import runs_table
    from safeguard_flow.warehouse import runs
    from safeguard_flow.warehouse.db import make_engine

    settings = _settings(args)
    engine = make_engine(settings)
    try:
        found = runs.list_runs(engine, settings, limit=args.limit, kind=args.kind, status=args.status)
    finally:
        engine.dispose()
    print(runs_table(found) if found else "no runs")
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    from safeguard_flow.console import format_run
    from safeguard_flow.warehouse import runs
    from safeguard_flow.warehouse.db import make_engine

    settings = _settings(args)
    engine = make_engine(settings)
    try:
        run = runs.get_run(engine, settings, args.run_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(run.to_dict(), indent=2, default=str))
    else:
        print(format_run(run))
    return 0


def cmd_sample_load(args: argparse.Namespace) -> int:
    from safeguard_flow.redact import mask_url
    from safeguard_flow.warehouse.sample_data import SAMPLE, load_sample, read_sample
    from safeguard_flow.warehouse import schema
    from safeguard_flow.warehouse.db import make_engine

    settings = _settings(args)
    schema.upgrade(settings)
    engine = make_engine(settings)
    try:
        n = load_sample(engine, read_sample(args.path or SAMPLE))
    finally:
        engine.dispose()
    print(f"loaded {n} rows into table posts of {mask_url(settings.warehouse_url)}")
    return 0


def cmd_ray_start(args: argparse.Namespace) -> int:
    from safeguard_flow.raylib.cluster import local_head

    head = local_head.ensure_head(_settings(args))
    print(f"local Ray head running: dashboard {head.dashboard_url}, GCS {head.gcs_address}, pid {head.pid}, "
          f"log {head.log_file}")
    print(f"it listens on loopback only: a driver of your own needs {local_head.SINGLE_MACHINE_ENV}=0 "
          f"before `ray.init(address=\"{head.gcs_address}\")`")
    return 0


def cmd_ray_stop(args: argparse.Namespace) -> int:
    from safeguard_flow.raylib.cluster import local_head

    settings = _settings(args)
    # Only the head recorded under this home and port (the one we started): never `ray stop`,
    # which would end every Ray process on the machine.
    if local_head.stop_recorded_head(settings):
        print(f"stopped the local Ray head on port {settings.ray.local_port}")
    else:
        print(f"no local Ray head of ours is running on port {settings.ray.local_port} (home {settings.home_path})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from safeguard_flow.policy_quality.eval import run_eval
    from safeguard_flow.policy_quality.metrics import parse_label_map
    from safeguard_flow.console import table

    settings = _settings(args)
    result = run_eval(settings, args.policies, args.dataset, args.output, label_flags=parse_label_map(args.label),
                      limit=args.limit, id_column=args.id_column, text_column=args.text_column,
                      chunk_size=args.chunk_size)
    m = result.metrics
    print(table(["policy", "version", "tp", "fp", "fn", "tn", "errors", "skipped", "precision", "recall", "F1", "F1 95% CI"],
                [[name, m["policy_versions"][name]["version"] or "unpublished", p["tp"], p["fp"], p["fn"], p["tn"],
                  p["errors"], p["skipped"], p["precision"], p["recall"], p["f1"],
                  f"[{p['f1_ci'][0]:.2f}, {p['f1_ci'][1]:.2f}]"] for name, p in sorted(m["policies"].items())]))
    print(f"rows scored {m['rows_scored']:,}   multi-policy accuracy {m['multi_policy_accuracy']:.3f}   "
          f"model {m['model']} ({m['engine']})   {m['seconds']:.1f} s")
    print(f"eval {result.eval_id}: {result.output_dir / 'metrics.json'}, report {result.report}")
    return 0


def cmd_evals_list(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.warehouse import evals, schema
    from safeguard_flow.warehouse.db import make_engine

    settings = _settings(args)
    schema.upgrade(settings)
    engine = make_engine(settings)
    try:
        rows = evals.list_evals(engine, settings, limit=args.limit)
    finally:
        engine.dispose()
    out = []
    for e in rows:
        m = e["metrics"]
        for name, p in sorted(m["policies"].items()):
            ref = e["policy_refs"].get(name, {})
            out.append([e["id"], f"{e['created_at']:%Y-%m-%d %H:%M}", e["dataset"][-40:], e["model"][-30:], e["engine"],
                        name, ref.get("version") or "unpublished", e["rows_scored"], p["f1"], m["multi_policy_accuracy"]])
    print(table(["eval", "created", "dataset", "model", "engine", "policy", "version", "rows", "F1", "multi acc"], out)
          if out else "no evals yet (run `safeguard-flow eval`)")
    return 0


def _diff_and_gate(settings, args):
    from safeguard_flow.warehouse import schema
    from safeguard_flow.warehouse.db import make_engine

    schema.upgrade(settings)
    return make_engine(settings)


def cmd_policies_diff(args: argparse.Namespace) -> int:
    from safeguard_flow.policy_quality.eval_report import write_diff_report
    from safeguard_flow.console import table
    from safeguard_flow.policy_quality.version_diff import compare_versions

    settings = _settings(args)
    engine = _diff_and_gate(settings, args)
    try:
        d = compare_versions(engine, settings, args.policy, args.v_old, args.v_new, examples=args.examples)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps(d.to_dict(), indent=2, default=str))
        return 0
    f = d.flips
    print(f"{d.policy} v{d.old_version} -> v{d.new_version}: content both labelled {f.compared:,} "
          f"({f.both_labelled:,} without errors)")
    print(table(["0 -> 1", "1 -> 0", "flips", "flip rate", "error involved", "content edited"],
                [[f.to_positive, f.to_safe, f.flips, "n/a" if f.flip_rate is None else f"{f.flip_rate:.1%}",
                  f.with_error, f.content_edited]]))
    if d.evals:
        print("\nevaluated on the same dataset (McNemar's exact test on paired predictions):")
        print(table(["dataset", "F1 old", "F1 new", "change", "pairs", "only old right", "only new right", "p"],
                    [[e.dataset[-50:], e.old_f1, e.new_f1, f"{e.f1_change:+.3f}", e.test.pairs, e.test.old_only_correct,
                      e.test.new_only_correct, f"{e.test.p_value:.4f}"] for e in d.evals]))
    else:
        print("\nno dataset has evals of both versions (run `safeguard-flow eval` with each)")
    for e in d.examples:
        print(f"\n{e['source']}/{e['content_id']}: {e['old_label']} -> {e['new_label']}"
              + ("" if e["same_content"] else " (content edited)"))
        if e["old_rationale"] or e["new_rationale"]:
            print(f"  v{d.old_version}: {e['old_rationale'] or ''}\n  v{d.new_version}: {e['new_rationale'] or ''}")
    if args.html:
        print(f"\nreport: {write_diff_report(args.html, d)}")
    return 0


def cmd_policies_promote(args: argparse.Namespace) -> int:
    from safeguard_flow.policy_quality.promotion import PromotionRefused, promote

    settings = _settings(args)
    engine = _diff_and_gate(settings, args)
    try:
        outcome, gate = promote(engine, settings, args.policy, args.version, actor=args.actor or _actor(),
                                force=args.force, reason=args.reason)
    except PromotionRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        print(json.dumps(exc.gate.figures, indent=2, default=str), file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    print(f"{outcome}: {args.policy} v{args.version} is now the promoted version (was v{gate.from_version})")
    if gate.problems:
        print("gate problems overridden: " + "; ".join(gate.problems))
    print(json.dumps(gate.figures, indent=2, default=str))
    return 0


def cmd_policies_promotions(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.policy_quality.promotion import list_promotions

    settings = _settings(args)
    engine = _diff_and_gate(settings, args)
    try:
        rows = list_promotions(engine, settings, args.policy)
    finally:
        engine.dispose()
    print(table(["when", "policy", "from", "to", "outcome", "who", "F1 drop", "flip rate", "reason / problems"],
                [[f"{r['created_at']:%Y-%m-%d %H:%M:%S}", r["policy"], r["from_version"] or "", r["to_version"],
                  r["outcome"], r["actor"], _fmt_opt(r["figures"].get("f1_drop")), _fmt_opt(r["figures"].get("flip_rate")),
                  r["reason"] or "; ".join(r["problems"])] for r in rows]) if rows else "no promotions recorded")
    return 0


def _fmt_opt(value) -> str:
    return "" if value is None else f"{value:.3f}"


def _actor() -> str:
    from safeguard_flow.policy_quality.eval import _actor as actor

    return actor()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard-flow", description=__doc__)
    parser.add_argument("--config", help="settings YAML file (default: $SAFEGUARD_CONFIG; no file is read implicitly)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="label a JSONL/CSV file against a policy directory")
    p.add_argument("--policies", required=True, help="directory of policy .md files")
    p.add_argument("--input", required=True, help=".jsonl or .csv with id and text columns")
    p.add_argument("--output", required=True, help=".jsonl or .csv to write verdicts to")
    p.add_argument("--policy", action="append", help="only this policy (repeatable)")
    p.add_argument("--limit", type=int, help="label only the first N items")
    p.add_argument("--chunk-size", type=int, default=64, help="items per engine batch")
    p.add_argument("--log-file", help="where the vLLM logs go (default: <home>/logs/run-<time>.log)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("evaluate", help="score verdicts (from `label`) against labelled examples")
    p.add_argument("--verdicts", required=True, help="verdicts .jsonl written by `label`")
    p.add_argument("--truth", required=True, help=".jsonl with id and one 0/1 column per policy")
    p.add_argument("--truth-key", action="append", help="POLICY=COLUMN (default: the 2022 moderation set's keys)")
    p.add_argument("--plot", help="write a precision/recall/F1 chart (PNG) here")
    p.set_defaults(func=cmd_evaluate)

    model = sub.add_parser("model", help="the local model").add_subparsers(dest="model_command", required=True)
    p = model.add_parser("prepare", help="convert the packaged GGUF model into a cached HF folder, or build "
                                         "gpt-oss-tiny (random-weight gpt-oss) offline")
    p.add_argument("name", nargs="?", help="which local model (qwen2.5-0.5b-instruct, qwen2.5-1.5b-instruct, "
                                           "gpt-oss-tiny; default: settings model.name)")
    p.add_argument("--key", help="same as NAME")
    p.add_argument("--force", action="store_true", help="convert again even if a verified folder exists")
    p.set_defaults(func=cmd_model_prepare)
    p = model.add_parser("verify", help="re-hash the prepared model's files against its manifest")
    p.add_argument("--key", help="which known local model (default: settings model.name)")
    p.set_defaults(func=cmd_model_verify)
    model.add_parser("info", help="show the model settings in force (and which preset or setting gave each) "
                                  "and what is in the model cache").set_defaults(func=cmd_model_info)

    db = sub.add_parser("db", help="warehouse schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)

    pol = sub.add_parser("policies", help="policy files and versions").add_subparsers(dest="policies_command", required=True)
    p = pol.add_parser("validate", help="load and check a policy directory")
    p.add_argument("directory", nargs="?", help="default: settings policies_dir")
    p.set_defaults(func=cmd_policies_validate)
    p = pol.add_parser("publish", help="store changed policies as new immutable versions")
    p.add_argument("directory", nargs="?", help="default: settings policies_dir")
    p.add_argument("--author", default="cli")
    p.add_argument("--shadow", action="store_true",
                   help="store new texts as shadow versions: they label, BI keeps the promoted version")
    p.set_defaults(func=cmd_policies_publish)

    cfg = sub.add_parser("config", help="the settings in force").add_subparsers(dest="config_command", required=True)
    p = cfg.add_parser("show", help="every setting, its value (secrets masked) and where it came from")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--airflow-connection", metavar="CONN_ID", nargs="?", const="safeguard_warehouse_default",
                   help="also apply this Airflow warehouse connection, as tasks do (default id: %(const)s)")
    p.set_defaults(func=cmd_config_show)
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

    sm = sub.add_parser("sample", help="the demo sample").add_subparsers(dest="sample_command", required=True)
    p = sm.add_parser("load", help="(re)load the demo sample into the warehouse's `posts` table")
    p.add_argument("--path", help="a sample JSONL (default: the repo's data/ sample)")
    p.set_defaults(func=cmd_sample_load)
    ray = sub.add_parser("ray", help="the local Ray head (started by tasks when no cluster is configured)")
    ray = ray.add_subparsers(dest="ray_command", required=True)
    ray.add_parser("start", help="start the local Ray head (or show the running one)").set_defaults(func=cmd_ray_start)
    ray.add_parser("stop", help="stop the local Ray head this project started").set_defaults(func=cmd_ray_stop)

    p = pol.add_parser("diff", help="what a version changes: flips, examples, F1 change with McNemar's test")
    p.add_argument("policy")
    p.add_argument("v_old", type=int)
    p.add_argument("v_new", type=int)
    p.add_argument("--examples", type=int, default=5, help="flipped items to show per direction")
    p.add_argument("--html", help="also write the diff report (HTML) here")
    p.add_argument("--json", action="store_true", help="print the diff as JSON")
    p.set_defaults(func=cmd_policies_diff)
    p = pol.add_parser("promote", help="make a (shadow) version the promoted one, if the gate passes")
    p.add_argument("policy")
    p.add_argument("version", type=int)
    p.add_argument("--force", action="store_true", help="promote even though the gate fails (needs --reason)")
    p.add_argument("--reason", help="why (recorded; required with --force)")
    p.add_argument("--actor", help="who promotes (default: the login name)")
    p.set_defaults(func=cmd_policies_promote)
    p = pol.add_parser("promotions", help="the promotion log: promotions, refusals, forced promotions")
    p.add_argument("policy", nargs="?")
    p.set_defaults(func=cmd_policies_promotions)

    p = sub.add_parser("eval", help="label a labelled dataset and score it (metrics.json, report.html, eval table)")
    p.add_argument("--policies", required=True, help="directory of policy .md files")
    p.add_argument("--dataset", required=True, help=".jsonl/.csv file, or a table of the configured warehouse")
    p.add_argument("--label", action="append", metavar="POLICY=COLUMN",
                   help="gold 0/1 column of a policy (repeatable; default: settings evals.policies.*.label_column)")
    p.add_argument("--output", required=True, help="folder for verdicts.jsonl, metrics.json, report.html")
    p.add_argument("--limit", type=int, help="only the first N rows")
    p.add_argument("--id-column", default="id")
    p.add_argument("--text-column", default="text")
    p.add_argument("--chunk-size", type=int, default=64, help="rows per engine batch")
    p.set_defaults(func=cmd_eval)
    evals_cmd = sub.add_parser("evals", help="stored evals").add_subparsers(dest="evals_command", required=True)
    p = evals_cmd.add_parser("list", help="evals in the warehouse, newest first")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_evals_list)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safeguard_flow.domain.policies import PolicyError
    from safeguard_flow.settings import SettingsError
    from safeguard_flow.warehouse.errors import WarehouseError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PolicyError, SettingsError, FileNotFoundError, ValueError, WarehouseError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
