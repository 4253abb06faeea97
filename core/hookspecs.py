"""The hooks a tapegrad plugin implements; for a plugin author, this file is the manual.

A plugin is any module or object with functions marked ``@tapegrad.hookimpl``, published
through an entry point in group ``tapegrad``. It implements one hook or both: ``tapegrad_operations``
(ops) and ``tapegrad_models`` (runnable models, for ``tapegrad train --model NAME``)::

    [project.entry-points.tapegrad]
    myops = "myops.plugin"

or registered at run time (``tapegrad.register_operation`` for single classes,
``Registry.register_plugin`` for a whole plugin object).

The plugin name (``myops`` above) is what ``"myops:Name"``, ``--plugin myops`` and
``TAPEGRAD_DISABLE_PLUGINS`` use: it cannot contain ``:``, ``,`` or whitespace, and
tapegrad's own names are taken (its plugins ``math``, ``activations``, ``layers``,
``losses``, ``tasks``; ``tapegrad``; ``runtime``, the default of run-time registration). A plugin
that implements neither hook, breaks a rule here, or raises anything (``SystemExit`` included) at
import or in its hook, is reported as failed (``tapegrad plugins``, a ``PluginWarning``);
everything else keeps working.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .operation import Operation
    from .tasks import Task

PROJECT = "tapegrad"
ENTRY_POINT_GROUP = "tapegrad"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tapegrad_operations() -> list[type[Operation]]:  # type: ignore[empty-body]
    """Return the Operation subclasses this plugin provides, as a list (or tuple).

    Called once per plugin, the first time the registry is asked for an operation or model; at
    most 10,000 entries are read, so an endless iterable fails the plugin instead of
    hanging. Each class is registered under its class name, which must be a Python
    identifier; two different classes with one name fail the plugin (the same class
    twice counts once). Users reach a class as
    ``graph.get_operation("Name")`` or, when two plugins offer one name,
    ``graph.get_operation("plugin:Name")`` where ``plugin`` is the entry-point name.
    """


@hookspec
def tapegrad_models() -> list[type[Task]]:  # type: ignore[empty-body]
    """Return the runnable models this plugin provides: ``tapegrad.tasks.Task`` subclasses, as a list.

    Each is offered as ``tapegrad train --model NAME`` and ``tapegrad evaluate --model NAME`` under its
    ``name`` attribute (lowercase letters, digits and single hyphens, starting with a letter: ``char-lstm``),
    and listed by ``tapegrad train --help``; ``tapegrad.tasks`` says what a Task defines. The rules of
    ``tapegrad_operations`` apply: called once, at most 10,000 entries read, two different classes with
    one name fail the plugin (the same class twice counts once). When two plugins offer one name,
    ``--model plugin:name`` picks one. A plugin may implement this hook alone, or with
    ``tapegrad_operations`` in the same module (a pack offering its ops and a model built on them).
    """
