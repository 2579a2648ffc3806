"""Finding connectors: Python entry points in the group ``textback.connectors``, built-ins included.

The entry-point name must equal the manifest id; two distributions offering one id is an error
that names both. Connectors load lazily: only the ids a business uses are imported.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from connectors import manifest as manifest_mod
from connectors.base import Connector
from connectors.manifest import Manifest
from core.errors import ConfigError

GROUP = "textback.connectors"


@dataclass(frozen=True)
class Loaded:
    cls: type[Connector]
    manifest: Manifest
    distribution: str


def _entry_points() -> dict[str, list[EntryPoint]]:
    found: dict[str, list[EntryPoint]] = {}
    seen: set[tuple[str, str]] = set()
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else "?"
        if (ep.name, dist) in seen:  # the same distribution seen twice on sys.path
            continue
        seen.add((ep.name, dist))
        found.setdefault(ep.name, []).append(ep)
    return found


def available() -> list[str]:
    return sorted(_entry_points())


def _one(connector_id: str) -> EntryPoint:
    eps = _entry_points().get(connector_id)
    if not eps:
        known = ", ".join(available()) or "none"
        raise ConfigError(f"no connector {connector_id!r} is installed (entry points in {GROUP}: {known})")
    if len({ep.value for ep in eps}) > 1:
        dists = ", ".join(f"{ep.dist.name if ep.dist else '?'} ({ep.value})" for ep in eps)
        raise ConfigError(
            f"connector id {connector_id!r} is offered by more than one package: {dists}; "
            "uninstall one of them"
        )
    return eps[0]


def manifest_path(cls: type[Connector]) -> Path:
    path = getattr(cls, "MANIFEST", None)
    if path is None:
        raise ConfigError(f"{cls.__module__}.{cls.__name__} has no MANIFEST path")
    return Path(path)


def load(connector_id: str) -> Loaded:
    ep = _one(connector_id)
    try:
        cls = ep.load()
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"connector {connector_id!r} could not be imported from {ep.value}: {exc}"
        ) from None
    return check_class(cls, connector_id, ep.dist.name if ep.dist else "?")


def check_class(cls: type[Connector], connector_id: str, distribution: str = "?") -> Loaded:
    """Everything a manifest promises, checked against the class that is meant to keep it."""
    man = manifest_mod.load(manifest_path(cls))
    if man.id != connector_id:
        raise ConfigError(
            f"manifest id {man.id!r} differs from the entry-point name {connector_id!r}",
            source=man.source,
            path="id",
        )
    if getattr(cls, "id", None) != man.id:
        raise ConfigError(
            f"class {cls.__name__}.id is {getattr(cls, 'id', None)!r}, manifest says {man.id!r}",
            source=man.source,
            path="id",
        )
    module, _, attr = man.entry_point.partition(":")
    if getattr(importlib.import_module(module), attr, None) is not cls:
        raise ConfigError(
            f"entry_point {man.entry_point} is not the class the entry point loads",
            source=man.source,
            path="entry_point",
        )
    implemented = cls.implemented()
    if implemented != set(man.capabilities):
        missing = sorted(c.value for c in set(man.capabilities) - implemented)
        extra = sorted(c.value for c in implemented - set(man.capabilities))
        parts = []
        if missing:
            parts.append(f"declared but not implemented: {', '.join(missing)}")
        if extra:
            parts.append(f"implemented but not declared: {', '.join(extra)}")
        raise ConfigError(
            "capabilities do not match the class (" + "; ".join(parts) + ")",
            source=man.source,
            path="capabilities",
        )
    return Loaded(cls, man, distribution)


def load_manifest_or_id(path_or_id: str) -> Loaded:
    """For `connectors install`: a manifest file (whose code must be installed) or an id."""
    path = Path(path_or_id)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        man = manifest_mod.load(path)
        loaded = load(man.id)
        if (
            Path(loaded.manifest.source).resolve() != path.resolve()
            and loaded.manifest.version != man.version
        ):
            raise ConfigError(
                f"the installed code for {man.id!r} ships manifest version {loaded.manifest.version}, "
                f"not {man.version}",
                source=str(path),
                path="version",
            )
        return loaded
    return load(path_or_id)
