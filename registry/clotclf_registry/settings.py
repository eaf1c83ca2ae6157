"""Where models are pushed to and pulled from, resolved once per command.

Each setting comes from, first to last: the command-line option, the environment, the config
file, the default. The config file is ``$CLOTCLF_CONFIG`` if set, else
``$XDG_CONFIG_HOME/clotclf/registry.yaml`` (``~/.config/clotclf/registry.yaml``), a YAML mapping
of the fields below. Tokens never live here: they come from ``HF_TOKEN`` or ``hf auth login``.

===========  =====================  ==================================================  ==================
setting      environment            meaning                                             default
===========  =====================  ==================================================  ==================
registry     CLOTCLF_REGISTRY       ``hub``, or ``file:///path`` (a local registry)      ``hub``
endpoint     HF_ENDPOINT            the Hub's URL (a mirror, an enterprise hub)          huggingface.co
namespace    CLOTCLF_NAMESPACE      org that short names live in                         ``clotclf``
cache_dir    CLOTCLF_CACHE_DIR      where pulled models are kept                         see below
offline      HF_HUB_OFFLINE         pull from the cache only                             false
xet          CLOTCLF_HUB_XET        ``auto`` / ``on`` / ``off``: Xet uploads             ``auto``
hub_timeout  CLOTCLF_HUB_TIMEOUT    seconds to wait for a connection or an answer,       60
                                    and the window ``hub_min_rate`` is measured over
hub_min_rate CLOTCLF_HUB_MIN_RATE   bytes/s a transfer must keep up over each window     4096
hub_deadline CLOTCLF_HUB_DEADLINE   seconds one pull / push / listing may take in all    3600
===========  =====================  ==================================================  ==================

``cache_dir`` unset means: the huggingface_hub cache for the Hub (``HF_HUB_CACHE``, by default
``~/.cache/huggingface/hub``) and ``~/.cache/clotclf/registries`` for local registries.
``xet: auto`` uses Xet only toward huggingface.co, the one server known to speak it; every other
endpoint gets plain Git-LFS uploads, which any Hub-compatible server implements
(``HF_HUB_DISABLE_XET=1`` always turns Xet off). The three ``hub_*`` limits are
:mod:`clotclf_core.plugin.transfer`'s: a server that never answers, trickles, or drags an operation
past its deadline is one error line naming the setting, never a hang.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from clotclf_core.plugin.hub import check_repo_part, scrub
from clotclf_core.plugin.secrets import shown_url
from clotclf_core.plugin.transfer import SETTINGS as LIMITS
from clotclf_core.plugin.transfer import TransferLimits, with_hints

from .errors import RegistryError

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_NAMESPACE = "clotclf"
CONFIG_ENV = "CLOTCLF_CONFIG"
XET_HOSTS = ("huggingface.co", "hf.co")
#: model names as the registry's messages show them
EXAMPLE = "e.g. mayo-poolformer, clotclf/mayo-poolformer or clotclf/mayo-poolformer@v1"

#: setting -> environment variable
ENV = {
    "registry": "CLOTCLF_REGISTRY",
    "endpoint": "HF_ENDPOINT",
    "namespace": "CLOTCLF_NAMESPACE",
    "cache_dir": "CLOTCLF_CACHE_DIR",
    "offline": "HF_HUB_OFFLINE",
    "xet": "CLOTCLF_HUB_XET",
    **{name: env for name, (env, _, _) in LIMITS.items()},
}
_TRUE = {"1", "true", "yes", "on"}
#: a limit: a positive, finite number
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class RegistrySettings(BaseModel):
    """The resolved settings (see the module docstring for each field)."""

    model_config = ConfigDict(extra="forbid")

    registry: str = "hub"
    endpoint: str = DEFAULT_ENDPOINT
    namespace: str = DEFAULT_NAMESPACE
    cache_dir: str | None = None
    offline: bool = False
    xet: Literal["auto", "on", "off"] = "auto"
    hub_timeout: PositiveFloat = LIMITS["hub_timeout"][1]
    hub_min_rate: PositiveFloat = LIMITS["hub_min_rate"][1]
    hub_deadline: PositiveFloat = LIMITS["hub_deadline"][1]
    #: the settings given by an option, the environment or the config file (not defaults)
    _chosen: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @property
    def chosen(self) -> frozenset[str]:
        return self._chosen

    @property
    def scheme(self) -> str:
        """``hub`` for the Hugging Face Hub, else the registry URL's scheme (``file``, ...)."""
        if self.registry == "hub":
            return "hub"
        return urlparse(self.registry).scheme or "file"

    @property
    def endpoint_shown(self) -> str:
        """The endpoint as messages show it: never with credentials (see :func:`shown_url`)."""
        return shown_url(self.endpoint)

    def limits(self) -> TransferLimits:
        """The transfer limits, their messages naming both places to change each one."""
        limits = TransferLimits(self.hub_timeout, self.hub_min_rate, self.hub_deadline)
        return with_hints(limits, **{name: f"{ENV[name]}, or {name}: in the registry settings file" for name in LIMITS})

    def use_xet(self) -> bool:
        if os.environ.get("HF_HUB_DISABLE_XET", "").strip().lower() in _TRUE or self.xet == "off":
            return False
        return self.xet == "on" or (urlparse(self.endpoint).hostname or "") in XET_HOSTS


def config_path() -> Path:
    """The config file: ``$CLOTCLF_CONFIG`` or ``$XDG_CONFIG_HOME/clotclf/registry.yaml``."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clotclf" / "registry.yaml"


def _read_config_file() -> dict[str, Any]:
    from clotclf_core.config import load_yaml

    path = config_path()
    if not path.is_file():
        if os.environ.get(CONFIG_ENV):
            raise RegistryError(f"{CONFIG_ENV}={path} does not exist: create it, or unset {CONFIG_ENV}")
        return {}
    data = load_yaml(path)
    unknown = sorted(set(data) - set(RegistrySettings.model_fields))
    if unknown:
        raise RegistryError(
            f"config file '{path}' has unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(RegistrySettings.model_fields)}"
        )
    return data


def _from_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, var in ENV.items():
        value = os.environ.get(var, "").strip()
        if value:
            out[field] = value.lower() in _TRUE if field == "offline" else value
    return out


def load_settings(**overrides: Any) -> RegistrySettings:
    """Resolve settings: ``overrides`` (CLI options; None = not given) > environment > file > default."""
    file_values = _read_config_file()
    values: dict[str, Any] = {**file_values, **_from_env()}
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = RegistrySettings.model_validate(values)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']} (got {scrub(repr(e.get('input')))})" for e in err.errors())
        raise RegistryError(f"invalid registry settings ({problems}); see `clotclf push --help` and docs/registry.md") from None
    settings._chosen = frozenset(values)
    settings.endpoint = settings.endpoint.rstrip("/")
    if urlparse(settings.endpoint).scheme not in ("http", "https") or not urlparse(settings.endpoint).netloc:
        raise RegistryError(
            f"endpoint '{shown_url(settings.endpoint)}' is not an http(s) URL: set --endpoint / HF_ENDPOINT to e.g. https://huggingface.co"
        )
    if settings.registry.startswith(("http://", "https://")):  # a Hub given by its URL
        settings.endpoint, settings.registry = settings.registry.rstrip("/"), "hub"
    elif settings.registry != "hub" and "://" not in settings.registry:  # a plain path: a local registry
        settings.registry = Path(settings.registry).expanduser().resolve().as_uri()
    check_repo_part(settings.namespace, "namespace", EXAMPLE)
    return settings
