"""The registry of operations and runnable models: pluggy plugins found through entry points, loaded lazily.

Each entry point of group ``tapegrad`` is loaded on its own. A plugin offers operations
(``tapegrad_operations``), models (``tapegrad_models``) or both. One that implements neither hook,
fails to import, raises (even ``SystemExit``) at import or in a hook, returns anything but a finite
collection of distinct, nameable Operation (or Task) subclasses, or takes a name it may not have, is
recorded as ``failed`` (with a ``PluginWarning``) while everything else keeps working.
Entry points of the ``tapegrad`` distribution itself are read first and own their names,
whatever the ``sys.path`` order.

A Registry is safe to share between threads: every read and write holds its lock, and the
first load publishes nothing until every entry point has been read.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import logging
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal, TypeVar, overload

import pluggy

from . import hookspecs
from .errors import (
    AmbiguousOperationError,
    PluginUnavailableError,
    PluginWarning,
    RegistrationError,
    UnknownOperationError,
)
from .operation import Loss, Operation

__all__ = [
    "Registry",
    "PluginInfo",
    "OperationInfo",
    "ModelInfo",
    "default_registry",
    "register_operation",
]

log = logging.getLogger(__name__)

FIRST_PARTY = "tapegrad"
RUNTIME = "runtime"  # the plugin name of run-time registrations that give none
#: The most entries a plugin's ``tapegrad_operations()`` (or ``tapegrad_models()``) may return; more is
#: taken for an endless iterable.
MAX_OPERATIONS_PER_PLUGIN = 10_000
_MODEL_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")
T = TypeVar("T", bound=type[Operation])


def _normalize(name: str | None) -> str:
    return re.sub(r"[-_.]+", "-", name or "").lower()


def _describe(value: object) -> str:
    """``repr`` for messages, safe against objects whose ``repr`` raises, and kept short."""
    try:
        text = repr(value)
    except BaseException:  # a hostile __repr__ must not take the registry down
        text = f"<{type(value).__name__} object>"
    return text if len(text) <= 80 else text[:77] + "..."


def _error_text(exc: BaseException) -> str:
    """``Type: message`` on one line, safe against exceptions whose ``str`` raises."""
    try:
        message = " ".join(str(exc).split())
    except BaseException:
        message = "<unprintable message>"
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _class_path(cls: type) -> str:
    return f"{getattr(cls, '__module__', '?')}.{getattr(cls, '__qualname__', cls.__name__)}"


def plugin_name_problem(name: object) -> str | None:
    """Why ``name`` cannot name a plugin (None if it can).

    A plugin name is used in ``"plugin:Name"`` lookups and in comma-separated lists
    (``--plugin a,b``, ``TAPEGRAD_DISABLE_PLUGINS``), so it cannot contain ``:``, ``,``
    or whitespace.
    """
    if not isinstance(name, str) or not name:
        return f"a plugin name must be a non-empty string, got {_describe(name)}"
    if ":" in name or "," in name or any(c.isspace() for c in name):
        return f"plugin name {name!r} contains ':', ',' or whitespace, so it cannot be asked for"
    return None


def operation_name_problem(name: object) -> str | None:
    """Why ``name`` (a class's ``__name__``) cannot be a registry name (None if it can).

    Registry names are Python identifiers, like the class statements that make them: a
    ``:`` would read as ``"plugin:Name"``, and ``.`` or spaces would break parameter names.
    """
    if not isinstance(name, str) or not name.isidentifier():
        return f"operation name {_describe(name)} is not a Python identifier, so it cannot be looked up"
    return None


def model_name_problem(name: object) -> str | None:
    """Why ``name`` (a Task's ``name``) cannot name a model (None if it can).

    Model names are what ``--model`` takes: lowercase letters, digits and single hyphens,
    starting with a letter (``mlp``, ``char-lstm``).
    """
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        return (
            f"model name {_describe(name)} is not lowercase letters, digits and single hyphens starting with "
            "a letter (like 'char-lstm'), so --model could not ask for it"
        )
    return None


class _PluginFailed(Exception):
    """Internal: a plugin breaks a rule; the message says which."""


@dataclass(frozen=True)
class _Provided:
    """A registered class and who provides it: the plugin, and the distribution it came from."""

    name: str
    cls: type
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


@dataclass(frozen=True)
class OperationInfo(_Provided):
    """One registered operation: its class and who provides it."""

    cls: type[Operation]

    @property
    def summary(self) -> str:
        """The first line of the op's docstring ("" when it has none, or none that is text)."""
        try:
            doc = self.cls.__doc__
        except Exception:  # a hostile class attribute must not take `tapegrad ops` down
            return ""
        lines = doc.strip().splitlines() if isinstance(doc, str) else []
        return lines[0] if lines else ""


@dataclass(frozen=True)
class ModelInfo(_Provided):
    """One registered runnable model (a ``tapegrad.tasks.Task`` subclass) and who provides it."""

    @property
    def summary(self) -> str:
        """The Task's one-line ``summary`` ("" when it has none that is text)."""
        try:
            text = getattr(self.cls, "summary", "")
        except Exception:  # a hostile class attribute must not take `tapegrad train --help` down
            return ""
        return " ".join(text.split()) if isinstance(text, str) else ""


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
    models: list[str] = field(default_factory=list)

    @property
    def status_text(self) -> str:
        return f"{self.status}: {self.error}" if self.error else self.status

    @property
    def label(self) -> str:
        """``'name' (distribution==version)``, for messages."""
        return f"{self.name!r} ({self.distribution}=={self.version})" if self.distribution else repr(self.name)


class Registry:
    """Maps operation names to classes, and model names to Task classes, from entry-point plugins and
    run-time registration.

    ``entry_points=False`` gives an empty registry (for tests and embedding). Entry points
    are read on first use; ``TAPEGRAD_DISABLE_PLUGINS=a,b`` blocks plugins by entry-point or
    distribution name and ``TAPEGRAD_AUTOLOAD=0`` loads the first-party plugins only.

    Queries: ``lookup``/``resolve`` (one name), ``operations`` (optionally of some plugins),
    ``lookup_model``/``models`` (runnable models, ``tapegrad.tasks``), ``plugins`` (with their status)
    and ``require`` (the named plugins, all loaded). Every
    method is thread-safe; a plugin must not wait at import for another thread that uses
    the registry (that thread waits for the load to finish).
    """

    def __init__(self, *, entry_points: bool = True, group: str = hookspecs.ENTRY_POINT_GROUP) -> None:
        self.group = group
        self._use_entry_points = entry_points
        # Reentrant: a plugin may call tapegrad.register_operation while it is being imported.
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False
        self._reset()

    def _reset(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._providers: dict[str, list[OperationInfo]] = {}
        self._qualified: dict[tuple[str, str], OperationInfo] = {}
        self._overrides: dict[str, OperationInfo] = {}
        self._model_providers: dict[str, list[ModelInfo]] = {}
        self._qualified_models: dict[tuple[str, str], ModelInfo] = {}
        self._unwarned: list[str] = []  # PluginWarnings to issue once the lock is released

    # -- loading -----------------------------------------------------------------------
    def load(self) -> None:
        """Read the entry points once (every query calls this first).

        Other threads wait until the load is complete; if it is interrupted (e.g. by
        KeyboardInterrupt) nothing is kept and the next query loads again.
        """
        with self._lock:
            if self._loaded or self._loading:  # _loading: the loading thread re-entering from a plugin
                return
            self._loading = True
            try:
                if self._use_entry_points:
                    self._load_entry_points()
            except BaseException:
                self._reset()
                raise
            finally:
                self._loading = False
            self._loaded = True
        self._warn()

    def _warn(self) -> None:
        # Outside the lock, so that warnings turned into errors (-W error) leave a complete registry.
        with self._lock:
            messages, self._unwarned = self._unwarned, []
        for message in messages:
            warnings.warn(message, PluginWarning, stacklevel=4)

    def _load_entry_points(self) -> None:
        blocked = {
            _normalize(s.strip()) for s in os.environ.get("TAPEGRAD_DISABLE_PLUGINS", "").split(",") if s.strip()
        }
        autoload = os.environ.get("TAPEGRAD_AUTOLOAD", "1").strip().lower() not in ("0", "false", "no", "off")
        found = [(ep, *_distribution(ep)) for ep in entry_points(group=self.group)]
        # tapegrad's own entry points first: they own their names whatever the sys.path order.
        found.sort(key=lambda row: _normalize(row[1]) != FIRST_PARTY)
        # Also reserved: the distribution's own name (``--plugin tapegrad``) and run-time registration's default.
        reserved = {ep.name for ep, dist, _ in found if _normalize(dist) == FIRST_PARTY} | {FIRST_PARTY, RUNTIME}
        for ep, dist_name, version in found:
            info = PluginInfo(ep.name, dist_name, version)
            first_party = _normalize(dist_name) == FIRST_PARTY
            if _normalize(ep.name) in blocked or (dist_name and _normalize(dist_name) in blocked):
                info.status, info.error = "blocked", "TAPEGRAD_DISABLE_PLUGINS"
            elif not autoload and not first_party:
                info.status, info.error = "blocked", "TAPEGRAD_AUTOLOAD=0"
            if info.status == "blocked":
                log.info("tapegrad plugin %r (%s) blocked by %s", ep.name, dist_name, info.error)
                self._record(info)
                continue
            problem = plugin_name_problem(ep.name)
            if problem is not None:
                self._fail(info, problem)
                continue
            if not first_party and ep.name in reserved:
                clash = f"entry point name {ep.name!r} is reserved for tapegrad's own use; rename the entry point"
            elif ep.name in self._plugins:
                clash = f"entry point name {ep.name!r} is already used by plugin {self._plugins[ep.name].label}"
            else:
                clash = None
            if clash is not None:
                # Never under the plain name: asking for the name must reach its owner, not this plugin.
                self._fail(info, clash, owner=False)
                continue
            try:
                plugin = ep.load()
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # SystemExit at import fails the plugin, not the process
                self._fail(info, f"import of {ep.value!r} failed: {_error_text(exc)}")
                continue
            self._add_plugin(plugin, info)

    def _record(self, info: PluginInfo, *, owner: bool = True) -> None:
        """Keep ``info`` for ``plugins()``, under its name if it owns it, else under ``name (distribution)``."""
        key, n = info.name, 1
        while key in self._plugins or (not owner and key == info.name):
            key = f"{info.name} ({info.distribution or info.source})" + (f" #{n}" if n > 1 else "")
            n += 1
        self._plugins[key] = info

    def _fail(self, info: PluginInfo, error: str, *, owner: bool = True) -> None:
        info.status, info.error = "failed", error
        info.operations.clear()
        info.models.clear()
        self._record(info, owner=owner)
        where = f" from distribution {info.distribution}" if info.distribution else ""
        self._unwarned.append(
            f"tapegrad plugin {info.name!r}{where} was not loaded: {error}. "
            "Its operations and models are unavailable; everything else works."
        )

    def _add_plugin(self, plugin: Any, info: PluginInfo) -> None:
        """Register ``plugin`` and its operations, or record it as failed; never raises but KeyboardInterrupt."""
        registered = False
        try:
            if plugin is None:
                raise _PluginFailed("the entry point resolved to None, not a module or object")
            if self._pm.is_registered(plugin):
                raise _PluginFailed(f"the same object is already registered as plugin {self._pm.get_name(plugin)!r}")
            self._pm.register(plugin, name=info.name)
            registered = True
            classes = self._collect(info.name, "tapegrad_operations")
            models = self._collect(info.name, "tapegrad_models")
            if classes is None and models is None:
                raise _PluginFailed(
                    "it has no @tapegrad.hookimpl function tapegrad_operations() or tapegrad_models()"
                )
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # whatever a plugin does, it fails alone
            if registered:
                try:
                    self._pm.unregister(name=info.name)
                except Exception:
                    log.debug("could not unregister failed plugin %r", info.name, exc_info=True)
            self._fail(info, str(exc) if isinstance(exc, _PluginFailed) else _error_text(exc))
            return
        self._record(info)
        for cls in classes or ():
            self._add(OperationInfo(cls.__name__, cls, info.name, info.distribution, info.version))
            info.operations.append(cls.__name__)
        for name, cls in models or ():
            self._add_model(ModelInfo(name, cls, info.name, info.distribution, info.version))
            info.models.append(name)

    @overload
    def _collect(self, plugin_name: str, hook: Literal["tapegrad_operations"]) -> list[type[Operation]] | None: ...
    @overload
    def _collect(self, plugin_name: str, hook: Literal["tapegrad_models"]) -> list[tuple[str, type]] | None: ...
    def _collect(self, plugin_name: str, hook: str) -> Any:
        """What a registered plugin's ``hook`` returns, checked: the distinct Operation classes, or
        (name, Task class) pairs for ``tapegrad_models``; None when the plugin does not implement it.
        Raises on any fault."""
        impls = [i for i in getattr(self._pm.hook, hook).get_hookimpls() if i.plugin_name == plugin_name]
        if not impls:
            return None
        entries: list[Any] = []
        for impl in impls:
            if getattr(impl, "hookwrapper", False) or getattr(impl, "wrapper", False):
                raise _PluginFailed(f"{hook}() must be a plain @tapegrad.hookimpl, not a wrapper")
            try:
                entries.extend(_finite_entries(impl.function(), hook))
            except (_PluginFailed, KeyboardInterrupt):
                raise
            except BaseException as exc:
                raise _PluginFailed(f"{hook}() raised {_error_text(exc)}") from None
        return _checked_models(entries) if hook == "tapegrad_models" else _checked_operations(entries)

    def _add(self, op: OperationInfo) -> None:
        providers = self._providers.setdefault(op.name, [])
        self._qualified[(op.plugin, op.name)] = op
        if not any(p.cls is op.cls for p in providers):
            providers.append(op)

    def _add_model(self, model: ModelInfo) -> None:
        providers = self._model_providers.setdefault(model.name, [])
        self._qualified_models[(model.plugin, model.name)] = model
        if not any(p.cls is model.cls for p in providers):
            providers.append(model)

    # -- run-time registration ---------------------------------------------------------
    def register_plugin(
        self, plugin: Any, name: str, *, distribution: str | None = None, version: str | None = None
    ) -> PluginInfo:
        """Register a plugin object (a module or object with ``@hookimpl tapegrad_operations``).

        A name that is taken or unusable raises ``RegistrationError``; a plugin that breaks
        the hook's rules is recorded as failed (with a ``PluginWarning``), like an entry point.
        """
        problem = plugin_name_problem(name)
        if problem is not None:
            raise RegistrationError(problem)
        self.load()
        with self._lock:
            if name in self._plugins:
                raise RegistrationError(f"a plugin named {name!r} is already registered ({self._plugins[name].label})")
            info = PluginInfo(name, distribution, version, source="run time")
            self._add_plugin(plugin, info)
        self._warn()
        return info

    def register_operation(self, cls: T, *, plugin: str = RUNTIME, override: bool = False) -> T:
        """Register ``cls`` under its class name; see ``tapegrad.register_operation``."""
        if not (isinstance(cls, type) and issubclass(cls, Operation)) or cls is Operation or cls is Loss:
            raise RegistrationError(f"register_operation expects an Operation subclass, got {_describe(cls)}")
        problem = plugin_name_problem(plugin) or operation_name_problem(cls.__name__)
        if problem is not None:
            raise RegistrationError(f"register_operation({cls.__qualname__}): {problem}")
        self.load()
        with self._lock:
            owner = self._plugins.get(plugin)
            if owner is not None and owner.source != "run time":
                raise RegistrationError(
                    f"register_operation({cls.__qualname__}): plugin name {plugin!r} belongs to "
                    f"plugin {owner.label}; pass plugin='another-name'"
                )
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
            old = self._qualified.get((plugin, name))
            if old is not None:
                self._providers[name] = [p for p in providers if p is not old]
            self._add(op)
            if override:
                self._overrides[name] = op
            if owner is None:
                owner = PluginInfo(plugin, source="run time")
                self._plugins[plugin] = owner
            if name not in owner.operations:
                owner.operations.append(name)
        return cls

    # -- queries -----------------------------------------------------------------------
    def lookup(self, name: str) -> OperationInfo:
        """The ``OperationInfo`` for ``"Name"`` or ``"plugin:Name"``.

        Raises ``UnknownOperationError`` (with close matches and the plugins that did not
        load) or ``AmbiguousOperationError`` (listing the qualified names to use).
        """
        self.load()
        with self._lock:
            if ":" in name:
                return self._lookup_qualified(name)
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

    def _lookup_qualified(self, name: str) -> OperationInfo:
        plugin, _, short = name.partition(":")
        found = self._qualified.get((plugin, short))
        if found is not None:
            return found
        info = self._plugins.get(plugin)
        if info is None:
            raise UnknownOperationError(
                f"no plugin named {plugin!r} (for {name!r}); loaded plugins: "
                f"{', '.join(sorted(self._plugins)) or 'none'}. Run `tapegrad plugins` to list them."
            )
        if info.status != "ok":
            raise UnknownOperationError(f"plugin {info.label} is unavailable ({info.status_text}), so {name!r} is too")
        offered = ", ".join(info.operations) or "nothing"
        raise UnknownOperationError(f"plugin {plugin!r} has no operation {short!r}; it offers: {offered}")

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
        return message + self._not_loaded() + ". Run `tapegrad ops` to list every operation."

    def _not_loaded(self) -> str:
        """`` (not loaded: plugin [why], ...)`` for messages ("" when every plugin loaded)."""
        unavailable = [p for p in self._plugins.values() if p.status != "ok"]
        if not unavailable:
            return ""
        return " (not loaded: " + ", ".join(f"{p.name} [{p.status_text}]" for p in unavailable) + ")"

    def _rows(self, by_name: Mapping[str, list[Any]], plugin: str | Iterable[str] | None) -> list[Any]:
        """Every provider in ``by_name`` (of the plugins ``plugin`` names, if given), sorted by name."""
        self.load()
        wanted = None if plugin is None else ({plugin} if isinstance(plugin, str) else set(plugin))
        with self._lock:
            rows = [p for providers in by_name.values() for p in providers]
        if wanted is not None:
            rows = [r for r in rows if r.plugin in wanted or r.distribution in wanted]
        return sorted(rows, key=lambda p: (p.name.lower(), p.plugin))

    def operations(self, plugin: str | Iterable[str] | None = None) -> list[OperationInfo]:
        """Every registered operation (one row per provider), sorted by name.

        ``plugin`` keeps those of some plugins only: entry-point, run-time or distribution
        names, matched exactly.
        """
        return self._rows(self._providers, plugin)

    def plugins(self) -> list[PluginInfo]:
        """Every plugin seen, with its status (copies: changing them changes nothing here)."""
        self.load()
        with self._lock:
            rows = [_copy(p) for p in self._plugins.values()]
        return sorted(rows, key=lambda p: (p.name, p.distribution or ""))

    def require(self, names: str | Iterable[str]) -> list[PluginInfo]:
        """The plugins named (entry-point, run-time or distribution names, matched exactly).

        Raises ``PluginUnavailableError`` naming every one that is not installed, failed to
        load or is blocked, with the reason. For callers that were asked to run a plugin's
        operations, where "nothing to run" must not read as success.
        """
        self.load()
        wanted = [names] if isinstance(names, str) else list(names)
        found: list[PluginInfo] = []
        missing: list[str] = []
        unavailable: list[PluginInfo] = []
        with self._lock:
            for name in dict.fromkeys(wanted):
                owner = self._plugins.get(name)
                rows = [owner] if owner is not None else [p for p in self._plugins.values() if p.distribution == name]
                if not rows:
                    missing.append(name)
                unavailable += [p for p in rows if p.status != "ok"]
                found += [_copy(p) for p in rows]
            known = ", ".join(sorted({p.name for p in self._plugins.values()})) or "none"
        if missing or unavailable:
            problems = [
                f"plugin {name!r} is not installed (no entry point, run-time plugin or distribution has that "
                f"exact name; known plugins: {known})"
                for name in missing
            ]
            problems += [f"plugin {p.label} did not load ({p.status_text})" for p in unavailable]
            raise PluginUnavailableError(
                "; ".join(problems), missing=tuple(missing), unavailable=tuple(p.name for p in unavailable)
            )
        return found

    def models(self, plugin: str | Iterable[str] | None = None) -> list[ModelInfo]:
        """Every registered runnable model (one row per provider), sorted by name; ``plugin`` as for
        ``operations``."""
        return self._rows(self._model_providers, plugin)  # (model names are lowercase: sorted as they are)

    def lookup_model(self, name: str) -> ModelInfo:
        """The ``ModelInfo`` for ``"name"`` or ``"plugin:name"``; ``PluginUnavailableError`` (with close
        matches and the plugins that did not load) when no loaded plugin offers it, or several do."""
        self.load()
        with self._lock:
            if ":" in name:
                plugin, _, short = name.partition(":")
                found = self._qualified_models.get((plugin, short))
                if found is not None:
                    return found
                info = self._plugins.get(plugin)
                if info is None:
                    raise PluginUnavailableError(
                        f"no plugin named {plugin!r} (for model {name!r}); see `tapegrad plugins`"
                    )
                if info.status != "ok":
                    raise PluginUnavailableError(
                        f"plugin {info.label} is unavailable ({info.status_text}), so model {name!r} is too"
                    )
                offered = ", ".join(info.models) or "none"
                raise PluginUnavailableError(f"plugin {plugin!r} offers no model {short!r}; its models: {offered}")
            providers = self._model_providers.get(name, [])
            if len(providers) == 1:
                return providers[0]
            if providers:
                listed = "; ".join(
                    f"{p.provider}: use --model {p.qualified_name}"
                    for p in sorted(providers, key=lambda p: p.qualified_name)
                )
                raise PluginUnavailableError(f"model {name!r} is offered by {len(providers)} plugins ({listed})")
            known = sorted(self._model_providers)
            message = f"unknown model {name!r}"
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            message += f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "."
            message += f" Installed models: {', '.join(known) or 'none'}"
            raise PluginUnavailableError(message + self._not_loaded())

    def __contains__(self, name: object) -> bool:
        try:
            self.lookup(str(name))
        except (UnknownOperationError, AmbiguousOperationError):
            return False
        return True


def _copy(plugin: PluginInfo) -> PluginInfo:
    """A copy of a plugin's record that callers may change (its lists too)."""
    return dataclasses.replace(plugin, operations=list(plugin.operations), models=list(plugin.models))


def _distribution(ep: EntryPoint) -> tuple[str | None, str | None]:
    """(name, version) of the distribution declaring ``ep``, or Nones when its metadata is unreadable."""
    try:
        dist = ep.dist
        if dist is None:
            return None, None
        return dist.metadata["Name"], dist.version
    except Exception:  # broken metadata of one distribution must not stop the others
        return None, None


def _finite_entries(result: Any, hook: str = "tapegrad_operations") -> list[Any]:
    """The entries of a hook's return value: a finite collection, consumed at most up to the bound."""
    wanted = "Task subclasses" if hook == "tapegrad_models" else "Operation subclasses"
    if result is None:
        raise _PluginFailed(f"{hook}() returned None; it must return a list of {wanted}")
    if isinstance(result, type):
        raise _PluginFailed(f"{hook}() returned the class {result.__name__} itself; return a list: [{result.__name__}]")
    if isinstance(result, (str, bytes, Mapping)) or not isinstance(result, Iterable):
        raise _PluginFailed(
            f"{hook}() returned {type(result).__name__} {_describe(result)}; it must return a list of {wanted}"
        )
    entries = list(itertools.islice(result, MAX_OPERATIONS_PER_PLUGIN + 1))
    if len(entries) > MAX_OPERATIONS_PER_PLUGIN:
        raise _PluginFailed(
            f"{hook}() returned more than {MAX_OPERATIONS_PER_PLUGIN} entries (an endless iterable?); "
            f"return a list of {wanted}"
        )
    return entries


def _shown(bad: list[Any]) -> str:
    return ", ".join(_describe(e) for e in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")


def _checked_operations(entries: list[Any]) -> list[type[Operation]]:
    """``tapegrad_operations()``'s entries: distinct, nameable Operation subclasses (else _PluginFailed)."""
    bad = [e for e in entries if not (isinstance(e, type) and issubclass(e, Operation))]
    if bad:
        raise _PluginFailed(
            f"tapegrad_operations() returned non-Operation entries: {_shown(bad)}; it must return Operation subclasses"
        )
    classes: dict[str, type[Operation]] = {}
    for cls in entries:
        if cls is Operation or cls is Loss:
            raise _PluginFailed(f"tapegrad_operations() returned tapegrad's base class {cls.__name__} itself")
        problem = operation_name_problem(cls.__name__)
        if problem is not None:
            raise _PluginFailed(f"{problem} (class {_class_path(cls)})")
        other = classes.setdefault(cls.__name__, cls)
        if other is not cls:
            raise _PluginFailed(
                f"two different classes are named {cls.__name__!r}: {_class_path(other)} and "
                f"{_class_path(cls)}; only one could be looked up"
            )
    return list(classes.values())


def _checked_models(entries: list[Any]) -> list[tuple[str, type]]:
    """``tapegrad_models()``'s entries as (name, class): distinct Task subclasses with usable names."""
    from .tasks import Task

    bad = [e for e in entries if not (isinstance(e, type) and issubclass(e, Task))]
    if bad:
        raise _PluginFailed(
            f"tapegrad_models() returned entries that are not Task subclasses: {_shown(bad)}; it must return "
            "tapegrad.tasks.Task subclasses"
        )
    classes: dict[str, type] = {}
    for cls in entries:
        if cls is Task:
            raise _PluginFailed("tapegrad_models() returned tapegrad's base class Task itself")
        try:
            name = getattr(cls, "name", None)
        except Exception as exc:  # a hostile class attribute fails its plugin alone
            raise _PluginFailed(f"reading the name of {_class_path(cls)} raised {_error_text(exc)}") from None
        problem = model_name_problem(name)
        if problem is not None or not isinstance(name, str):
            raise _PluginFailed(f"{problem} (class {_class_path(cls)})")
        other = classes.setdefault(name, cls)
        if other is not cls:
            raise _PluginFailed(
                f"two different classes offer model {name!r}: {_class_path(other)} and {_class_path(cls)}; "
                "only one could be asked for"
            )
    return list(classes.items())


_default: Registry | None = None
_default_lock = threading.Lock()


def default_registry() -> Registry:
    """The process-wide registry every Graph uses unless given its own (one, whichever thread asks first)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry()
        return _default


def reset_default_registry() -> None:
    """Forget the default registry, so the next use re-reads entry points and environment."""
    global _default
    with _default_lock:
        _default = None


@overload
def register_operation(cls: T, *, plugin: str = ..., override: bool = ...) -> T: ...
@overload
def register_operation(cls: None = ..., *, plugin: str = ..., override: bool = ...) -> Callable[[T], T]: ...
def register_operation(cls: Any = None, *, plugin: str = RUNTIME, override: bool = False) -> Any:
    """Register an Operation subclass at run time; usable as ``@register_operation``.

    A name that already exists raises ``RegistrationError`` unless ``override=True``;
    registering the same class again does nothing. ``plugin`` names it for
    ``"plugin:Name"`` lookups; it cannot be the name of an entry-point plugin.
    """
    if cls is None:
        return lambda c: default_registry().register_operation(c, plugin=plugin, override=override)
    return default_registry().register_operation(cls, plugin=plugin, override=override)


#: Models of tapegrad's contrib packs, so that asking for one that is not installed names what to install.
PACK_MODELS: dict[str, tuple[str, ...]] = {
    "char-lstm": ("tapegrad-rnn",),
    "ctc-digits": ("tapegrad-ctc", "tapegrad-rnn"),
}


def find_task(name: str, registry: Any = None) -> type[Any]:
    """The Task class of model ``name`` (or ``plugin:name``), from the registry's plugins. A model of
    a contrib pack that is not installed raises PluginUnavailableError naming what to install; an
    unknown name raises PluginUnavailableError too, with close matches."""
    registry = registry if registry is not None else default_registry()
    try:
        return registry.lookup_model(name).cls  # type: ignore[no-any-return]
    except PluginUnavailableError:
        packs = PACK_MODELS.get(name)
        if packs is None or any(row.name == name for row in registry.models()):  # (offered twice: ambiguous)
            raise
    installed = {p.distribution: p for p in registry.plugins() if p.distribution}
    missing = [pack for pack in packs if pack not in installed]
    if missing:
        raise PluginUnavailableError(
            f"model {name!r} comes with {' and '.join(packs)}, and {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install {' '.join(missing)} "
            "(from a source checkout: pip install " + " ".join(f"./contrib/{pack}" for pack in missing) + ")",
            missing=tuple(missing),
        )
    broken = [p for pack in packs for p in [installed[pack]] if p.status != "ok"]
    if broken:
        raise PluginUnavailableError(
            f"model {name!r} comes with {' and '.join(packs)}, but "
            + "; ".join(f"plugin {p.label} did not load ({p.status_text})" for p in broken),
            unavailable=tuple(p.name for p in broken),
        )
    raise PluginUnavailableError(
        f"model {name!r} comes with {' and '.join(packs)}, installed here in a version that does not offer it: "
        "pip install --upgrade " + " ".join(packs)
    )
