"""Slides: opening them through a source plugin, their tissue, and the manifests that say whose they are.

- :mod:`.guard` — a slide file refused before any reader opens it (not a file, a TIFF header past its bytes or the caps);
- :mod:`.open` — pick a source plugin for a file (ranked by its ``priority``), find a slide by image id;
- :mod:`.tissue` — the tissue mask of a low-resolution view, relative to the slide's own glass;
- :mod:`.prescreen` — where tissue is, guessed from the compressed size of each TIFF tile (no decoding);
- :mod:`.manifest` — manifests (image_id, patient_id, center_id, label): read, checked, made from files.
"""
