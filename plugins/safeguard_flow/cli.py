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

    settings = _settings(args)
    path = local_model.prepare(settings, key=args.name or args.key, force=args.force)
    print(path)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from safeguard_flow import local_model, model_presets

    settings = _settings(args)
    # What the engine will use and why (preset, setting or default, field by field), then the cache.
    in_force = model_presets.resolve(settings).as_dict()
    print(json.dumps({"in_force": in_force, "cache": local_model.info(settings)}, indent=2, default=str))
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
    from safeguard_flow.report import table

    policies = load_policy_set(args.directory)
    print(table(["policy", "format", "effort", "words", "sha256"],
                [[p.name, p.output_format.value, p.reasoning_effort.value, len(p.text.split()), p.sha256[:12]] for p in policies]))
    return 0


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
        results = policy_store.publish_policies(engine, settings, policies, author=args.author)
    finally:
        engine.dispose()

    def outcome(r) -> str:
        if r.created:
            return "new version"
        return f"current again (was v{r.previous_version})" if r.changed else "unchanged"

    print(table(["policy", "version", "outcome"], [[r.policy.name, r.version, outcome(r)] for r in results]))
    if any(r.changed for r in results):
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
    p.add_argument("directory")
    p.set_defaults(func=cmd_policies_validate)
    p = pol.add_parser("publish", help="store changed policies as new immutable versions")
    p.add_argument("directory", nargs="?", help="default: settings policies_dir")
    p.add_argument("--author", default="cli")
    p.set_defaults(func=cmd_policies_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safeguard_flow.policies import PolicyError
    from safeguard_flow.settings import SettingsError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (PolicyError, SettingsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
