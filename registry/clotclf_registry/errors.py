"""The registry's user-facing errors: each one names the model, the registry and the fix.

They subclass :class:`clotclf_core.plugin.errors.ClotclfError`, so the CLI prints them on one line and
exits non-zero. None of them ever contains a token: messages are built from names, URLs and
status codes only.
"""

from __future__ import annotations

from clotclf_core.plugin import ClotclfError


class RegistryError(ClotclfError):
    """Something about a registry, a model name or a transfer the user can fix."""


class NotFoundError(RegistryError):
    """The model, revision or file does not exist (or is private and the token cannot see it)."""


class AuthError(RegistryError):
    """The registry refused the token (401) or the token lacks the permission (403)."""


class UnreachableError(RegistryError):
    """No network, a wrong endpoint, or offline mode with nothing cached."""


class IntegrityError(RegistryError):
    """Downloaded bytes do not match the hash the registry or the model's config.json recorded."""


class NotAModelError(RegistryError):
    """The repository exists but does not hold a loadable clotclf model (or holds unsafe files)."""
