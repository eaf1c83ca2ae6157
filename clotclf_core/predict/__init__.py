"""``clotclf predict``: new slides -> tiles -> one or more models -> slide and patient probabilities.

- :mod:`.run` — the whole path (:func:`predict`), the tables and the summary;
- :mod:`.ensemble` — the models of a prediction: loaded (fold ensembles too), calibrated, scored;
- :mod:`.outputs` — heatmaps, QuPath GeoJSON and report.html beside the tables;
- :mod:`.submission` — whose patient each slide is, and ``submission.csv`` (one row per patient).

The last pipeline step before the CLI: it uses tiling, features, models and scoring.
"""
