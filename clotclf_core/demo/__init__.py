"""Synthetic cohorts shaped like Mayo Clinic STRIP AI, for the demo and end-to-end tests (every
number they give is called synthetic).

- :mod:`.cohort` — ``clotclf demo-data``: the cohort planned (patients, labels, per-centre stain,
  file layouts) and written (stripped and tiled TIFFs, a manifest, a README);
- :mod:`.paint` — how one slide is drawn: clot-like tissue (fibrin, red cells, nuclei) on glass;
- :mod:`.sparse` — ``--signal sparse``: the class in a few small spots per LAA slide (+ ``markers.csv``).
"""
