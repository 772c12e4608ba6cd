"""Model artifacts on disk: `<dir>/manifest.json` plus the pipeline in skops format.

Loading never runs code from the file: skops refuses any type outside TRUSTED_TYPES, the
pipeline's sha256 must match the manifest, and the pipeline must reproduce the labels the
manifest recorded for its parity sample. Anything else refuses the whole artifact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import skops.io as sio
from pydantic import ValidationError
from sklearn.cluster import KMeans
from sklearn.pipeline import Pipeline

from app.scoring.manifest import Manifest

MANIFEST_FILE = "manifest.json"
DEFAULT_POINTER = "DEFAULT"

# The only non-builtin types an artifact may contain: what `training.fit.build_pipeline` makes.
TRUSTED_TYPES = [
    "numpy.log1p",
    "sklearn.cluster._kmeans.KMeans",
    "sklearn.compose._column_transformer.ColumnTransformer",
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._encoders.OneHotEncoder",
    "sklearn.preprocessing._function_transformer.FunctionTransformer",
]


class ArtifactError(Exception):
    """A model artifact that is missing, malformed, tampered with, or inconsistent."""


@dataclass(frozen=True)
class Artifact:
    source: str  # where it came from, for messages: its folder, or registry:<version>
    manifest: Manifest
    pipeline: Pipeline
    sha256: str
    blob: bytes = b""  # the skops file as written: what the model registry stores


def resolve_model_dir(path: Path) -> Path:
    """A model folder, or a folder of versions whose DEFAULT file names the one to serve."""
    if (path / MANIFEST_FILE).is_file():
        return path
    pointer = path / DEFAULT_POINTER
    if pointer.is_file():
        chosen = path / pointer.read_text().strip()
        if (chosen / MANIFEST_FILE).is_file():
            return chosen
        raise ArtifactError(f"{pointer} names {chosen.name!r}, which has no {MANIFEST_FILE}")
    raise ArtifactError(
        f"{path} has neither {MANIFEST_FILE} nor a {DEFAULT_POINTER} file naming a model"
    )


def write_artifact(pipeline: Pipeline, manifest: Manifest, out_dir: Path) -> Path:
    """Write `out_dir/<version>/` and return it; refuses to overwrite an existing version."""
    target = out_dir / manifest.version
    if target.exists():
        raise ArtifactError(f"{target} exists already: pass another --version or remove it")
    target.mkdir(parents=True)
    blob = sio.dumps(pipeline)
    (target / manifest.artifact_file).write_bytes(blob)
    final = manifest.model_copy(update={"artifact_sha256": hashlib.sha256(blob).hexdigest()})
    (target / MANIFEST_FILE).write_text(final.model_dump_json(indent=2) + "\n")
    return target


def load_artifact(path: Path) -> Artifact:
    """Load and verify a model folder (or a folder of versions with a DEFAULT file)."""
    folder = resolve_model_dir(path)
    try:
        manifest_text = (folder / MANIFEST_FILE).read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {folder / MANIFEST_FILE}: {exc}") from exc
    manifest = _parse_manifest(str(folder / MANIFEST_FILE), manifest_text)
    blob_path = folder / manifest.artifact_file
    if blob_path.parent != folder:
        raise ArtifactError(
            f"artifact_file {manifest.artifact_file!r} must name a file in {folder}"
        )
    try:
        blob = blob_path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {blob_path}: {exc}") from exc
    return verify_artifact(str(folder), manifest_text, blob)


def verify_artifact(source: str, manifest_data: bytes | dict[str, Any], blob: bytes) -> Artifact:
    """Check a manifest and its skops file wherever they were read from (a folder, the registry).

    Refuses, with the reason, a malformed manifest, a changed file (sha256), a type outside
    TRUSTED_TYPES, or a pipeline that does not match its manifest or reproduce its parity sample.
    """
    manifest = _parse_manifest(source, manifest_data)
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.artifact_sha256:
        raise ArtifactError(
            f"{source}: {manifest.artifact_file} has sha256 {digest}, but the manifest says "
            f"{manifest.artifact_sha256}: the artifact was changed after training; retrain or restore it"
        )
    try:
        untrusted = set(sio.get_untrusted_types(data=blob)) - set(TRUSTED_TYPES)
        if untrusted:
            raise ArtifactError(
                f"{source}: {manifest.artifact_file} contains types outside the trusted list: "
                f"{sorted(untrusted)}"
            )
        pipeline = sio.loads(blob, trusted=TRUSTED_TYPES)
    except ArtifactError:
        raise
    except Exception as exc:  # skops raises many types for a corrupt file; all mean "refuse"
        raise ArtifactError(
            f"{source}: {manifest.artifact_file} is not a loadable skops pipeline: {exc}"
        ) from exc

    _verify_pipeline(source, manifest, pipeline)
    return Artifact(source, manifest, pipeline, digest, blob)


def _parse_manifest(source: str, data: bytes | dict[str, Any]) -> Manifest:
    try:
        if isinstance(data, bytes):
            return Manifest.model_validate_json(data)
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ArtifactError(f"{source}: not a valid manifest: {exc}") from exc
    except ValueError as exc:  # not JSON at all
        raise ArtifactError(f"{source}: cannot read the manifest: {exc}") from exc


def _verify_pipeline(folder: str, manifest: Manifest, pipeline: object) -> None:
    if not isinstance(pipeline, Pipeline) or not isinstance(pipeline.steps[-1][1], KMeans):
        raise ArtifactError(f"{folder}: the artifact is not a Pipeline ending in KMeans")
    kmeans = pipeline.steps[-1][1]
    if kmeans.n_clusters != len(manifest.segments):
        raise ArtifactError(
            f"{folder}: the model has {kmeans.n_clusters} clusters, the manifest {len(manifest.segments)} segments"
        )
    expected = [f.name for f in manifest.features]
    seen = [str(n) for n in getattr(pipeline, "feature_names_in_", [])]
    if sorted(seen) != sorted(expected):
        raise ArtifactError(
            f"{folder}: the model was fitted on {seen}, the manifest declares {expected}"
        )
    sample = pd.DataFrame(manifest.parity_sample.rows, columns=seen)
    labels = pipeline.predict(sample)
    if not np.array_equal(labels, np.asarray(manifest.parity_sample.labels)):
        raise ArtifactError(f"{folder}: the model does not reproduce its parity sample's labels")
