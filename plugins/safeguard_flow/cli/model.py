"""`model prepare|verify|info`: the local model."""

from __future__ import annotations

import argparse
import json
import sys

from safeguard_flow.cli.common import settings_from


def register(sub) -> None:
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


def cmd_model_prepare(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model

    settings = settings_from(args)
    path = local_model.prepare(settings, key=args.name or args.key, force=args.force)
    print(path)
    return 0


def cmd_model_verify(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model

    problems = local_model.verify(settings_from(args), key=args.key)
    for problem in problems:
        print(problem, file=sys.stderr)
    print("ok" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from safeguard_flow.models import local as local_model, presets as model_presets

    settings = settings_from(args)
    # What the engine will use and why (preset, setting or default, field by field), then the cache.
    in_force = model_presets.resolve(settings).as_dict()
    print(json.dumps({"in_force": in_force, "cache": local_model.info(settings)}, indent=2, default=str))
    return 0
