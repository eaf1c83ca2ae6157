"""What a model is, how it is built, saved and loaded — no training, no scoring.

- :mod:`.config` — :class:`ModelConfig` (config.json's ``model``, bounded), the encoder record;
- :mod:`.form` — :class:`ModelForm`: tile-level or MIL, on features or end to end, decided once;
- :mod:`.inputs` — what a backbone expects (normalisation, input size) and uint8 tiles -> its input;
- :mod:`.runtime` — device, precision, memory format and data-parallel rank, resolved once;
- :mod:`.backbones` — which backbone a name means: a plugin's, or a pre-training run (``run:PATH``);
- :mod:`.build` — the model a config describes, from its plugins, with provenance and a parameter budget;
- :mod:`.mil` — the MIL model (aggregator on bags, optional backbone, stored standardisation);
- :mod:`.aggregate` — calling an aggregator plugin with its contract checked;
- :mod:`.saved` — run directories: save, load, check buildable without memory;
- :mod:`.runs` — run directories without torch: reading config.json, fold ensembles, the safetensors header;
- :mod:`.requirements` — what a run needs installed (its recorded plugins), and the one ``pip install`` message;
- :mod:`.card`, :mod:`.card_facts`, :mod:`.card_text` — the model card (README.md) via ``huggingface_hub.ModelCard``.
"""
