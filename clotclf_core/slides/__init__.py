"""Slides: opening them through a source plugin, their tissue, and the manifests that say whose they are.

- :mod:`.open` — pick a source plugin for a file (ranked by its ``priority``), find a slide by image id;
- :mod:`.tissue` — the tissue mask of a low-resolution view, relative to the slide's own glass;
- :mod:`.manifest` — manifests (image_id, patient_id, center_id, label): read, checked, made from files.
"""
