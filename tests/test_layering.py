"""The house's import graph, read from the source (imports inside functions included): packages import only
downward, shared helpers -> checkpoints -> data -> listening -> training, with the entry points on top, and no
module imports itself back through others."""

import ast
from pathlib import Path

from tests.helpers import REPO

LAYERS = {"checkpoints": 1, "data": 2, "models": 2.5, "listening": 3, "training": 4}
SHARED = {"higgs_ds.audio", "higgs_ds.config", "higgs_ds.distributed", "higgs_ds.files", "higgs_ds.logs",
          "higgs_ds.memory"}
ENTRY_POINTS = {"higgs_ds.cli", "higgs_ds.train", "higgs_ds.demo", "higgs_ds.fixtures"}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted((REPO / "higgs_ds").rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("higgs_ds"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            found |= {n for n in names if n in known} or {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("higgs_ds")}
    return {m for m in found if m in known and m != "higgs_ds"}


def layer(module: str) -> float:
    if module in ENTRY_POINTS or module.endswith(".cli"):
        return float("inf") if module in ENTRY_POINTS else LAYERS[module.split(".")[1]] + 0.5
    if module in SHARED or module == "higgs_ds":
        return 0
    return LAYERS[module.split(".")[1]]


def test_every_module_has_a_room():
    unplaced = [m for m in modules() if m not in SHARED | ENTRY_POINTS | {"higgs_ds"} and
                m.split(".")[1] not in LAYERS]
    assert not unplaced, f"modules outside the packages and the shared/entry lists: {unplaced}"


def test_packages_import_only_downward():
    mods = modules()
    upward = [f"{m} imports {d}" for m, path in mods.items() for d in sorted(imports(path, set(mods)))
              if layer(d) > layer(m) and not (d.endswith(".cli") and m in ENTRY_POINTS)]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    mods = modules()
    graph = {m: imports(p, set(mods)) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def test_no_module_past_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 420}
    assert not long, long


def test_every_package_is_installed():
    """A non-editable install (the Docker image's wheel) ships only the packages pyproject.toml lists."""
    import tomllib

    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "higgs_ds").rglob("__init__.py")}
    assert packages <= listed, packages - listed


def test_no_module_imports_boson_multimodals_model_collator_or_serve_engine():
    """Those import only under transformers < 4.48; the product uses boson_multimodal for its audio tokenizer,
    ChatML helpers and data types alone (its model is the tests' oracle, tests/oracle/)."""
    allowed = ("boson_multimodal.audio_processing", "boson_multimodal.dataset.chatml_dataset",
               "boson_multimodal.data_types")
    found = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{module} imports {n}" for n in names
                      if n.startswith("boson_multimodal") and not n.startswith(allowed)]
    assert not found, "\n".join(found)
