"""pytest-xdist scheduling: tests that share a module-scoped fixture run on one worker.

A module-scoped fixture (one real sweep read back by several tests) is built once per worker
that runs a test using it, so those tests go to the worker as one unit; every other test is
its own unit. (xdist's own `xdist_group` mark relies on a pytest internal that pytest 9.2
changed, so its groups are silently ignored there.) Used by conftest's
`pytest_xdist_make_scheduler`, in the controller process, which sees node ids only.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from xdist.scheduler import LoadScopeScheduling


@functools.cache
def users_of_module_fixtures(module: Path) -> frozenset[str]:
    """Names of the test functions in `module` that use one of its module-scoped fixtures,
    directly or through another fixture."""
    tree = ast.parse(module.read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    args = {f.name: {a.arg for a in f.args.args} for f in functions}
    shared = {f.name for f in functions if _is_module_fixture(f)}
    changed = True
    while changed:  # a fixture that takes a shared fixture is shared too
        more = {n for n in args if not n.startswith("test") and args[n] & shared} - shared
        changed, shared = bool(more), shared | more
    return frozenset(n for n in args if n.startswith("test") and args[n] & shared)


def _is_module_fixture(function: ast.FunctionDef) -> bool:
    for decorator in function.decorator_list:
        if isinstance(decorator, ast.Call) and "fixture" in ast.unparse(decorator.func):
            for keyword in decorator.keywords:
                if keyword.arg == "scope" and ast.literal_eval(keyword.value) in (
                    "module",
                    "package",
                    "session",
                ):
                    return True
    return False


class SharedFixtureScheduling(LoadScopeScheduling):
    """Load scheduling whose units are single tests, except that a module's tests sharing a
    module-scoped fixture form one unit (units with more tests are handed out first)."""

    def _split_scope(self, nodeid: str) -> str:
        path, _, name = nodeid.partition("::")
        module = Path(self.config.rootpath) / path
        function = name.split("[")[0]
        if module.suffix == ".py" and function in users_of_module_fixtures(module):
            return path
        return nodeid
