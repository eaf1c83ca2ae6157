"""Scoring: predictions -> honest numbers and what a lab opens.

- :mod:`.inference` — tiles and bags -> probabilities, written once (train, evaluate, predict);
- :mod:`.metrics` — tile / slide / patient metrics and the competition's weighted log loss;
- :mod:`.headline` — the held-out headline, said the same way everywhere;
- :mod:`.intervals` — bootstrap intervals, per-centre tables, the disagreement note;
- :mod:`.calibration` — temperature / Platt calibration, clipping, ECE;
- :mod:`.plots` — history, confusion, ROC, reliability diagrams, heatmaps;
- :mod:`.evaluate`, :mod:`.evaluate_outputs` — ``clotclf evaluate`` and what it writes;
- :mod:`.qupath`, :mod:`.slide_views`, :mod:`.report_html` — QuPath GeoJSON, one slide's views, report.html.

Training uses scoring, never the reverse.
"""
