"""`safeguard-flow`: label files, prepare the local model, manage the warehouse schema and policies."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _settings(args: argparse.Namespace):
    from safeguard_flow.settings import load_settings

    return load_settings(args.config)


def cmd_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from safeguard_flow.engines import build_engine
    from safeguard_flow.io_files import VerdictWriter, read_items
    from safeguard_flow.labelling import LabelStats, label_stream
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.report import summary

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
    engine = build_engine(settings)
    try:
        with VerdictWriter(args.output) as writer, tqdm(total=len(items), unit="item", desc="labelling") as bar:
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
    from safeguard_flow import local_model

    path = local_model.prepare(_settings(args), key=args.key, force=args.force)
    print(path)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from safeguard_flow import local_model

    print(json.dumps(local_model.info(_settings(args)), indent=2, default=str))
    return 0


def cmd_model_verify(args: argparse.Namespace) -> int:
    from safeguard_flow import local_model

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
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.policy_lint import lint, tokenizer_for
    from safeguard_flow.report import table

    settings = _settings(args)
    policies = load_policy_set(args.directory)
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
    from safeguard_flow.policies import load_policy_set
    from safeguard_flow.report import table
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
    if any(r.changed or r.shadow for r in results):
        # The asset events that start safeguard_relabel come from the sync DAG, which announces
        # every version it has not announced yet (including these) at its next run.
        print("changed versions are announced to Airflow by the next safeguard_policy_sync run (hourly); "
              "to relabel now: airflow dags trigger safeguard_policy_sync")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from safeguard_flow.evaluation import MODERATION_2022_KEYS, load_truth, plot_scores, score, score_table
    from safeguard_flow.verdicts import Verdict

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


def cmd_eval(args: argparse.Namespace) -> int:
    from safeguard_flow.eval_runner import run_eval
    from safeguard_flow.evaluation import parse_label_map
    from safeguard_flow.report import table

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
    from safeguard_flow.report import table
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
    from safeguard_flow.eval_report import write_diff_report
    from safeguard_flow.report import table
    from safeguard_flow.warehouse.version_diff import compare_versions

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
    from safeguard_flow.warehouse.promotion import PromotionRefused, promote

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
    from safeguard_flow.report import table
    from safeguard_flow.warehouse.promotion import list_promotions

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
    from safeguard_flow.eval_runner import _actor as actor

    return actor()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safeguard-flow", description=__doc__)
    parser.add_argument("--config", help="settings YAML file (default: $SAFEGUARD_CONFIG or ./safeguard.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("label", help="label a JSONL/CSV file against a policy directory")
    p.add_argument("--policies", required=True, help="directory of policy .md files")
    p.add_argument("--input", required=True, help=".jsonl or .csv with id and text columns")
    p.add_argument("--output", required=True, help=".jsonl or .csv to write verdicts to")
    p.add_argument("--policy", action="append", help="only this policy (repeatable)")
    p.add_argument("--limit", type=int, help="label only the first N items")
    p.add_argument("--chunk-size", type=int, default=64, help="items per engine batch")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("evaluate", help="score verdicts (from `label`) against labelled examples")
    p.add_argument("--verdicts", required=True, help="verdicts .jsonl written by `label`")
    p.add_argument("--truth", required=True, help=".jsonl with id and one 0/1 column per policy")
    p.add_argument("--truth-key", action="append", help="POLICY=COLUMN (default: the 2022 moderation set's keys)")
    p.add_argument("--plot", help="write a precision/recall/F1 chart (PNG) here")
    p.set_defaults(func=cmd_evaluate)

    model = sub.add_parser("model", help="the local model").add_subparsers(dest="model_command", required=True)
    p = model.add_parser("prepare", help="convert the packaged GGUF model into a cached HF folder")
    p.add_argument("--key", help="which known local model (default: settings model.name)")
    p.add_argument("--force", action="store_true", help="convert again even if a verified folder exists")
    p.set_defaults(func=cmd_model_prepare)
    p = model.add_parser("verify", help="re-hash the prepared model's files against its manifest")
    p.add_argument("--key", help="which known local model (default: settings model.name)")
    p.set_defaults(func=cmd_model_verify)
    model.add_parser("info", help="show what is in the model cache").set_defaults(func=cmd_model_info)

    db = sub.add_parser("db", help="warehouse schema").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    db.add_parser("current", help="show the schema revision").set_defaults(func=cmd_db_current)

    pol = sub.add_parser("policies", help="policy files and versions").add_subparsers(dest="policies_command", required=True)
    p = pol.add_parser("validate", help="load and check a policy directory")
    p.add_argument("directory")
    p.set_defaults(func=cmd_policies_validate)
    p = pol.add_parser("publish", help="store changed policies as new immutable versions")
    p.add_argument("directory", nargs="?", help="default: settings policies_dir")
    p.add_argument("--author", default="cli")
    p.add_argument("--shadow", action="store_true",
                   help="store new texts as shadow versions: they label, BI keeps the promoted version")
    p.set_defaults(func=cmd_policies_publish)
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
    from safeguard_flow.policies import PolicyError
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
