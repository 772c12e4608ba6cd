"""The models this process serves: the active one and the shadow, each swapped whole.

The one place every part of a worker asks for the model: a request reads `holder.model` once
and finishes on that model, so requests in flight are never split between versions. The
watcher (app.lifecycle.watcher) swaps models in; everything else only reads.
"""

from __future__ import annotations

from collections.abc import Mapping

from app.scoring.model import SegmentModel


class ModelHolder:
    def __init__(
        self, model: SegmentModel, *, known_segment_names: Mapping[str, str] | None = None
    ) -> None:
        self._model = model
        self._shadow: SegmentModel | None = None
        # segment key -> name for every version this process knows of: history rows made by an
        # earlier version still get their names (keys, and so names, survive retraining)
        self._segment_names = {**(known_segment_names or {}), **model.segment_names}

    @property
    def model(self) -> SegmentModel:
        """The active model."""
        return self._model

    @property
    def shadow(self) -> SegmentModel | None:
        """The model that scores live traffic too, after the responses; None: no shadow."""
        return self._shadow

    @property
    def segment_names(self) -> Mapping[str, str]:
        return self._segment_names

    def serve(self, model: SegmentModel) -> None:
        """Serve `model` from now on (already verified); requests started before keep theirs."""
        self._segment_names = {**self._segment_names, **model.segment_names}
        self._model = model

    def shadow_with(self, model: SegmentModel | None) -> None:
        self._shadow = model
