"""Layering: the core never imports Flower; clients and strategies do not import each other.

Checked statically (every import statement of every file, those inside
functions included) and, for the core, dynamically (importing every module of
``fish_fl`` in a fresh interpreter leaves ``flwr`` out of ``sys.modules``).
``flwr_datasets`` is a separate package and allowed in the core; it does not
import ``flwr`` itself, which ``test_flwr_datasets_does_not_import_flwr``
keeps true, so the dynamic check stays meaningful.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from .conftest import PROJECT_ROOT


def _module_name(path: Path, root: Path = PROJECT_ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path, root: Path = PROJECT_ROOT) -> list[tuple[int, str]]:
    """``(line, module)`` for every module an import statement of ``path`` names.

    Relative imports are resolved against the file's package; ``from X import
    a`` names both ``X`` and ``X.a`` (``a`` may be a submodule).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module:
                found.append((node.lineno, module))
            prefix = f"{module}." if module else ""
            found.extend((node.lineno, prefix + alias.name) for alias in node.names)
    return sorted(set(found))


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _files(package: str) -> list[Path]:
    files = sorted((PROJECT_ROOT / package).rglob("*.py"))
    assert files, f"no Python file under {package}/"
    return files


def _violations(package: str, forbidden: str) -> list[str]:
    return [
        f"{path.relative_to(PROJECT_ROOT)}:{line} imports {module}"
        for path in _files(package)
        for line, module in imported_modules(path)
        if _is_within(module, forbidden)
    ]


# -- the scanner itself --------------------------------------------------------
def test_scanner_sees_every_kind_of_import(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    source = pkg / "mod.py"
    source.write_text(
        "import flwr\n"
        "import flwr_datasets.partitioner\n"
        "from flwr.app import Array\n"
        "from . import sibling\n"
        "from ..other import thing\n"
        "def f():\n"
        "    import flwr.serverapp as s\n"
        "    from flwr import common\n"
    )
    found = imported_modules(source, tmp_path)
    assert found == [
        (1, "flwr"),
        (2, "flwr_datasets.partitioner"),
        (3, "flwr.app"),
        (3, "flwr.app.Array"),
        (4, "pkg.sub"),
        (4, "pkg.sub.sibling"),
        (5, "pkg.other"),
        (5, "pkg.other.thing"),
        (7, "flwr.serverapp"),
        (8, "flwr"),
        (8, "flwr.common"),
    ]
    flagged = [m for _, m in found if _is_within(m, "flwr")]
    assert "flwr_datasets.partitioner" not in flagged
    assert len(flagged) == 6


# -- the rules ------------------------------------------------------------------
def test_core_does_not_import_flwr_statically() -> None:
    bad = _violations("fish_fl", "flwr")
    assert not bad, "the core imports Flower:\n" + "\n".join(bad)


def test_clients_do_not_import_strategies() -> None:
    bad = _violations("clients", "strategies")
    assert not bad, "clients import strategies:\n" + "\n".join(bad)


def test_strategies_do_not_import_clients() -> None:
    bad = _violations("strategies", "clients")
    assert not bad, "strategies import clients:\n" + "\n".join(bad)


def _run(code: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_flwr_datasets_does_not_import_flwr() -> None:
    result = _run(
        "import json, sys\n"
        "import flwr_datasets, flwr_datasets.partitioner\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.'))))\n"
    )
    assert result == [], f"flwr_datasets pulls in Flower ({result[:5]}); the core may not use it"


# A meta-path finder that sees the first request for ``flwr`` and records
# which line of which file asked (the innermost frame outside importlib).
_IMPORT_ALL = """
import importlib, json, pkgutil, sys, traceback

culprit = []

class Watch:
    def find_spec(self, name, path=None, target=None):
        if not culprit and (name == "flwr" or name.startswith("flwr.")):
            frames = [f for f in traceback.extract_stack() if "importlib" not in f.filename]
            f = frames[-2] if len(frames) > 1 else frames[-1]
            culprit.append(f"{f.filename}:{f.lineno} ({(f.line or '').strip()}) imports {name}")
        return None

sys.meta_path.insert(0, Watch())
import fish_fl
names = ["fish_fl"] + [m.name for m in pkgutil.walk_packages(fish_fl.__path__, "fish_fl.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({
    "modules": names,
    "culprit": culprit,
    "flwr": sorted(m for m in sys.modules if m == "flwr" or m.startswith("flwr.")),
}))
"""


def test_core_does_not_import_flwr_when_imported() -> None:
    result = _run(_IMPORT_ALL)
    expected = {_module_name(p) for p in _files("fish_fl")}
    assert set(result["modules"]) == expected, "the walk missed modules"
    assert not result["flwr"], (
        f"importing fish_fl loads Flower: {'; '.join(result['culprit']) or 'unknown importer'}"
    )


# -- methods as plugins ---------------------------------------------------------

#: Where a method's name may appear in code: its folder and the registry.
_REGISTRY = ("fish_fl/methods",)


def _code_words(path: Path) -> set[str]:
    """Identifiers and string constants of ``path``'s code (docstrings and bare strings left out)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    words: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.add(node.name)
        elif isinstance(node, ast.alias):
            words.add(node.name)
            words.add(node.asname or "")
        elif isinstance(node, ast.ImportFrom):
            words.add(node.module or "")
        elif (
            isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
        ):
            words.add(node.value)
    return words


def test_method_names_stay_in_their_folders(tmp_path: Path) -> None:
    """No code outside a method's folder and the registry names a method with a wire of its own."""
    from fish_fl.methods import registered_methods

    sample = tmp_path / "sample.py"
    sample.write_text('"""About supermask."""\nx = 1\n\ndef f():\n    return "Supermask-uplink"\n')
    assert any("supermask" in w.lower() for w in _code_words(sample))
    sample.write_text('"""About supermask."""\n# supermask\nx = 1\n')
    assert not any("supermask" in w.lower() for w in _code_words(sample))

    methods = registered_methods()
    assert methods, "no method registers a wire of its own"
    found = []
    for name, cls in methods.items():
        folder = cls.__module__.split(".")[:2]  # fish_fl.<folder>
        allowed = (*_REGISTRY, "/".join(folder))
        for package in ("fish_fl", "strategies", "clients", "sims"):
            for path in _files(package):
                rel = path.relative_to(PROJECT_ROOT).as_posix()
                if rel.startswith(allowed):
                    continue
                if any(name in w.lower() for w in _code_words(path)):
                    found.append(f"{rel} names {name!r}")
    assert not found, found
