"""Each module emits its own inference graph; modelfile knows no model class."""
import ast
import pathlib

import pytest

from csub import models, nn
from csub.nn.graph import Graph

ROOT = pathlib.Path(__file__).resolve().parents[1] / "csub"


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_modelfile_imports_no_models_and_no_runtime():
    names = _imports(ROOT / "modelfile.py")
    assert not names & {"models", "runtime"}, names
    assert not _imports(ROOT / "nn" / "graph.py") & {"models", "runtime", "modelfile"}


class _Net(models.SubspaceNet):
    def __init__(self, body):
        super().__init__(None, None, "gn")
        self.body = body

    def emit(self, g, x):
        return self.body.emit(g, x)


def test_residual_emits_shortcut_body_and_add():
    net = _Net(nn.Sequential(nn.Residual(nn.Sequential(nn.ReLU(), nn.Conv2d(2, 2, 1)), nn.Conv2d(2, 2, 1))))
    g = Graph(net)
    out = net.emit(g, 0)
    assert [op["op"] for op in g.ops] == ["conv", "relu", "conv", "add"]
    assert g.ops[-1]["x"] == 3 and g.ops[-1]["x2"] == 1 and out == 4
    assert g.ops[0]["w"] == "body.0.shortcut.weight" and g.ops[2]["w"] == "body.0.body.1.weight"


def test_a_module_without_inference_form_refuses():
    with pytest.raises(TypeError, match="model: cannot export a Module"):
        nn.Module().emit(None, 0)


def test_load_lives_with_the_models_and_keeps_its_names():
    import csub

    assert csub.load is models.load and csub.modelfile.load is models.load
