"""The public Python API is typed and documented: a ``py.typed`` marker that the package
installs, and on every public function, class and method of the package a docstring and
annotations on every argument and return (``extra_repr`` overrides excepted from the
docstring: the base method documents them; ``__init__`` arguments are the class's)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(os.path.relpath(os.path.join(d, f), ROOT) for d, _, fs in os.walk(os.path.join(ROOT, "csub"))
               for f in fs if f.endswith(".py"))


def test_py_typed_is_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    assert os.path.isfile(os.path.join(ROOT, "csub", "py.typed"))
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    assert "py.typed" in data["csub"]


def _public_defs(tree):
    """(qualified name, node) of the public functions and classes, and the public methods of
    public classes and of private classes a public class of the file derives from (a private
    base's public methods are API of its public subclasses)."""
    bases = {b.id for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and not c.name.startswith("_")
             for b in c.bases if isinstance(b, ast.Name)}

    def walk(node, prefix, in_class):
        for ch in ast.iter_child_nodes(node):
            if not isinstance(ch, (ast.FunctionDef, ast.ClassDef)):
                continue
            name = ch.name
            dunder = name.startswith("__") and name.endswith("__")
            if isinstance(ch, ast.ClassDef):
                if not name.startswith("_"):
                    yield prefix + name, ch
                if not name.startswith("_") or (not prefix and name in bases):
                    yield from walk(ch, f"{prefix}{name}.", True)
            elif not name.startswith("_") or dunder:
                yield prefix + name, ch
    yield from walk(tree, "", False)


@pytest.mark.parametrize("path", FILES)
def test_public_api_is_annotated_and_documented(path):
    with open(os.path.join(ROOT, path)) as f:
        tree = ast.parse(f.read())
    problems = []
    for name, node in _public_defs(tree):
        short = name.rsplit(".", 1)[-1]
        if any(isinstance(d, ast.Name) and d.id == "overload" for d in getattr(node, "decorator_list", ())):
            continue  # the implementation below the overloads carries the docstring
        dunder = short.startswith("__") and short.endswith("__")
        if not dunder and short != "extra_repr" and not ast.get_docstring(node):
            problems.append(f"{name}: no docstring")
        if isinstance(node, ast.FunctionDef):
            a = node.args
            missing = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs
                       if x.annotation is None and x.arg not in ("self", "cls")]
            missing += [f"*{v.arg}" for v in (a.vararg, a.kwarg) if v is not None and v.annotation is None]
            if node.returns is None and short != "__init__":
                missing.append("return")
            if missing:
                problems.append(f"{name}: no annotation for {missing}")
    assert not problems, f"{path}: " + "; ".join(problems)
