"""docs/interop.md runs: its size table is minunet's geometry, its Python snippets work as written."""
import re
from pathlib import Path

import pytest

from minunet.export import onnx_graph
from minunet.model import geometry
from minunet.model.checkpoint import load_model, save_checkpoint
from minunet.model.unet import UNet
from tests.backends import fast_device

DOC = Path(__file__).resolve().parents[1] / "docs" / "interop.md"


def snippets():
    """The ```python blocks of the document, in order."""
    return [re.sub(r"^ {2}", "", block, flags=re.MULTILINE)
            for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)]


def test_size_table_is_the_geometry():
    rows = re.findall(r"^\| depth (\d), (\d)x\d[^|]*\| (\d+) \| (\d+) \| (\d+) \| (\d+) -> (\d+) \|$",
                      DOC.read_text(), flags=re.MULTILINE)
    assert len(rows) == 4
    for depth, up, minimum, step, offset, size, out in (tuple(map(int, row)) for row in rows):
        assert onnx_graph.tile_rule(depth, up) == onnx_graph.TileRule(minimum, step, offset)
        assert geometry.output_size(size, depth, up) == out


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    """A depth-3 model (572 is one of its valid sizes too), with the working folder set to tmp_path."""
    monkeypatch.chdir(tmp_path)
    save_checkpoint(tmp_path / "best.h5", UNet(depth=3, width=2, device=fast_device(), seed=3))
    return load_model(tmp_path / "best.h5", fast_device())


def test_onnxruntime_snippet(tiny_model):
    pytest.importorskip("onnxruntime")
    onnx_graph.save(onnx_graph.build(tiny_model[0]), "isbi-unet.onnx")
    code = next(s for s in snippets() if "onnxruntime" in s)
    exec(compile(code, str(DOC), "exec"), {})


def test_bioimageio_core_snippet(tiny_model, rng):
    pytest.importorskip("bioimageio.core")
    pytest.importorskip("onnxruntime")
    import numpy as np

    from minunet.export import bioimageio
    sample = rng.integers(0, 256, (1, 80, 80), dtype=np.uint8)
    info = dict(name="tiny U-Net", description="a test", authors=["Test"], license="MIT")
    bioimageio.write_zip("isbi-unet.zip", bioimageio.build_package(*tiny_model, sample, info))
    code = next(s for s in snippets() if "bioimageio.core" in s)
    scope = {}
    exec(compile(code, str(DOC), "exec"), scope)
    assert scope["probs"].shape == (1, 2, 572 - 40, 572 - 40)
