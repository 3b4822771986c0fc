"""Imports flow one way: io -> features -> losses -> methods -> api -> cli (ops/errors/events/options below all)."""

from __future__ import annotations

import ast
from pathlib import Path

import impasto

ROOT = Path(impasto.__file__).parent
BASE = {"errors": 0, "events": 0, "options": 0, "validation": 0, "result": 0, "ops": 0}
# Methods never import each other (DESIGN.md), except where one method is another with something added;
# each exception says why. A copy of the optimisation loop in those files would be worse than the import.
METHOD_IMPORTS = {
    ("exemplars", "optimization"): "Song et al.'s exemplar transfer is the optimisation method with a pooled MRF bank",
    ("arbitrary", "optimization"): "--refine continues AdaIN's result with the optimisation method",
    ("wct", "optimization"): "--refine continues WCT's result with the optimisation method",
}
LAYERS = {**BASE, "io": 1, "features": 2, "losses": 3, "methods": 4, "training": 4.5, "api": 5, "demo": 5, "explain": 5, "cli": 6}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("impasto"):
            if node.module.count(".") <= 1:  # 'from impasto import api' / 'from impasto.methods import wct': submodules
                found += [f"{node.module}.{a.name}" for a in node.names]
            else:
                found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("impasto")]
    return found


def test_every_module_has_a_layer():
    for path in ROOT.rglob("*.py"):
        name = path.relative_to(ROOT).parts[0].removesuffix(".py")
        assert name == "__init__" or name in LAYERS, f"{path} is in no layer; add it to LAYERS"


def test_no_upward_imports():
    bad = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        own = rel.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        for target in _imports(path):
            layer = _layer(target)
            if layer in ("__init__", "impasto"):
                bad.append(f"{rel} imports the package root")
            elif LAYERS[layer] > LAYERS[own]:
                bad.append(f"{rel} ({own}) imports {target} ({layer})")
            if own == "methods" and layer == "methods" and rel.name != "__init__.py":
                other = target.split(".")[2] if len(target.split(".")) > 2 else ""
                if other and other != rel.stem and (rel.stem, other) not in METHOD_IMPORTS:
                    bad.append(f"{rel}: methods never import each other ({target})")
    assert not bad, "\n".join(bad)


def test_every_declared_method_import_is_used():
    used = {(path.stem, target.split(".")[2]) for path in (ROOT / "methods").glob("*.py")
            for target in _imports(path) if target.startswith("impasto.methods.")}
    assert set(METHOD_IMPORTS) <= used, f"stale exceptions: {set(METHOD_IMPORTS) - used}"


def test_layering_check_catches_a_violation(tmp_path):
    fake = tmp_path / "x.py"
    fake.write_text("from impasto.cli import main\nimport impasto.api\n")
    assert _imports(fake) == ["impasto.cli.main", "impasto.api"]
    fake.write_text("from impasto.methods import wct, arbitrary as a\nfrom impasto.ops.color import luminance\n")
    assert _imports(fake) == ["impasto.methods.wct", "impasto.methods.arbitrary", "impasto.ops.color"]


def test_public_api():
    expected = {"stylize", "stylize_video", "prepare", "load_image", "save_image", "load_recipe", "rerun", "Stylized", "METHODS",
                "ImpastoError", "InvalidImageError", "InvalidOptionError", "WeightsError", "WeightsUnavailableError",
                "CheckpointError", "CancelledError", "CancelToken", "Progress", "Stage", "Done"}
    assert set(impasto.__all__) == expected
    assert issubclass(impasto.InvalidImageError, ValueError) and issubclass(impasto.InvalidImageError, impasto.ImpastoError)
    assert issubclass(impasto.WeightsUnavailableError, FileNotFoundError)
    assert issubclass(impasto.CancelledError, RuntimeError)
