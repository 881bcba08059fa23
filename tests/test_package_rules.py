"""The package's own rules, checked on its source (src, tests, benchmarks, examples):
dependencies point downward (STYLE.md's layers), no module uses another's private names
or a name its ``__all__`` does not export, and docstrings of the library carry no benchmark
results (those live in docs/ and results/)."""

import ast
import importlib
import importlib.util
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.static

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kooptrain"

# the library's layers, lowest first; a module may import its own layer and those below
LAYERS = {
    0: {"errors", "_validation", "_settings", "_linalg"},
    1: {"_representation", "statistics", "koopman", "_sharded", "_fixed_point"},  # the engine
    2: {"partition", "recorder"},  # parameters <-> blocks; snapshots (no optimizers)
    3: {"_attempt", "_clock", "_consensus", "_cost", "_migrate", "_transaction", "_schedule",
        "_predictors", "_state_policy", "_search", "accelerator", "average", "trust", "diagnostics",
        "diagnostics.compare", "diagnostics.monitor", "diagnostics.plot", "diagnostics.record",
        "diagnostics.spectrum"},  # the loop
    4: {"lightning", ""},  # the optional adapter and the package's public face
}
LAYER_OF = {m: n for n, ms in LAYERS.items() for m in ms}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def kooptrain_imports(path: Path):
    """``(line, module, names)`` for every import of a kooptrain module in ``path``
    (``module`` relative to the package: ``""`` is kooptrain itself)."""
    tree = ast.parse(path.read_text())
    inside = SRC in path.parents
    here = module_name(path).split(".") if inside and module_name(path) else []
    package = here if inside and path.name == "__init__.py" else here[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "kooptrain":
                target = node.module[len("kooptrain") + 1:]
            else:
                continue
            yield node.lineno, target, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "kooptrain":
                    yield node.lineno, a.name[len("kooptrain") + 1:], []


def library_files():
    return [p for p in SRC.rglob("*.py")
            if module_name(p).split(".")[0] not in ("experiments", "problems")]


def checked_files():
    files = list(SRC.rglob("*.py"))
    for folder in ("tests", "benchmarks", "examples"):
        files += list((ROOT / folder).rglob("*.py"))
    return files


def test_every_library_module_has_a_layer():
    assert sorted(module_name(p) for p in library_files() if module_name(p) not in LAYER_OF) \
        == []


def test_dependencies_point_downward():
    wrong = []
    for path in SRC.rglob("*.py"):
        mod = module_name(path)
        top = mod.split(".")[0]
        for line, target, _ in kooptrain_imports(path):
            dest = target.split(".")[0]
            if top == "experiments":
                continue  # experiments may use anything
            if top == "problems":  # problems know nothing of Koopman
                if dest != "problems":
                    wrong.append(f"{mod}:{line} imports {target}")
                continue
            if dest in ("experiments", "problems"):
                wrong.append(f"{mod}:{line} imports {target} (library -> {dest})")
                continue
            layer = LAYER_OF.get(target, LAYER_OF.get(dest))
            if layer is None or layer > LAYER_OF[mod]:
                wrong.append(f"{mod}:{line} (layer {LAYER_OF[mod]}) imports {target} "
                             f"(layer {layer})")
    assert wrong == []


# the diagnostics package, lowest first: a module imports only those before it (the record
# at the bottom, the monitor at the top), at module level, and the layers below
DIAGNOSTICS = ("record", "spectrum", "plot", "compare", "monitor")


def test_the_diagnostics_modules_import_downward_and_never_in_a_function():
    """No import circle held together by deferred imports: each diagnostics module imports
    the record, the modules below it in DIAGNOSTICS by their public names, and the engine
    and the layers below; none imports a sibling inside a function."""
    wrong = []
    for i, name in enumerate(DIAGNOSTICS):
        path = SRC / "diagnostics" / f"{name}.py"
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for line, target, names in kooptrain_imports(path):
            if not target.startswith("diagnostics."):
                continue
            sibling = target.split(".", 1)[1]
            if sibling not in DIAGNOSTICS[:i]:
                wrong.append(f"{name}:{line} imports {sibling} (not below it)")
            if any(n.startswith("_") for n in names):
                wrong.append(f"{name}:{line} imports private names {names}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level and id(node) not in top \
                    and (node.module or "").split(".")[0] in DIAGNOSTICS:
                wrong.append(f"{name}:{node.lineno} imports {node.module} inside a function")
    assert wrong == []
    assert {p.stem for p in (SRC / "diagnostics").glob("*.py")} - {"__init__"} \
        == set(DIAGNOSTICS)


def _exports(target: str):
    mod = importlib.import_module("kooptrain" + (f".{target}" if target else ""))
    return mod, getattr(mod, "__all__", None)


def test_imported_names_are_public_and_exported():
    wrong = []
    for path in checked_files():
        for line, target, names in kooptrain_imports(path):
            mod, exported = _exports(target)
            for name in names:
                if name == "*" or (hasattr(mod, "__path__") and importlib.util.find_spec(
                        f"{mod.__name__}.{name}") is not None):
                    continue  # a module, not a name
                if name.startswith("__"):
                    continue  # __version__ and the like
                if name.startswith("_") or (exported is not None and name not in exported):
                    wrong.append(f"{path.relative_to(ROOT)}:{line}: {name} from "
                                 f"kooptrain.{target}")
    assert wrong == []


def _private_names(path: Path) -> set[str]:
    """The underscore names a file defines: functions, classes, module and class
    attributes, and ``self._x`` attributes (``other._x = ...`` defines nothing)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            out.add(node.attr)
    return {n for n in out if n.startswith("_") and not n.startswith("__")}


def test_no_file_uses_another_modules_private_names():
    """``obj._name`` is allowed on ``self`` and ``cls``, or where the file defines
    ``_name`` itself; a private name of the library used anywhere else is a breach."""
    library = set().union(*(_private_names(p) for p in SRC.rglob("*.py")))
    wrong = []
    for path in checked_files():
        own = _private_names(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute) or node.attr not in library \
                    or node.attr in own:
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert wrong == []


# a benchmark result: a speed-up or ratio ("1.11x", "2x faster"), a measured percentage, or
# the word "measured" next to a number
RESULT = re.compile(r"\b\d+(\.\d+)?x\b(?! ?[=(])|\b\d+(\.\d+)?% (slower|faster|of the)"
                    r"|\bmeasured\b[^.]*\d")


@pytest.mark.parametrize("path", library_files(), ids=lambda p: module_name(p) or "kooptrain")
def test_library_docstrings_quote_no_benchmark_results(path):
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                             ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node) or ""
            found += [m.group(0) for m in RESULT.finditer(doc)]
    assert found == [], "benchmark numbers belong in docs/, not in docstrings"


LOOP_MODULES = ("accelerator", "_search", "_state_policy", "_schedule", "_attempt", "_clock",
                "_cost", "_settings", "_migrate", "_transaction", "_predictors")


def test_the_accelerator_is_parts_not_one_long_class():
    """KoopmanAccelerator is not among the three longest classes of the package, and no
    function of the modules it is built from runs over 60 lines."""
    classes, long_functions = [], []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            length = getattr(node, "end_lineno", 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef):
                classes.append((length, node.name))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                    and module_name(path) in LOOP_MODULES and length > 60:
                long_functions.append(f"{module_name(path)}.{node.name}: {length} lines")
    assert "KoopmanAccelerator" not in [name for _, name in sorted(classes)[-3:]]
    assert long_functions == []


def test_every_benchmark_or_result_the_library_and_docs_name_exists():
    """A ``benchmarks/...py`` or ``results/...`` path quoted in the library's source, the
    README or docs/ is a file of the repository (a renamed benchmark left
    ``monitor_null.py`` in a docstring)."""
    texts = [*SRC.rglob("*.py"), ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    pattern = re.compile(r"\b((?:benchmarks|results)/[\w./-]+\.(?:py|json|png|md|sh))")
    missing = sorted({(p.relative_to(ROOT).as_posix(), m) for p in texts
                      for m in pattern.findall(p.read_text()) if not re.search(r"\*|TASK|\{", m)
                      and not (ROOT / m).exists()})
    assert not missing, missing
