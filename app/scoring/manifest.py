"""The model manifest: what a model artifact promises about itself (schema in `manifest.json`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FeatureType = Literal["number", "integer", "category"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One input feature: its type and the values a request may carry."""

    name: str
    type: FeatureType
    description: str = ""
    minimum: float | None = None
    maximum: float | None = None
    categories: list[str] | None = None
    log_transformed: bool = False

    @model_validator(mode="after")
    def _check(self) -> FeatureSpec:
        if self.type == "category":
            if not self.categories:
                raise ValueError(f"categorical feature {self.name!r} lists no categories")
        elif self.minimum is None or self.maximum is None or self.minimum > self.maximum:
            raise ValueError(f"numeric feature {self.name!r} needs minimum <= maximum")
        return self


class NumericProfile(_Strict):
    median: float
    p25: float
    p75: float


class SegmentSpec(_Strict):
    """A segment as a marketer sees it, and the model cluster it stands for."""

    id: int
    cluster: int = Field(description="the KMeans label that maps to this segment")
    key: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    name: str
    description: str
    share: float = Field(ge=0, le=1, description="share of training customers")
    size: int
    numeric_profile: dict[str, NumericProfile]
    category_profile: dict[str, dict[str, float]] = {}


class KScore(_Strict):
    k: int
    silhouette: float
    davies_bouldin: float
    inertia: float


class Quality(_Strict):
    silhouette: float
    davies_bouldin: float
    k_search: list[KScore]
    k_chosen_by: Literal["silhouette", "user"]


class FeatureBaseline(_Strict):
    """Training distribution of one feature, for drift: bins and the share of customers in each."""

    # numeric: interior edges e_1..e_n give n+1 bins (-inf, e_1], (e_1, e_2], ..., (e_n, inf)
    edges: list[float] | None = None
    # categorical: one bin per category, then one for categories unseen in training
    categories: list[str] | None = None
    shares: list[float]
    # numeric: the training range, to count live values outside it
    minimum: float | None = None
    maximum: float | None = None


class DriftBaseline(_Strict):
    segment_shares: dict[str, float]
    features: dict[str, FeatureBaseline]


class TrainingData(_Strict):
    kind: Literal["transactions", "customers"]
    file_name: str
    sha256: str
    rows: int
    customers: int
    as_of: str | None = None
    # ISO 4217 code of the amounts a transactions model was trained on: purchase events in
    # another currency are refused (their spend would not mean what training's did)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    options: dict[str, str | int | float | None] = {}


class ParitySample(_Strict):
    """A few training rows and the labels the fitted pipeline gave them: checked at every load."""

    rows: list[dict[str, float | int | str]]
    labels: list[int]


class SegmentIdentity(_Strict):
    """A segment as downstream systems know it."""

    id: int
    key: str
    name: str


class RetiredSegment(SegmentIdentity):
    last_version: str = Field(description="the last model version that had this segment")


class KeptSegment(_Strict):
    """A segment of the previous model that is still the same group of customers."""

    id: int
    key: str
    old_cluster: int
    new_cluster: int
    centroid_distance: float = Field(
        ge=0, description="new centroid to old centroid, in the previous model's scaled space"
    )
    overlap: float = Field(
        ge=0,
        le=1,
        description="share of the segment's training customers the previous model put in it too",
    )


class Lineage(_Strict):
    """How this model's segments relate to the model it was retrained from."""

    previous_version: str
    matches: list[KeptSegment]
    new_segments: list[SegmentIdentity]
    vanished_segments: list[SegmentIdentity]
    # every id and key an ancestor used that this model does not: never handed out again
    retired: list[RetiredSegment]


class Manifest(_Strict):
    format_version: Literal[1] = 1
    version: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: Literal["rfm", "customers"]
    trained_at: datetime
    artifact_file: str
    artifact_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    library_versions: dict[str, str]
    random_seed: int
    training_data: TrainingData
    features: list[FeatureSpec]
    segments: list[SegmentSpec]
    quality: Quality
    drift_baseline: DriftBaseline
    parity_sample: ParitySample
    lineage: Lineage | None = None  # set when retrained with --previous

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError("feature names repeat")
        for attr in ("id", "cluster", "key"):
            values = [getattr(s, attr) for s in self.segments]
            if len(set(values)) != len(values):
                raise ValueError(f"segment {attr}s repeat")
        if sorted(s.cluster for s in self.segments) != list(range(len(self.segments))):
            raise ValueError("segment clusters must be 0..k-1")
        if set(self.drift_baseline.features) != set(names):
            raise ValueError("drift baseline features differ from the feature schema")
        if len(self.parity_sample.rows) != len(self.parity_sample.labels):
            raise ValueError("parity sample rows and labels differ in length")
        return self

    def feature_types(self) -> dict[str, str]:
        """Feature name -> type: what a request must carry (models with equal ones interchange)."""
        return {f.name: f.type for f in self.features}

    def segment_by_cluster(self) -> dict[int, SegmentSpec]:
        return {s.cluster: s for s in self.segments}
