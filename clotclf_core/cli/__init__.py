"""The ``clotclf`` command line: thin click commands, each a wrapper over one function of a pipeline step.

- :mod:`.main` — the group: plugin commands added, one ``Error:`` line per failure, ``--disable-plugin``;
- :mod:`.plugins` — ``list-plugins``, ``show-plugin``, ``smoke-test``;
- :mod:`.data` — ``tile``, ``export-patches``, ``embed``, ``import-features``, ``demo-data``;
- :mod:`.models` — ``train``, ``evaluate``, ``predict``, ``pretrain`` (and ``list-encoders``).

The top layer: it imports every step, and nothing imports it. Start-up stays light: torch and the
pipeline modules are imported inside the commands (``tests/test_cli_core.py``).
"""
