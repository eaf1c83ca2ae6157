"""Which of the three forms a model takes — the one place where "tile-level or multiple-instance
(MIL), on features or end to end?" is answered; every other module asks here.

=====================  ===========================================  ====================  =============
form                   the model                                    it reads              one score per
=====================  ===========================================  ====================  =============
``TILE``               backbone + head                              tile images           tile
``MIL_ON_FEATURES``    aggregator on a frozen encoder's features    a feature store       slide (a bag)
``MIL_END_TO_END``     backbone + aggregator, trained together      tile images, in bags  slide (a bag)
=====================  ===========================================  ====================  =============

A saved model's form comes from its ``config.json`` (:attr:`clotclf_core.models.config.ModelConfig.form`:
``kind`` and whether an ``encoder`` is recorded), a training run's from its settings
(:attr:`clotclf_core.training.settings.TrainSettings.form`: ``--aggregator`` and ``--features``).
Both call :meth:`ModelForm.of`.

No imports: the CLI reads this module at start-up (through the training settings).
"""

from __future__ import annotations

from enum import Enum


class ModelForm(Enum):
    """Tile-level, MIL on features, or MIL end to end (see the module docstring)."""

    TILE = "tile"
    MIL_ON_FEATURES = "mil on features"
    MIL_END_TO_END = "mil end to end"

    @classmethod
    def of(cls, mil: bool, on_features: bool) -> "ModelForm":
        """The form of a model that pools bags (``mil``) or not, of stored features (``on_features``) or not."""
        if not mil:
            return cls.TILE
        return cls.MIL_ON_FEATURES if on_features else cls.MIL_END_TO_END

    @property
    def is_mil(self) -> bool:
        """Pools a bag of tiles (a slide) into one prediction: an aggregator, no head."""
        return self is not ModelForm.TILE

    @property
    def on_features(self) -> bool:
        """Reads stored features of a frozen encoder (a feature store), not tile images."""
        return self is ModelForm.MIL_ON_FEATURES

    @property
    def kind(self) -> str:
        """``config.json``'s ``model.kind``: ``tile`` or ``mil``."""
        return "mil" if self.is_mil else "tile"

    @property
    def unit(self) -> str:
        """What one prediction is about: ``tile`` or ``slide``."""
        return "slide" if self.is_mil else "tile"
