"""pytest plugin (entry point ``pytest11``): ``pytest --tapegrad-contract[=PLUGIN[,PLUGIN]]``.

Generates one test per (operation sample, contract check) for every registered op, or for
the named plugins only (exact entry-point or distribution names), with no test file at all.
A check whose prerequisite failed on the same sample is skipped, naming it; the
prerequisite's own test fails.

The run never passes green with checks missing: when a named plugin is not installed,
failed to load or is blocked, or when nothing matches, collection stops with
``pytest.exit(reason, returncode=2)`` (exit code 2, pytest's INTERRUPTED, as for a
collection error), and the reason (the plugin and its load error) is printed on stderr
and in the summary.
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import pytest

ALL = "*"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("tapegrad")
    group.addoption(
        "--tapegrad-contract",
        action="store",
        nargs="?",
        const=ALL,
        default=None,
        metavar="PLUGIN[,PLUGIN]",
        help="run tapegrad's operation contract on every registered op, or on the named plugins' ops",
    )


class ContractItem(pytest.Item):
    """One contract check on one operation sample."""

    def __init__(self, *, case: Any, check: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case
        self.check = check

    def runtest(self) -> None:
        from .testing import ContractSkip

        try:
            self.check(self.case)
        except ContractSkip as exc:  # a check it requires failed (that one's item fails)
            pytest.skip(str(exc))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .testing import ContractError

        if isinstance(excinfo.value, ContractError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"tapegrad contract: {self.name}"


def _stop(reason: str) -> NoReturn:
    # pytest prints the reason of an exit during collection only in the terminal summary (stdout);
    # like pytest's own usage errors it also goes to stderr (captured now, flushed when pytest ends).
    sys.stderr.write(f"ERROR: {reason}\n")
    pytest.exit(reason, returncode=pytest.ExitCode.INTERRUPTED)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("tapegrad_contract")
    if wanted is None:
        return
    from .errors import PluginUnavailableError
    from .registry import default_registry
    from .testing import case_id, collect_cases

    plugins = None if wanted == ALL else [p.strip() for p in wanted.split(",") if p.strip()]
    try:
        if plugins:
            default_registry().require(plugins)
    except PluginUnavailableError as exc:
        _stop(f"--tapegrad-contract={wanted}: {'no registered operation matched: ' if exc.missing else ''}{exc}")
    pairs = collect_cases(plugin=plugins)
    if not pairs:
        _stop(
            f"--tapegrad-contract={wanted}: no registered operation matched "
            "(plugin names match exactly; see `tapegrad plugins`)"
        )
    for case, check in pairs:
        items.append(
            ContractItem.from_parent(session, name=f"contract::{case_id(case, check)}", case=case, check=check)
        )
