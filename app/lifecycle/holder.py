"""The models this process serves: the active one and the shadow, each swapped whole.

The one place every part of a worker asks for the model: a request reads `holder.model` once
and finishes on that model, so requests in flight are never split between versions. The
watcher (app.lifecycle.watcher) swaps models in; everything else only reads.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.scoring.model import SegmentModel


class SegmentNames:
    """Segment names by the version that made the segment: a stored row is named by its own
    model's manifest, never by another model that happens to use the same key (until a model
    switch's re-score is done, memberships of both stand side by side)."""

    def __init__(self, by_version: Mapping[str, Mapping[str, str]]) -> None:
        self._by_version = {version: dict(names) for version, names in by_version.items()}
        self._keys = {key for names in self._by_version.values() for key in names}

    def with_model(self, model: SegmentModel) -> SegmentNames:
        return SegmentNames({**self._by_version, model.version: model.segment_names})

    def name(self, version: str, key: str) -> str:
        """The name `version` gives `key` (the key itself for a version no longer known)."""
        return self._by_version.get(version, {}).get(key, key)

    def __contains__(self, key: object) -> bool:
        """Whether any known version has a segment with this key."""
        return key in self._keys


class ModelHolder:
    def __init__(
        self,
        model: SegmentModel,
        *,
        known_segment_names: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self._model = model
        self._shadow: SegmentModel | None = None
        # version -> segment key -> name for every version this process knows of: history rows
        # and memberships made by an earlier version are named by it
        self._segment_names = SegmentNames(known_segment_names or {}).with_model(model)

    @property
    def model(self) -> SegmentModel:
        """The active model."""
        return self._model

    @property
    def shadow(self) -> SegmentModel | None:
        """The model that scores live traffic too, after the responses; None: no shadow."""
        return self._shadow

    @property
    def segment_names(self) -> SegmentNames:
        return self._segment_names

    def serve(self, model: SegmentModel) -> None:
        """Serve `model` from now on (already verified); requests started before keep theirs."""
        self._segment_names = self._segment_names.with_model(model)
        self._model = model

    def shadow_with(self, model: SegmentModel | None) -> None:
        self._shadow = model
