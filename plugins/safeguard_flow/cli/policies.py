"""`policies validate|publish|diff|promote|promotions`: policy files, their versions and promotion."""

from __future__ import annotations

import argparse
import json
import sys

from safeguard_flow.cli.common import open_warehouse, settings_from


def register(sub) -> None:
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


def cmd_policies_validate(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.policy_quality.lint import lint, tokenizer_for

    settings = settings_from(args)
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
    from safeguard_flow.console import table
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.warehouse import policy_store

    settings = settings_from(args)
    policies = load_policy_set(args.directory or settings.policies_dir)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        results = policy_store.publish_policies(sql_engine, settings, policies, author=args.author, shadow=args.shadow)

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


def cmd_policies_diff(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.policy_quality.eval_report import write_diff_report
    from safeguard_flow.policy_quality.version_diff import compare_versions

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        d = compare_versions(sql_engine, settings, args.policy, args.v_old, args.v_new, examples=args.examples)
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
    from safeguard_flow.policy_quality.eval import current_actor
    from safeguard_flow.policy_quality.promotion_gate import PromotionRefused, promote

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        try:
            outcome, gate = promote(sql_engine, settings, args.policy, args.version, actor=args.actor or current_actor(),
                                    force=args.force, reason=args.reason)
        except PromotionRefused as exc:
            print(f"refused: {exc}", file=sys.stderr)
            print(json.dumps(exc.gate.figures, indent=2, default=str), file=sys.stderr)
            return 1
    print(f"{outcome}: {args.policy} v{args.version} is now the promoted version (was v{gate.from_version})")
    if gate.problems:
        print("gate problems overridden: " + "; ".join(gate.problems))
    print(json.dumps(gate.figures, indent=2, default=str))
    return 0


def cmd_policies_promotions(args: argparse.Namespace) -> int:
    from safeguard_flow.console import table
    from safeguard_flow.warehouse.promotions import list_promotions

    settings = settings_from(args)
    with open_warehouse(settings, upgrade=True) as sql_engine:
        rows = list_promotions(sql_engine, settings, args.policy)
    print(table(["when", "policy", "from", "to", "outcome", "who", "F1 drop", "flip rate", "reason / problems"],
                [[f"{r['created_at']:%Y-%m-%d %H:%M:%S}", r["policy"], r["from_version"] or "", r["to_version"],
                  r["outcome"], r["actor"], _fmt_opt(r["figures"].get("f1_drop")), _fmt_opt(r["figures"].get("flip_rate")),
                  r["reason"] or "; ".join(r["problems"])] for r in rows]) if rows else "no promotions recorded")
    return 0


def _fmt_opt(value) -> str:
    return "" if value is None else f"{value:.3f}"
