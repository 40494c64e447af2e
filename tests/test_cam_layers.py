"""`camgap.cam.layers` is the one home of the target-layer choice: the family tables live there
alone, models.py and cam/ read the same objects, and neither imports the other in a circle
(nor do `camgap.cli` and `camgap.zoo.cli`)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from torch import nn
from torchvision import models as tvm

import camgap.cam.base
import camgap.models
from camgap.cam import layers

PACKAGE = Path(camgap.__file__).parent


def test_models_and_cam_base_use_the_tables_and_functions_of_layers():
    assert camgap.models.default_target_layer is layers.default_target_layer
    assert camgap.cam.base.default_target_layer is layers.default_target_layer
    assert camgap.cam.base.get_layer is layers.get_layer
    assert camgap.cam.base.GAP_LINEAR_FAMILIES is layers.GAP_LINEAR_FAMILIES
    assert (camgap.models.SmallResNet, "layer4") in layers.TARGET_LAYERS
    assert layers.GapLinear(camgap.models.SmallResNet, "layer4", "avgpool", "fc") in layers.GAP_LINEAR_FAMILIES


def test_no_other_module_holds_a_family_table():
    """A family table pairs a model class with where its CAM looks: `(tvm.ResNet, "layer4")`."""
    pattern = re.compile(r"\(\s*tvm\.ResNet\s*,")
    holders = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if pattern.search(p.read_text()))
    assert holders == ["cam/layers.py"]


def test_add_family_teaches_a_new_family_once(monkeypatch):
    monkeypatch.setattr(layers, "TARGET_LAYERS", list(layers.TARGET_LAYERS))
    monkeypatch.setattr(layers, "GAP_LINEAR_FAMILIES", list(layers.GAP_LINEAR_FAMILIES))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))

    layers.add_family(Net, "trunk.-1", gap_linear=("trunk", None, "head"))
    layers.add_family(Net, "trunk.-1")
    net = Net()
    assert layers.default_target_layer(net) == ("trunk.1", net.trunk[1])
    # once, whatever other families (timm's, added when timm is imported) the table holds
    assert [target for c, target in layers.TARGET_LAYERS if c is Net] == ["trunk.-1"]
    assert layers.GAP_LINEAR_FAMILIES[-1] == layers.GapLinear(Net, "trunk", None, "head")
    assert layers.default_target_layer(nn.Sequential(tvm.resnet18(num_classes=2)))[0] == "0.layer4"


def _imports(path: Path, module: str) -> set[str]:
    """The camgap modules a module imports anywhere in its body (in a function too), with the
    packages each import runs on the way."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if parts[0] == "camgap"}
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    return {name: _imports(path, name) & set(modules) for name, path in modules.items()}


def _reaches(graph: dict[str, set[str]], start: str, target: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        here = todo.pop()
        if here == target:
            return True
        if here not in seen:
            seen.add(here)
            todo.extend(graph.get(here, ()))
    return False


def test_no_import_circle_between_models_and_cam_nor_between_the_two_clis():
    graph = _import_graph()
    assert "camgap.cam.layers" in graph["camgap.models"]  # the check sees real imports
    cam_modules = [m for m in graph if m == "camgap.cam" or m.startswith("camgap.cam.")]
    assert [m for m in cam_modules if _reaches(graph, m, "camgap.models")] == []
    assert not _reaches(graph, "camgap.checkpoints", "camgap.models")
    assert "camgap.zoo.cli" in graph["camgap.cli"] and not _reaches(graph, "camgap.zoo.cli", "camgap.cli")
