"""The package's layering, read from its source: no import cycle, own imports at the top of each
file, no module past about 500 lines, and the public paths users write still import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

PACKAGE = Path(__file__).resolve().parent.parent / "django_jobs"

#: Lines a module may have (docs/architecture.md: "no module over about 500 lines").
MAX_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py") if "migrations" not in path.parts}


def own_imports(name: str, path: Path, modules: set[str]) -> list[tuple[str, ast.stmt, bool]]:
    """Each import of one of the package's modules: (the module, the statement, at top level?).
    Imports under ``if TYPE_CHECKING:`` are left out: they do not run."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    typing_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for statement in node.body
        for inner in ast.walk(statement)
    }
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from . import records" imports the module records; "from .x import f", module x.
            targets = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
            targets = targets or [base]
        for target in targets:
            if target in modules and target != name:
                found.append((target, node, id(node) in top))
    return found


def import_graph() -> dict[str, set[str]]:
    modules = sources()
    names = set(modules)
    return {
        name: {target for target, _, _ in own_imports(name, path, names)} for name, path in modules.items()
    }


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as the list of its modules, first one repeated last), or None."""
    state: dict[str, str] = {}
    trail: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        trail.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*trail[trail.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        state[node] = "done"
        trail.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_layering() -> None:
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40, "the package's modules were not found"
    assert "django_jobs.records" in graph["django_jobs.outcomes"]  # the graph sees relative imports
    assert cycle_in(graph) is None


def test_own_imports_sit_at_the_top_of_each_file() -> None:
    modules = sources()
    names = set(modules)
    inside = [
        f"{path.relative_to(PACKAGE.parent)}:{statement.lineno} imports {target}"
        for name, path in modules.items()
        for target, statement, at_top in own_imports(name, path, names)
        if not at_top
    ]
    assert inside == []


def test_no_module_is_longer_than_about_500_lines() -> None:
    long = {
        name: length
        for name, path in sources().items()
        if (length := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


@pytest.mark.parametrize(
    "path",
    [
        "django_jobs.job",
        "django_jobs.get_job",
        "django_jobs.JobHandle",
        "django_jobs.JobStatus",
        "django_jobs.set_progress",
        "django_jobs.progress.set_progress",
        "django_jobs.worker.Worker",
        "django_jobs.worker.SimpleWorker",
        "django_jobs.worker.BatchWorker",
        "django_jobs.batching.BatchWorker",
        "django_jobs.testing.run_burst",
        "django_jobs.testing.RedisServer",
        "django_jobs.models.JobRecord",
        "django_jobs.models.JobStatus",
        "django_jobs.models.FINAL_STATUSES",
        "django_jobs.models.PeriodicJob",
        "django_jobs.pusher.flush",
    ],
)
def test_public_paths_still_import(path: str) -> None:
    assert import_string(path) is not None


def test_the_worker_class_aliases_name_classes_that_import() -> None:
    from django_jobs.worker import WORKER_CLASS_ALIASES, BatchWorker, SimpleWorker, Worker

    assert {alias: import_string(path) for alias, path in WORKER_CLASS_ALIASES.items()} == {
        "fork": Worker,
        "worker": Worker,
        "simple": SimpleWorker,
        "batch": BatchWorker,
    }
    assert import_string("django_jobs.batching.BatchWorker") is BatchWorker
