"""`label` a file against a policy directory, without any warehouse, and `evaluate` its verdicts."""

from __future__ import annotations

import argparse
import sys
import time

from safeguard_flow.cli.common import log_file, output_to_log, settings_from
from safeguard_flow.domain.verdicts import INPUT_ERROR


def register(sub) -> None:
    p = sub.add_parser("label", help="label a JSONL/CSV file against a policy directory")
    p.add_argument("--policies", required=True, help="directory of policy .md files")
    p.add_argument("--input", required=True, help=".jsonl or .csv with id and text columns")
    p.add_argument("--output", required=True, help=".jsonl or .csv to write verdicts to")
    p.add_argument("--policy", action="append", help="only this policy (repeatable)")
    p.add_argument("--limit", type=int, help="label only the first N items")
    p.add_argument("--chunk-size", type=int, default=64, help="items per engine batch")
    p.add_argument("--log-file", help="where the vLLM logs go (default: <home>/logs/run-<time>.log)")
    p.add_argument("--cascade", action="store_true",
                   help="let the policies' trained cascades (in the configured warehouse) decide the clear items first")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("evaluate", help="score verdicts (from `label`) against labelled examples")
    p.add_argument("--verdicts", required=True, help="verdicts .jsonl written by `label`")
    p.add_argument("--truth", required=True, help=".jsonl with id and one 0/1 column per policy")
    p.add_argument("--truth-key", action="append", help="POLICY=COLUMN (default: the 2022 moderation set's keys)")
    p.add_argument("--plot", help="write a precision/recall/F1 chart (PNG) here")
    p.set_defaults(func=cmd_evaluate)


def cmd_label(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from safeguard_flow.console import summary
    from safeguard_flow.domain.policies import load_policy_set
    from safeguard_flow.engines import build_engine
    from safeguard_flow.labelling.chunk import EngineSlot, label_isolating
    from safeguard_flow.labelling.files import VerdictWriter, read_items
    from safeguard_flow.labelling.loop import LabelStats, chunked

    settings = settings_from(args)
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
    engine_errors = 0
    router = None
    if args.cascade:
        from safeguard_flow.labelling.cascade_route import FileRouter

        router = FileRouter(settings, policies)
    log_path = log_file(settings, args.log_file)
    print(f"full log: {log_path}")
    with output_to_log(log_path) as terminal:
        # An input that kills the engine gets it restarted and is isolated (an error verdict); the rest is labelled.
        slot = EngineSlot(lambda: build_engine(settings))
        model_name = slot.model_name
        try:
            with VerdictWriter(args.output) as writer, tqdm(total=len(items), unit="item", desc="labelling",
                                                            file=terminal) as bar:
                for chunk in chunked(items, args.chunk_size):
                    start = time.perf_counter()
                    def label(its, pols):
                        return label_isolating(slot, its, pols, max_content_chars=settings.model.max_content_chars,
                                               stats=stats)

                    verdicts = label(chunk, policies) if router is None else router.label(chunk, label)
                    stats.seconds += time.perf_counter() - start
                    engine_errors += sum(v.is_error and v.parse_status != INPUT_ERROR for v in verdicts)
                    writer.write(verdicts)
                    bar.update(len(chunk))
        finally:
            slot.close()
    print(summary(stats, model_name))
    if router is not None:
        print(router.summary())
    print(f"wrote {writer.count:,} verdicts for {len(items):,} items x {len(policies)} policies to {args.output}")
    if slot.restarts:
        print(f"the engine died {slot.restarts} time(s) and was restarted; the items that killed it have error verdicts")
    return error_bound_exit(engine_errors, writer.count, settings.quality.max_error_rate)


def error_bound_exit(errors: int, verdicts: int, max_error_rate: float) -> int:
    """0, or 3 (with the count on stderr) when errors exceed the quality gate's bound (quality.max_error_rate;
    input errors such as empty content are not the model's and are not counted)."""
    if not verdicts or errors / verdicts <= max_error_rate:
        return 0
    print(f"error: {errors:,} of {verdicts:,} verdicts are errors ({errors / verdicts:.1%}), over "
          f"quality.max_error_rate={max_error_rate:g}", file=sys.stderr)
    return 3


def cmd_evaluate(args: argparse.Namespace) -> int:
    from safeguard_flow.policy_quality.datasets import MODERATION_2022_KEYS, parse_label_map
    from safeguard_flow.policy_quality.eval import score_verdicts

    keys = {**MODERATION_2022_KEYS, **parse_label_map(args.truth_key, "--truth-key")}
    text, plot = score_verdicts(args.verdicts, args.truth, keys, args.plot)
    print(text)
    if plot:
        print(f"plot: {plot}")
    return 0
