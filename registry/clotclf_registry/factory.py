"""Which backend serves a registry URL: the built-in ones for ``hub`` and ``file://``, otherwise the
class a distribution registers under the URL's scheme in the entry-point group
``clotclf.registry_backends``::

    [project.entry-points."clotclf.registry_backends"]
    s3 = "clotclf_s3:S3Registry"     # used for --registry s3://bucket/prefix

It is constructed as ``S3Registry(settings, token)`` and implements
:class:`.backend.RegistryBackend`. Kept apart from :mod:`.backend` (the interface the backends
import), so that no backend module imports a module that imports it back.
"""

from __future__ import annotations

import importlib.metadata as md

from .backend import RegistryBackend
from .errors import RegistryError
from .hub import HubRegistry
from .local import LocalRegistry
from .settings import RegistrySettings

ENTRY_POINT_GROUP = "clotclf.registry_backends"


def open_backend(settings: RegistrySettings, token: str | bool | None = None) -> RegistryBackend:
    """The backend for ``settings.registry``: built-in for ``hub`` and ``file``, else a plugin."""
    scheme = settings.scheme
    if scheme == "hub":
        return HubRegistry(settings, token)
    if scheme == "file":
        return LocalRegistry(settings, token)
    eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == scheme]
    if not eps:
        known = sorted({"file", *(ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP))})
        raise RegistryError(
            f"no registry backend for '{settings.registry}' (scheme '{scheme}'): use hub (the default), "
            f"file:///path, or install a plugin registering '{scheme}' in the entry-point group {ENTRY_POINT_GROUP} "
            f"(available: hub, {', '.join(known)})"
        )
    if len(eps) > 1:
        raise RegistryError(
            f"registry scheme '{scheme}' is provided by several distributions "
            f"({', '.join(ep.value for ep in eps)}); uninstall all but one"
        )
    try:
        backend_cls = eps[0].load()
        return backend_cls(settings, token)
    except RegistryError:
        raise
    except Exception as exc:  # a broken backend plugin is one clear error, not a traceback
        raise RegistryError(f"registry backend '{scheme}' ({eps[0].value}) failed to load: {type(exc).__name__}: {exc}") from None
