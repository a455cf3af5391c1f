"""pytest-xdist scheduling: tests that share a module- or session-scoped fixture run on one
worker.

A module-scoped fixture (one real sweep read back by several tests) is built once per worker
that runs a test using it, so those tests go to the worker as one unit; so do the tests, in
any module, that use one of conftest.py's session-scoped fixtures (one sweep read by tests
of several modules). Every other test is its own unit. (xdist's own `xdist_group` mark
relies on a pytest internal that pytest 9.2 changed, so its groups are silently ignored
there.) Used by conftest's `pytest_xdist_make_scheduler`, in the controller process, which
sees node ids only.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

SHARED_SCOPES = ("module", "package", "session")


def _functions(path: Path) -> list[ast.FunctionDef]:
    return [n for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)]


def _fixture_scope(function: ast.FunctionDef) -> str | None:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and "fixture" in ast.unparse(decorator.func):
            for keyword in decorator.keywords:
                if keyword.arg == "scope":
                    return ast.literal_eval(keyword.value)
    return None


@functools.cache
def session_fixtures(folder: Path) -> frozenset[str]:
    """Names of the session-scoped fixtures of `folder`/conftest.py."""
    conftest = folder / "conftest.py"
    if not conftest.exists():
        return frozenset()
    return frozenset(f.name for f in _functions(conftest) if _fixture_scope(f) == "session")


@functools.cache
def shared_units(module: Path) -> dict[str, str]:
    """{test function: its unit} for the tests in `module` that use a shared fixture,
    directly or through another fixture: `conftest:NAME` for conftest's session fixture
    NAME, else the module's path. A module whose shared fixtures are also used together
    with a session fixture joins that session fixture's unit."""
    functions = _functions(module)
    args = {f.name: {a.arg for a in f.args.args} for f in functions}
    local = {f.name for f in functions if _fixture_scope(f) in SHARED_SCOPES}
    outside = session_fixtures(module.parent) - set(args)  # a local one overrides conftest's
    uses = {name: a & (local | outside) for name, a in args.items()}
    changed = True
    while changed:  # a fixture that takes a shared fixture is shared too
        changed = False
        for name, a in args.items():
            more = set().union(*(uses.get(arg, set()) for arg in a)) - uses[name]
            if more:
                uses[name] |= more
                changed = True
    tests = {n: u for n, u in uses.items() if n.startswith("test") and u}
    module_unit = str(module)
    for used in tests.values():
        if used & local and used & outside:
            module_unit = "conftest:" + ",".join(sorted(used & outside))
            break
    return {
        name: "conftest:" + ",".join(sorted(used & outside)) if used & outside else module_unit
        for name, used in tests.items()
    }


class SharedFixtureScheduling(LoadScopeScheduling):
    """Load scheduling whose units are single tests, except that tests sharing a module- or
    session-scoped fixture form one unit (units with more tests are handed out first)."""

    def _split_scope(self, nodeid: str) -> str:
        path, _, name = nodeid.partition("::")
        module = Path(self.config.rootpath) / path
        function = name.split("[")[0]
        if module.suffix == ".py":
            return shared_units(module).get(function, nodeid)
        return nodeid
