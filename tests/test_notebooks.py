"""Execute every notebook in notebooks/ from a clean kernel and check it ran.

Each notebook runs in a fresh ``python3`` kernel whose working directory is a
temporary folder (notebooks write their files relative to the cwd) and whose
PYTHONPATH starts with this repository, so the kernel imports this csub.
``CSUB_NB_EPOCHS=1`` keeps training short.
"""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
TIMEOUT = 300  # seconds per cell

# Per notebook (by file name): text it must print, files it must write (relative to its cwd).
EXPECTED_OUTPUT = {
    "unstructured.ipynb": ["picked alpha = "],
    "quantized.ipynb": ["picked bits = ", "model bytes"],
    "structured.ipynb": ["picked width = ", "FLOPs"],
}
EXPECTED_FILES = {
    "unstructured.ipynb": ["notebook_out/accuracy.png"],
    "quantized.ipynb": ["notebook_out/accuracy_vs_bits.png"],
    "structured.ipynb": ["notebook_out/accuracy_vs_width.png", "notebook_out/cost_vs_width.png"],
}


def _ids(paths):
    return [p.name for p in paths]


def _kernel_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env["CSUB_NB_EPOCHS"] = "1"
    env["MPLBACKEND"] = "Agg"
    return env


def _stream_text(nb):
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.get("outputs", []) if out.get("output_type") == "stream")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_clean(path):
    """Notebooks are committed valid (nbformat 4) and without outputs."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name}: cell {i} has saved outputs"
            assert cell.execution_count is None, f"{path.name}: cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute(env=_kernel_env())
    except CellExecutionError as e:
        pytest.fail(f"{path.name} raised in a cell:\n{e}")

    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            errors = [o for o in cell.outputs if o.get("output_type") == "error"]
            assert not errors, f"{path.name}: cell {i} failed: {errors[0].get('ename')}: {errors[0].get('evalue')}"
    text = _stream_text(nb)
    for expected in EXPECTED_OUTPUT.get(path.name, []):
        assert expected in text, f"{path.name}: expected {expected!r} in its printed output"
    for name in EXPECTED_FILES.get(path.name, []):
        assert (tmp_path / name).is_file(), f"{path.name}: did not write {name} in its working directory"
