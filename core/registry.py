"""The operation registry: pluggy plugins found through entry points, loaded lazily.

Each entry point of group ``tapegrad`` is loaded on its own, so a plugin that fails to
import, raises in its hook or returns something that is not an Operation is recorded
(status ``failed``, a ``PluginWarning``) while everything else keeps working.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar, overload

import pluggy

from . import hookspecs
from .errors import (
    AmbiguousOperationError,
    PluginWarning,
    RegistrationError,
    UnknownOperationError,
)
from .operation import Operation

__all__ = ["Registry", "PluginInfo", "OperationInfo", "default_registry", "register_operation"]

log = logging.getLogger(__name__)

FIRST_PARTY = "tapegrad"
T = TypeVar("T", bound=type[Operation])


def _normalize(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


@dataclass(frozen=True)
class OperationInfo:
    """One registered operation: its class and who provides it."""

    name: str
    cls: type[Operation]
    plugin: str
    distribution: str | None = None
    version: str | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    @property
    def provider(self) -> str:
        """``plugin (distribution==version)``, for messages."""
        if self.distribution:
            return f"{self.plugin} ({self.distribution}=={self.version})"
        return f"{self.plugin} (registered at run time from {self.cls.__module__})"

    @property
    def summary(self) -> str:
        doc = (self.cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


@dataclass
class PluginInfo:
    """A plugin as the registry saw it: ``status`` is "ok", "blocked" or "failed"."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"
    error: str | None = None
    operations: list[str] = field(default_factory=list)
    source: str = "entry point"

    @property
    def status_text(self) -> str:
        return f"{self.status}: {self.error}" if self.error else self.status


class Registry:
    """Maps operation names to classes, from entry-point plugins and run-time registration.

    ``entry_points=False`` gives an empty registry (for tests and embedding). Entry points
    are read on first use; ``TAPEGRAD_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or
    distribution name and ``TAPEGRAD_AUTOLOAD=0`` loads the first-party plugins only.
    """

    def __init__(self, *, entry_points: bool = True, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._use_entry_points = entry_points
        self._loaded = False
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._providers: dict[str, list[OperationInfo]] = {}
        self._qualified: dict[tuple[str, str], OperationInfo] = {}
        self._overrides: dict[str, OperationInfo] = {}

    # -- loading -----------------------------------------------------------------------
    def load(self) -> None:
        """Read the entry points once (every lookup calls this first)."""
        if self._loaded:
            return
        self._loaded = True
        if self._use_entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        blocked = {_normalize(s.strip()) for s in os.environ.get("TAPEGRAD_DISABLE_PLUGINS", "").split(",") if s.strip()}
        autoload = os.environ.get("TAPEGRAD_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off")
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            info = PluginInfo(ep.name, dist_name, version)
            if _normalize(ep.name) in blocked or (dist_name and _normalize(dist_name) in blocked):
                info.status, info.error = "blocked", "TAPEGRAD_DISABLE_PLUGINS"
            elif not autoload and _normalize(dist_name) != FIRST_PARTY:
                info.status, info.error = "blocked", "TAPEGRAD_AUTOLOAD=0"
            if info.status == "blocked":
                log.info("tapegrad plugin %r (%s) blocked by %s", ep.name, dist_name, info.error)
                self._record_plugin(info, duplicate_ok=True)
                continue
            if ep.name in self._plugins:
                other = self._plugins[ep.name]
                self._fail(info, f"entry point name {ep.name!r} is already used by {other.distribution}")
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                self._fail(info, f"import of {ep.value!r} failed: {type(exc).__name__}: {exc}")
                continue
            self._add_plugin(plugin, info)

    def _record_plugin(self, info: PluginInfo, duplicate_ok: bool = False) -> None:
        key = info.name
        if key in self._plugins and duplicate_ok:
            key = f"{info.name} ({info.distribution})"
        self._plugins[key] = info

    def _fail(self, info: PluginInfo, error: str) -> None:
        info.status, info.error = "failed", error
        self._record_plugin(info, duplicate_ok=True)
        where = f" from distribution {info.distribution}" if info.distribution else ""
        warnings.warn(
            f"tapegrad plugin {info.name!r}{where} was not loaded: {error}. "
            "Its operations are unavailable; everything else works.",
            PluginWarning,
            stacklevel=4,
        )

    def _add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        try:
            self._pm.register(plugin, name=info.name)
        except Exception as exc:
            self._fail(info, f"{type(exc).__name__}: {exc}")
            return
        impls = [i for i in self._pm.hook.tapegrad_operations.get_hookimpls() if i.plugin_name == info.name]
        if not impls:
            self._pm.unregister(name=info.name)
            self._fail(info, "it has no @tapegrad.hookimpl function tapegrad_operations()")
            return
        classes: list[type[Operation]] = []
        try:
            for impl in impls:
                classes.extend(impl.function())  # type: ignore[arg-type]
        except Exception as exc:
            self._pm.unregister(name=info.name)
            self._fail(info, f"tapegrad_operations() raised {type(exc).__name__}: {exc}")
            return
        bad = [c for c in classes if not (isinstance(c, type) and issubclass(c, Operation))]
        if bad:
            self._pm.unregister(name=info.name)
            self._fail(info, f"tapegrad_operations() returned non-Operation entries: {bad!r}")
            return
        self._plugins[info.name] = info
        for cls in classes:
            self._add(OperationInfo(cls.__name__, cls, info.name, info.distribution, info.version))
            info.operations.append(cls.__name__)

    def _add(self, op: OperationInfo) -> None:
        providers = self._providers.setdefault(op.name, [])
        self._qualified[(op.plugin, op.name)] = op
        if not any(p.cls is op.cls for p in providers):
            providers.append(op)

    def register_plugin(
        self, plugin: Any, name: str, *, distribution: str | None = None, version: str | None = None
    ) -> PluginInfo:
        """Register a plugin object (a module or object with ``@hookimpl tapegrad_operations``)."""
        self.load()
        info = PluginInfo(name, distribution, version, source="run time")
        if name in self._plugins:
            raise RegistrationError(f"a plugin named {name!r} is already registered")
        self._add_plugin(plugin, info)
        return info

    # -- run-time registration ---------------------------------------------------------
    def register_operation(self, cls: T, *, plugin: str = "runtime", override: bool = False) -> T:
        """Register ``cls`` under its class name; see ``tapegrad.register_operation``."""
        if not (isinstance(cls, type) and issubclass(cls, Operation)):
            raise RegistrationError(f"register_operation expects an Operation subclass, got {cls!r}")
        self.load()
        name = cls.__name__
        providers = self._providers.get(name, [])
        if any(p.cls is cls for p in providers):
            return cls
        if providers and not override:
            listed = "; ".join(p.provider for p in providers)
            raise RegistrationError(
                f"operation {name!r} is already provided by {listed}; pass override=True to make "
                f"this class the one '{name}' resolves to (the others stay reachable as 'plugin:{name}')"
            )
        op = OperationInfo(name, cls, plugin)
        if (plugin, name) in self._qualified:
            old = self._qualified[(plugin, name)]
            self._providers[name] = [p for p in providers if p is not old]
        self._add(op)
        if override:
            self._overrides[name] = op
        info = self._plugins.get(plugin)
        if info is None or info.source != "run time":
            info = self._plugins.setdefault(plugin, PluginInfo(plugin, source="run time"))
        if name not in info.operations:
            info.operations.append(name)
        return cls

    # -- lookup ------------------------------------------------------------------------
    def lookup(self, name: str) -> OperationInfo:
        """The ``OperationInfo`` for ``"Name"`` or ``"plugin:Name"``."""
        self.load()
        if ":" in name:
            plugin, _, short = name.partition(":")
            found = self._qualified.get((plugin, short))
            if found is not None:
                return found
            if plugin not in self._plugins:
                raise UnknownOperationError(
                    f"no plugin named {plugin!r} (for {name!r}); loaded plugins: "
                    f"{', '.join(sorted(self._plugins)) or 'none'}. Run `tapegrad plugins` to list them."
                )
            offered = ", ".join(self._plugins[plugin].operations) or "nothing"
            raise UnknownOperationError(f"plugin {plugin!r} has no operation {short!r}; it offers: {offered}")
        if name in self._overrides:
            return self._overrides[name]
        providers = self._providers.get(name)
        if not providers:
            raise UnknownOperationError(self._unknown_message(name))
        if len(providers) > 1:
            listed = "\n".join(f"  - {p.provider}: use {p.qualified_name!r}" for p in providers)
            raise AmbiguousOperationError(
                f"operation {name!r} is offered by {len(providers)} plugins:\n{listed}\n"
                f"Ask for one by its qualified name, or block a plugin with TAPEGRAD_DISABLE_PLUGINS."
            )
        return providers[0]

    def resolve(self, name: str) -> type[Operation]:
        """The class for ``"Name"`` or ``"plugin:Name"``."""
        return self.lookup(name).cls

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._providers)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        close += [k for k in known if k.lower() == name.lower() and k not in close]
        message = f"unknown operation {name!r}"
        if close:
            message += f"; did you mean {' or '.join(repr(c) for c in close)}"
        unavailable = [p for p in self._plugins.values() if p.status != "ok"]
        if unavailable:
            message += " (not loaded: " + ", ".join(f"{p.name} [{p.status_text}]" for p in unavailable) + ")"
        return message + ". Run `tapegrad ops` to list every operation."

    def operations(self) -> list[OperationInfo]:
        """Every registered operation (one row per provider), sorted by name."""
        self.load()
        rows = [p for providers in self._providers.values() for p in providers]
        return sorted(rows, key=lambda p: (p.name.lower(), p.plugin))

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, with its status."""
        self.load()
        return sorted(self._plugins.values(), key=lambda p: p.name)

    def __contains__(self, name: object) -> bool:
        try:
            self.lookup(str(name))
        except (UnknownOperationError, AmbiguousOperationError):
            return False
        return True


_default: Registry | None = None


def default_registry() -> Registry:
    """The process-wide registry every Graph uses unless given its own."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_default_registry() -> None:
    """Forget the default registry, so the next use re-reads entry points and environment."""
    global _default
    _default = None


@overload
def register_operation(cls: T, *, plugin: str = ..., override: bool = ...) -> T: ...
@overload
def register_operation(cls: None = ..., *, plugin: str = ..., override: bool = ...) -> Callable[[T], T]: ...
def register_operation(cls: Any = None, *, plugin: str = "runtime", override: bool = False) -> Any:
    """Register an Operation subclass at run time; usable as ``@register_operation``.

    A name that already exists raises ``RegistrationError`` unless ``override=True``;
    registering the same class again does nothing. ``plugin`` names it for
    ``"plugin:Name"`` lookups.
    """
    if cls is None:
        return lambda c: default_registry().register_operation(c, plugin=plugin, override=override)
    return default_registry().register_operation(cls, plugin=plugin, override=override)


def iter_operations(registry: Registry | None = None, plugins: Iterable[str] | None = None) -> list[OperationInfo]:
    """Operations of ``registry`` (default: the default one), optionally of some plugins only."""
    rows = (registry or default_registry()).operations()
    if plugins is not None:
        wanted = set(plugins)
        rows = [r for r in rows if r.plugin in wanted or r.distribution in wanted]
    return rows
