"""The served model: checks request features against the manifest's schema and scores customers."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from app.scoring.artifact import Artifact, ArtifactError, load_artifact
from app.scoring.compiled import CompiledScorer, UnsupportedPipeline
from app.scoring.manifest import FeatureSpec, Manifest, SegmentSpec
from app.scoring.validation import FeatureValue, SchemaValidator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Scores:
    """Scores for a batch, in input order."""

    clusters: np.ndarray  # int, the KMeans label of each row
    distances: np.ndarray  # distance to the nearest centroid, in the model's scaled space
    confidences: (
        np.ndarray
    )  # 1 - nearest / second-nearest distance: 0 = on a border, 1 = on a centroid


class SegmentModel:
    """A verified artifact ready to score: schema checks, scoring and segment lookups."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.manifest: Manifest = artifact.manifest
        self.version = self.manifest.version
        self.features: list[FeatureSpec] = self.manifest.features
        self.feature_names = [f.name for f in self.features]
        self.validator = SchemaValidator(self.features)
        self._categories = {f.name: frozenset(f.categories or ()) for f in self.features}
        self.segments_by_cluster: dict[int, SegmentSpec] = self.manifest.segment_by_cluster()
        self.segments_by_key: dict[str, SegmentSpec] = {s.key: s for s in self.manifest.segments}
        self.segment_names = {s.key: s.name for s in self.manifest.segments}
        self.segment_ids_by_cluster = [
            self.segments_by_cluster[c].id for c in range(len(self.segments_by_cluster))
        ]
        self.segment_keys_by_cluster = [
            self.segments_by_cluster[c].key for c in range(len(self.segments_by_cluster))
        ]
        self.numeric_names = [f.name for f in self.features if f.type != "category"]
        self.categorical_names = [f.name for f in self.features if f.type == "category"]
        self._transform = artifact.pipeline[:-1]
        self._kmeans = artifact.pipeline.steps[-1][1]
        self.compiled: CompiledScorer | None
        try:
            self.compiled = CompiledScorer.from_pipeline(
                artifact.pipeline, self.numeric_names, self.categorical_names
            )
            self.scorer_note = "compiled numpy scorer"
        except UnsupportedPipeline as exc:
            self.compiled = None
            self.scorer_note = f"scikit-learn (not compiled: {exc})"
            log.warning("model %s: scoring with scikit-learn, not compiled: %s", self.version, exc)
        self._check_scorer_parity()

    @classmethod
    def load(cls, path: Path) -> SegmentModel:
        return cls(load_artifact(path))

    def unknown_categories(self, categorical: Sequence[Sequence[str]]) -> dict[str, int]:
        """How many values of each categorical feature the model never saw in training."""
        counts = {}
        for name, values in zip(self.categorical_names, categorical, strict=True):
            allowed = self._categories[name]
            unknown = sum(1 for v in values if v not in allowed)
            if unknown:
                counts[name] = unknown
        return counts

    def score(self, rows: Sequence[Mapping[str, FeatureValue]]) -> Scores:
        """Score validated rows (each one with every feature of the schema)."""
        numeric = np.array([[row[n] for n in self.numeric_names] for row in rows], dtype=np.float64)
        numeric = numeric.reshape(len(rows), len(self.numeric_names))
        categorical = [[str(row[n]) for row in rows] for n in self.categorical_names]
        return self.score_arrays(numeric, categorical)

    def score_arrays(self, numeric: np.ndarray, categorical: Sequence[Sequence[str]]) -> Scores:
        """Score a (rows, numeric features) matrix plus one sequence per categorical feature."""
        if self.compiled is None:
            frame = pd.DataFrame(numeric, columns=self.numeric_names)
            for name, values in zip(self.categorical_names, categorical, strict=True):
                frame[name] = pd.Series(list(values), dtype=object)
            return self._score_with_sklearn(frame[self.feature_names])
        space = self.compiled.transform(numeric.copy(), categorical)
        clusters, nearest, runner_up = self.compiled.nearest(space)
        return Scores(clusters, nearest, _confidence(nearest, runner_up))

    def score_frame(self, frame: pd.DataFrame) -> Scores:
        """Score a frame whose columns include the schema's features (offline scoring)."""
        numeric = frame[self.numeric_names].to_numpy(dtype=np.float64)
        categorical = [frame[n].astype(str).tolist() for n in self.categorical_names]
        return self.score_arrays(numeric, categorical)

    def _score_with_sklearn(self, frame: pd.DataFrame) -> Scores:
        space = self._transform.transform(frame)
        distances = self._kmeans.transform(space)
        clusters = self._kmeans.predict(space)
        ordered = np.sort(distances, axis=1)
        runner_up = ordered[:, 1] if ordered.shape[1] > 1 else ordered[:, 0]
        return Scores(clusters, ordered[:, 0], _confidence(ordered[:, 0], runner_up))

    def _check_scorer_parity(self) -> None:
        """The scorer must give the labels training recorded for the parity sample."""
        sample = self.manifest.parity_sample
        ours = self.score(sample.rows).clusters
        if not np.array_equal(ours, np.asarray(sample.labels)):
            raise ArtifactError(
                f"{self.artifact.source}: the {self.scorer_note} disagrees with the parity sample"
            )


def _confidence(nearest: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
    """1 - nearest / runner-up distance: 0 on the border of two segments, 1 on a centre."""
    if nearest.shape[0] == 1:
        near, second = float(nearest[0]), float(runner_up[0])
        return np.array([min(max(1.0 - near / second, 0.0), 1.0) if second > 0 else 0.0])
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.where(runner_up > 0, 1.0 - nearest / runner_up, 0.0)
    return np.clip(confidence, 0.0, 1.0)
