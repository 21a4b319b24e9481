"""The package's floors: a module imports only from its own floor or lower ones, and never behind `TYPE_CHECKING`
(a guarded import is a concept living in the wrong room). Read from the source, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import melee_wm

PACKAGE = Path(melee_wm.__file__).resolve().parent
# Lowest first. data and model share a floor and never import each other; eval scores what frames decodes,
# training uses eval's metrics; sim drives a trained checkpoint; cli and cloud are the entry points.
FLOORS: dict[str, int] = {
    "constants": 0,
    "paths": 0,
    "schema": 0,
    "samples": 0,
    "game": 0,
    "replay": 1,
    "encoding": 2,
    "data": 3,
    "model": 3,
    "frames": 4,
    "eval": 5,
    "training": 6,
    "sim": 7,
    "cli": 8,
    "cloud": 8,
}
SIBLINGS_APART = {("data", "model"), ("model", "data"), ("cli", "cloud"), ("cloud", "cli")}
KNOWN_UPWARD: set[tuple[str, str]] = set()  # arrows allowed to point up a floor: none


def room(module: str) -> str:
    """`melee_wm.eval.frame_metrics` -> `eval`."""
    return module.split(".")[1]


def package_imports() -> list[tuple[str, str, int, bool]]:
    """(importing module, imported melee_wm module, line, behind TYPE_CHECKING) for every import in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        tree = ast.parse(path.read_text())
        guarded = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("melee_wm.") and name.count(".") >= 1:
                    found.append((module, name, node.lineno, id(node) in guarded))
    return found


def test_every_room_has_a_floor():
    rooms = {
        p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.name not in ("__init__.py", "__pycache__")
    }
    assert rooms == set(FLOORS)


def test_no_import_goes_up_a_floor_or_hides_behind_type_checking():
    imports = package_imports()
    assert len(imports) > 100  # the parser saw the package
    upward = [
        f"{src}:{line} imports {dst}"
        for src, dst, line, _ in imports
        if src != "melee_wm"
        and (FLOORS[room(dst)] > FLOORS[room(src)] or (room(src), room(dst)) in SIBLINGS_APART)
        and (src, dst) not in KNOWN_UPWARD
    ]
    assert not upward
    assert not [f"{src}:{line} imports {dst}" for src, dst, line, guarded in imports if guarded]
    assert not [name for name in PACKAGE.rglob("*.py") if "TYPE_CHECKING" in name.read_text()]
