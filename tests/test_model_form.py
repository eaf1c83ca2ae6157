"""A model's form (tile-level, MIL on features, MIL end to end) is decided in one place and read
the same way from a saved model's config and from a run's training settings."""

from __future__ import annotations

import pytest

from clotclf_core.models.config import ModelConfig
from clotclf_core.models.form import ModelForm
from clotclf_core.training.settings import TrainSettings

ENCODER = {"backbone": "timm", "weights_sha256": "0" * 64, "num_features": 8, "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "input_size": 32}


@pytest.mark.parametrize("config, settings, form", [
    ({"backbone": "cct"}, {"tiles": "t", "backbone": "cct"}, ModelForm.TILE),
    ({"kind": "mil", "aggregator": "abmil", "encoder": ENCODER}, {"features": "f", "aggregator": "abmil"},
     ModelForm.MIL_ON_FEATURES),
    ({"kind": "mil", "aggregator": "mean", "backbone": "cct"}, {"tiles": "t", "backbone": "cct", "aggregator": "mean"},
     ModelForm.MIL_END_TO_END),
])
def test_a_saved_model_and_the_run_that_trains_it_have_the_same_form(config, settings, form):
    cfg = ModelConfig(**config)
    assert cfg.form is form and TrainSettings(**settings).form is form
    assert form.kind == cfg.kind  # what config.json records as model.kind


def test_what_each_form_means():
    assert [(f.is_mil, f.on_features, f.unit) for f in ModelForm] == [
        (False, False, "tile"), (True, True, "slide"), (True, False, "slide")]
    assert ModelForm.of(False, True) is ModelForm.TILE  # a tile-level model never reads a feature store
