"""Layout rules of models/ (issue 15, point 3): method modules do not import
each other; what they share lives in shared modules (models.layers,
models.losses, models.optimizers, models.training, ...)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Optional, Tuple

from models import registry

ROOT = Path(__file__).resolve().parents[1]


def module_files(module: str) -> List[Path]:
    """The source files of a dotted module: ``a/b.py``, or every file of package ``a/b/``."""
    path = ROOT.joinpath(*module.split("."))
    if path.is_dir():
        return sorted(path.rglob("*.py"))
    return [path.with_suffix(".py")]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, name: str, is_package: bool = False) -> List[Tuple[int, str]]:
    """``(line, dotted name)`` of everything ``source`` (module ``name``) imports,
    at any depth (late imports too); ``from a import b`` gives ``a`` and ``a.b``."""
    package = name if is_package else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def owner(module: str) -> Optional[str]:
    """The method module that ``module`` is (or is part of), if any."""
    for method in registry.method_modules():
        if module == method or module.startswith(method + "."):
            return method
    return None


def cross_method_imports(path: Path, source: Optional[str] = None) -> List[str]:
    """``"file:line: imports <method module>"`` for each import of another method."""
    name = module_name(path)
    me = owner(name)
    text = path.read_text() if source is None else source
    hits = {(line, owner(mod)) for line, mod in imported_modules(text, name,
                                                                path.name == "__init__.py")}
    return [f"{path.relative_to(ROOT)}:{line}: imports {method}"
            for line, method in sorted(h for h in hits if h[1] not in (None, me))]


def test_every_method_module_is_checked():
    files = [f for m in registry.method_modules() for f in module_files(m)]
    assert all(f.exists() for f in files), files
    names = {module_name(f) for f in files}
    assert {"models.baseline", "models.ddmtl", "models.sjmt", "models.multidataset",
            "models.tracenorm", "models.fersnet", "models.fersnet.method"} <= names


def test_method_modules_do_not_import_each_other():
    found = [v for m in registry.method_modules() for f in module_files(m)
             for v in cross_method_imports(f)]
    assert not found, "\n".join(found)


def test_the_check_sees_cross_method_imports():
    """The checker itself: top-level, late, ``from models import x`` and relative
    imports of another method are caught, its own package's are not."""
    fersnet = ROOT / "models" / "fersnet" / "model.py"
    source = ("import models.sjmt\n"
              "from models import baseline, optimizers\n"
              "from . import networks\n"
              "from .. import ddmtl\n"
              "def f():\n"
              "    from models.multidataset import set_stage\n")
    found = cross_method_imports(fersnet, source)
    assert [v.split(": imports ")[1] for v in found] == \
        ["models.sjmt", "models.baseline", "models.ddmtl", "models.multidataset"]
    assert cross_method_imports(fersnet, "from models.fersnet.networks import NUM_CLASSES\n") == []
