"""The served model: checks request features against the manifest's schema and scores customers."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.scoring.artifact import Artifact, ArtifactError, load_artifact
from app.scoring.compiled import CompiledScorer, UnsupportedPipeline
from app.scoring.manifest import FeatureSpec, Manifest, SegmentSpec

FeatureValue = float | str

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one request value: where (`customers[3].features.monetary`) and what."""

    loc: str
    problem: str


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
        self._specs = {f.name: f for f in self.features}
        self._categories = {f.name: frozenset(f.categories or ()) for f in self.features}
        self.segments_by_cluster: dict[int, SegmentSpec] = self.manifest.segment_by_cluster()
        self.segments_by_key: dict[str, SegmentSpec] = {s.key: s for s in self.manifest.segments}
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

    def validate(
        self, features: Mapping[str, Any], where: str
    ) -> tuple[dict[str, FeatureValue], list[Problem]]:
        """Check one customer's features; returns the clean values and every problem found."""
        clean: dict[str, FeatureValue] = {}
        problems: list[Problem] = []
        for name, spec in self._specs.items():
            loc = f"{where}.{name}"
            if name not in features:
                problems.append(Problem(loc, f"is required: {_describe(spec)}"))
                continue
            value, problem = _check_value(spec, features[name])
            if problem:
                problems.append(Problem(loc, problem))
            else:
                assert value is not None
                clean[name] = value
        for name in features:
            if name not in self._specs:
                problems.append(
                    Problem(
                        f"{where}.{name}",
                        f"is not a feature of this model; it takes {', '.join(self._specs)}",
                    )
                )
        return clean, problems

    def unknown_categories(self, features: Mapping[str, FeatureValue]) -> list[str]:
        """Names of categorical features whose value the model never saw in training."""
        return [
            name
            for name, allowed in self._categories.items()
            if allowed and features.get(name) not in allowed
        ]

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
                f"{self.artifact.path}: the {self.scorer_note} disagrees with the parity sample"
            )


def _confidence(nearest: np.ndarray, runner_up: np.ndarray) -> np.ndarray:
    """1 - nearest / runner-up distance: 0 on the border of two segments, 1 on a centre."""
    with np.errstate(divide="ignore", invalid="ignore"):
        confidence = np.where(runner_up > 0, 1.0 - nearest / runner_up, 0.0)
    return np.clip(confidence, 0.0, 1.0)


def _describe(spec: FeatureSpec) -> str:
    if spec.type == "category":
        shown = ", ".join((spec.categories or [])[:10])
        return f"a string, one of {shown} (others are accepted as unknown)"
    kind = "an integer" if spec.type == "integer" else "a number"
    return f"{kind} from {spec.minimum:g} to {spec.maximum:g}"


def _check_value(spec: FeatureSpec, value: Any) -> tuple[FeatureValue | None, str | None]:
    if spec.type == "category":
        if not isinstance(value, str):
            return None, f"must be {_describe(spec)}, got {type(value).__name__}"
        if not value.strip() or len(value) > 256:
            return None, "must be a non-empty string of at most 256 characters"
        return value, None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, f"must be {_describe(spec)}, got {type(value).__name__}"
    number = float(value)
    if not math.isfinite(number):
        return None, f"must be a finite number, got {value}"
    if spec.type == "integer" and not number.is_integer():
        return None, f"must be {_describe(spec)}, got {value}"
    assert spec.minimum is not None
    assert spec.maximum is not None
    if not spec.minimum <= number <= spec.maximum:
        return None, f"is out of range: must be {_describe(spec)}, got {value}"
    return number, None
