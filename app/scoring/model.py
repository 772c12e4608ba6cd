"""The served model: checks request features against the manifest's schema and scores customers."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from app.scoring.artifact import Artifact, ArtifactError, load_artifact
from app.scoring.manifest import FeatureSpec, Manifest, SegmentSpec

FeatureValue = float | str


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
        self._transform = artifact.pipeline[:-1]
        self._kmeans = artifact.pipeline.steps[-1][1]
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
        frame = pd.DataFrame.from_records(list(rows), columns=self.feature_names)
        return self._score_frame(frame)

    def score_frame(self, frame: pd.DataFrame) -> Scores:
        """Score a frame whose columns include the schema's features (offline scoring)."""
        return self._score_frame(frame[self.feature_names])

    def _score_frame(self, frame: pd.DataFrame) -> Scores:
        space = self._transform.transform(frame)
        distances = self._kmeans.transform(space)
        clusters = np.argmin(distances, axis=1)
        ordered = np.sort(distances, axis=1)
        nearest = ordered[:, 0]
        runner_up = ordered[:, 1] if ordered.shape[1] > 1 else ordered[:, 0]
        with np.errstate(divide="ignore", invalid="ignore"):
            confidence = np.where(runner_up > 0, 1.0 - nearest / runner_up, 0.0)
        return Scores(clusters, nearest, np.clip(confidence, 0.0, 1.0))

    def _check_scorer_parity(self) -> None:
        sample = self.manifest.parity_sample
        ours = self.score(sample.rows).clusters
        theirs = self.artifact.pipeline.predict(
            pd.DataFrame(sample.rows, columns=self.feature_names)
        )
        if not np.array_equal(ours, theirs):
            raise ArtifactError(f"{self.artifact.path}: the scorer disagrees with Pipeline.predict")


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
