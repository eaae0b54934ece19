"""The package's layers, enforced: every import (module level or inside a function) of clearclip and flows
goes down a layer or stays in its own package, and the module graph has no cycle. See docs/architecture.md."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {  # a module may import its own package and anything in a lower layer, never a peer or above
    "clearclip": 0,  # the base: the package itself, errors, options, vocabulary (no cycle among them, see below)
    "clearclip.io": 1,
    "clearclip.inference": 2, "clearclip.annotations": 2,
    "clearclip.run": 3, "clearclip.evaluation": 3,
    "clearclip.review": 4,
    "clearclip.cli": 5, "flows": 5,
    "clearclip.__main__": 6,
}
TORCH = ("torch", "torchvision", "open_clip")
TORCH_ALLOWED = ("clearclip.inference", "clearclip.run.pipeline")  # the model, and the DataLoader that feeds it
REVIEW_MAY_IMPORT_INFERENCE = ("clearclip.review.model",)  # ClearCLIP as a FiftyOne model


def modules() -> dict[str, Path]:
    found = {}
    for top in ("clearclip", "flows"):
        for path in (ROOT / top).rglob("*.py"):
            if "plugins" in path.parts:
                continue  # loaded by FiftyOne, not imported by clearclip
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, relative imports resolved, anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def owner(module: str) -> str | None:
    """The LAYERS key a module belongs to (the longest prefix), or None for third-party modules; the base
    modules (``clearclip``, ``clearclip.errors``, ...) belong to ``clearclip``."""
    keys = [k for k in LAYERS if module == k or module.startswith(k + ".")]
    return max(keys, key=len) if keys else None


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports(name, path) if m in known and m != name} for name, path in known.items()}


def test_every_module_has_a_layer():
    assert [name for name in modules() if owner(name) is None] == []


def test_no_import_goes_up_or_sideways():
    wrong = []
    for name, targets in graph().items():
        mine = owner(name)
        for target in targets:
            theirs = owner(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                wrong.append(f"{name} -> {target}")
            elif theirs == "clearclip.inference" and mine == "clearclip.review" and name not in REVIEW_MAY_IMPORT_INFERENCE:
                wrong.append(f"{name} -> {target} (only {REVIEW_MAY_IMPORT_INFERENCE} may run the model)")
    assert wrong == []


def test_the_module_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_only_the_model_code_imports_torch():
    known = modules()
    wrong = [f"{name} imports {module}" for name, path in known.items() for module in imports(name, path)
             if module.split(".")[0] in TORCH and not name.startswith(TORCH_ALLOWED)]
    assert wrong == []


@pytest.mark.parametrize("module", ["clearclip.cli", "clearclip.run.plan", "clearclip.run.job", "clearclip.run.merge",
                                    "clearclip.run.refilter", "clearclip.annotations.regions", "clearclip.review.sync",
                                    "flows.label_dataset", "flows.label_shard"])
@pytest.mark.slow
def test_planning_and_review_modules_load_without_torch(module):
    code = f"import sys, {module}; sys.exit(int(any(m.split('.')[0] in {TORCH!r} for m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"importing {module} imported torch or failed:\n{result.stderr[-2000:]}"
