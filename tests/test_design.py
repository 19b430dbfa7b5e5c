"""The shape the package keeps: dependencies between the modules of pipeline/ run one way."""

import ast

from conftest import REPO


def imports_of(path) -> set:
    """The pipeline modules a file imports, anywhere in it (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipeline."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline."))
    return found


def test_the_modules_of_the_package_import_each_other_without_a_cycle():
    modules = {p.stem: p for p in (REPO / "pipeline").glob("*.py")}
    graph = {name: sorted(imports_of(path) & set(modules) - {name}) for name, path in modules.items()}
    done, path = set(), []

    def visit(name):
        assert name not in path, f"import cycle: {' -> '.join(path[path.index(name):] + [name])}"
        if name in done:
            return
        path.append(name)
        for dep in graph[name]:
            visit(dep)
        path.pop()
        done.add(name)

    for name in graph:
        visit(name)
    # the evaluation runs one way: the judge's data <- the judge <- metrics <- sampling <- guidance <- evaluate
    assert "evaluate" not in graph["guidance"] and "evaluate" not in graph["metrics"]
    assert {"classifier", "metrics", "guidance", "sampling", "judge_data"} <= set(graph["evaluate"])
