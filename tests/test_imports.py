"""Issue #20 §2: llmtune's modules import each other at the top with no cycle, and a function-local import of
llmtune is kept only where it has a reason, listed here: a new one elsewhere fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "llmtune"

# module (relative to src/llmtune) -> why it imports parts of llmtune inside functions
LAZY = {
    "cli.py": "each subcommand loads its code when it runs: `llmtune <cmd> --help` and one-line config errors "
    "come without torch (0.2 s instead of about 9 s here)",
    "chat.py": "`llmtune chat --help` and its config errors without torch; the model code loads when it chats",
    "eval/config.py": "`llmtune eval --help` and its config errors without torch",
    "kernel/config.py": "`llmtune kernel --help` and its config errors without torch",
    "export.py": "`llmtune export --help` and its config errors without torch",
    "arguments.py": "TrainingArguments imports TRL: only when a training config is read",
    "webui/__init__.py": "gradio loads only when the page is served",
    "model/quantization.py": "the registry and the compatibility table lead back here (methods.registry -> "
    "model package -> model.loader -> this module)",
    "peft_hook.py": "the registry imports torch: at `import llmtune` it would slow every command's --help",
}


def local_llmtune_imports(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and not sub.level and (sub.module or "").startswith("llmtune"):
                    lines.append(sub.lineno)
                elif isinstance(sub, ast.Import) and any(a.name.startswith("llmtune") for a in sub.names):
                    lines.append(sub.lineno)
    return lines


def test_function_local_imports_of_llmtune_only_where_listed_with_a_reason():
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = local_llmtune_imports(path)
        if lines:
            found[path.relative_to(PACKAGE).as_posix()] = lines
    unexpected = {module: lines for module, lines in found.items() if module not in LAZY}
    assert not unexpected, f"import these at the top of the module, or list why not in LAZY: {unexpected}"
    assert set(LAZY) <= set(found), f"no longer lazy, drop from LAZY: {set(LAZY) - set(found)}"


def module_graph() -> dict[str, set[str]]:
    """llmtune module -> the llmtune modules its module-level statements import (TYPE_CHECKING blocks left out)."""

    def name(path: Path) -> str:
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    modules = {name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in modules.items():
        edges = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").startswith("llmtune"):
                edges |= {
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                }
            elif isinstance(node, ast.Import):
                edges |= {a.name for a in node.names if a.name.startswith("llmtune")}
        # importing a.b.c runs a.b's __init__ first: an edge to each package on the way, except the
        # packages this module is inside (they are being imported already)
        ancestors = {module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)}
        edges |= {edge.rsplit(".", i)[0] for edge in set(edges) for i in range(1, edge.count(".") + 1)}
        graph[module] = {edge for edge in edges if edge in modules and edge != module and edge not in ancestors}
    return graph


def test_the_package_has_no_import_cycle():
    graph, state, path, cycles = module_graph(), {}, [], []

    def visit(module: str) -> None:
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert len(graph) > 50 and not cycles, cycles
