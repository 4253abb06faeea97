"""pytest plugin (entry point ``pytest11``): ``pytest --tapegrad-contract[=PLUGIN[,PLUGIN]]``.

Generates one test per (operation sample, contract check) for every registered op, or for
the named plugins only (exact entry-point or distribution names), with no test file at all.
When nothing matches, the run fails rather than passing green with zero checks.
"""

from __future__ import annotations

from typing import Any

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
        self.check(self.case)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        from .testing import ContractError

        if isinstance(excinfo.value, ContractError):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Any, int | None, str]:
        return self.path, None, f"tapegrad contract: {self.name}"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    wanted = config.getoption("tapegrad_contract")
    if wanted is None:
        return
    from .testing import case_id, collect_cases

    plugins = None if wanted == ALL else [p.strip() for p in wanted.split(",") if p.strip()]
    pairs = collect_cases(plugin=plugins)
    if not pairs:
        raise pytest.UsageError(
            f"--tapegrad-contract={wanted}: no registered operation matched "
            "(plugin names match exactly; see `tapegrad plugins`)"
        )
    for case, check in pairs:
        items.append(ContractItem.from_parent(session, name=f"contract::{case_id(case, check)}", case=case, check=check))
