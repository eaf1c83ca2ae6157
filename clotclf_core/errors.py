"""User-facing errors.

A :class:`ClotclfError` is a mistake the user can fix (bad path, unknown plugin, bad option,
incompatible weights...). The CLI prints its message on one line and exits non-zero; it never
shows a traceback for it. Its message names the thing that is wrong and how to fix it.
"""

from __future__ import annotations


class ClotclfError(Exception):
    """An error caused by user input, with a message that says how to fix it."""

    exit_code = 2


class PluginError(ClotclfError):
    """Unknown, broken, disabled or conflicting plugin component."""


class ConfigError(ClotclfError):
    """Invalid settings: bad option name or value, unknown YAML field."""


class ModelLoadError(ClotclfError):
    """A run directory or weights file that cannot be loaded."""
