"""Synthetic cohorts shaped like Mayo Clinic STRIP AI, for the demo and end-to-end tests (every
number they give is called synthetic).

- :mod:`.cohort` — ``clotclf demo-data``: slides of clot-like tissue on white or grey glass, stripped
  and tiled TIFFs, per-centre stain, a manifest;
- :mod:`.sparse` — ``--signal sparse``: the class in a few small spots per LAA slide (+ ``markers.csv``).
"""
