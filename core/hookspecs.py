"""The hooks a tapegrad plugin implements; for a plugin author, this file is the manual.

A plugin is any module or object with functions marked ``@tapegrad.hookimpl``, published
through an entry point in group ``tapegrad``::

    [project.entry-points.tapegrad]
    myops = "myops.plugin"

or registered at run time (``tapegrad.register_operation`` for single classes,
``Registry.register_plugin`` for a whole plugin object).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .operation import Operation

PROJECT = "tapegrad"
ENTRY_POINT_GROUP = "tapegrad"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tapegrad_operations() -> list[type[Operation]]:  # type: ignore[empty-body]
    """Return the Operation subclasses this plugin provides.

    Called once per plugin, the first time the registry is asked for an operation.
    Each class is registered under its class name; users reach it as
    ``graph.get_operation("Name")`` or, when two plugins offer one name,
    ``graph.get_operation("plugin:Name")`` where ``plugin`` is the entry-point name.
    """
