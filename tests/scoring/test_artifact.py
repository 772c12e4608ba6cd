"""Model artifacts: the committed default model loads; anything malformed or tampered is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LinearRegression

from app.scoring.artifact import ArtifactError, load_artifact
from app.scoring.model import SegmentModel
from app.training.naming import RFM_ARCHETYPES
from tests.conftest import DEFAULT_MODELS


def test_default_model_loads_from_the_repository() -> None:
    artifact = load_artifact(DEFAULT_MODELS)
    manifest = artifact.manifest
    assert Path(artifact.source).parent == DEFAULT_MODELS
    assert [f.name for f in manifest.features] == ["recency_days", "frequency", "monetary"]
    assert 5 <= len(manifest.segments) <= 7
    assert {s.key for s in manifest.segments} <= set(RFM_ARCHETYPES)
    assert manifest.training_data.file_name == "online_retail.csv.gz"
    assert manifest.training_data.customers == 4339  # Online Retail customers with a kept purchase
    assert [s.k for s in manifest.quality.k_search] == [5, 6, 7]
    assert sum(manifest.drift_baseline.segment_shares.values()) == pytest.approx(1, abs=1e-4)


def test_default_model_scores_like_rfm_common_sense() -> None:
    model = SegmentModel.load(DEFAULT_MODELS)
    best = {"recency_days": 1.0, "frequency": 60.0, "monetary": 50_000.0}
    gone = {"recency_days": 365.0, "frequency": 1.0, "monetary": 40.0}
    clusters = model.score([best, gone]).clusters
    assert model.segments_by_cluster[int(clusters[0])].key == "champions"
    assert model.segments_by_cluster[int(clusters[1])].key in {
        "hibernating",
        "lost",
        "about_to_sleep",
    }


@pytest.fixture
def model_copy(tmp_path: Path, rfm_model_dir: Path) -> Path:
    return Path(shutil.copytree(rfm_model_dir, tmp_path / "copy"))


def test_a_changed_pipeline_is_refused(model_copy: Path) -> None:
    blob = model_copy / "pipeline.skops"
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(model_copy)


def test_a_malformed_manifest_is_refused(model_copy: Path) -> None:
    manifest = json.loads((model_copy / "manifest.json").read_text())
    del manifest["segments"][0]["key"]
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a valid manifest"):
        load_artifact(model_copy)
    (model_copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError):
        load_artifact(model_copy)


def test_a_manifest_that_lies_about_the_model_is_refused(model_copy: Path) -> None:
    manifest = json.loads((model_copy / "manifest.json").read_text())
    manifest["parity_sample"]["labels"] = [
        (label + 1) % 4 for label in manifest["parity_sample"]["labels"]
    ]
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="parity"):
        load_artifact(model_copy)


def test_types_outside_the_trusted_list_are_refused(model_copy: Path) -> None:
    """Even with a matching checksum, an artifact with other types never gets loaded."""
    other = LinearRegression().fit(np.arange(10.0).reshape(-1, 1), np.arange(10.0))
    blob = sio.dumps(other)
    (model_copy / "pipeline.skops").write_bytes(blob)
    manifest = json.loads((model_copy / "manifest.json").read_text())
    import hashlib

    manifest["artifact_sha256"] = hashlib.sha256(blob).hexdigest()
    (model_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="trusted"):
        load_artifact(model_copy)


def test_a_missing_or_dangling_default_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="DEFAULT"):
        load_artifact(tmp_path)
    (tmp_path / "DEFAULT").write_text("nope\n")
    with pytest.raises(ArtifactError, match="nope"):
        load_artifact(tmp_path)


def test_scorer_agrees_with_the_pipeline_on_all_training_like_rows() -> None:
    model = SegmentModel.load(DEFAULT_MODELS)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "recency_days": rng.integers(0, 400, 5000).astype(float),
            "frequency": rng.integers(1, 200, 5000).astype(float),
            "monetary": rng.lognormal(6, 2, 5000),
        }
    )
    ours = model.score_frame(frame).clusters
    assert np.array_equal(ours, model.artifact.pipeline.predict(frame))


def test_the_default_model_and_its_data_are_committed() -> None:
    """What `make serve` and `make model` need must be in git, not only in this working tree."""
    import subprocess

    from app.settings import PROJECT_ROOT

    if not (PROJECT_ROOT / ".git").exists():
        pytest.skip("not a git checkout (an unpacked release): nothing to compare")
    listed = subprocess.run(
        ["git", "ls-files", "models", "data"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    version = (DEFAULT_MODELS / "DEFAULT").read_text().strip()
    for needed in (
        "models/DEFAULT",
        f"models/{version}/manifest.json",
        f"models/{version}/pipeline.skops",
        "data/online-retail/online_retail.csv.gz",
        "data/online-retail/SOURCE.md",
    ):
        assert needed in listed
