import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from unet_deploy.export import parity_error  # noqa: E402
from unet_deploy.geometry import Geometry  # noqa: E402
from unet_deploy.metadata import ModelInfo  # noqa: E402
from unet_deploy.train.unet import SoftmaxUNet, UNet  # noqa: E402


def test_paper_unet_shapes_and_widths():
    m = UNet(depth=4, base=64)
    # paper Fig. 1: 572x572 -> 388x388, 64..1024 channels
    convs = [c for c in m.modules() if isinstance(c, torch.nn.Conv2d)]
    assert convs[0].out_channels == 64 and max(c.out_channels for c in convs) == 1024
    assert all(c.padding == (0, 0) for c in convs)
    ups = [c for c in m.modules() if isinstance(c, torch.nn.ConvTranspose2d)]
    assert [u.out_channels for u in ups] == [512, 256, 128, 64]
    assert all(u.kernel_size == (2, 2) and u.stride == (2, 2) for u in ups)
    assert m.head.kernel_size == (1, 1)


@pytest.mark.parametrize("depth,padding", [(1, "valid"), (2, "valid"), (3, "valid"), (2, "same")])
def test_output_size_matches_geometry(depth, padding):
    g = Geometry(depth, padding)
    m = UNet(depth=depth, base=2, padding=padding, out_channels=3).eval()
    for n in g.legal_sizes(1, 200)[:3]:
        with torch.no_grad():
            y = m(torch.zeros(1, 1, n, n + 2**depth))
        assert y.shape == (1, 3, g.output_size(n), g.output_size(n + 2**depth))


def test_he_initialisation_std():
    torch.manual_seed(0)
    m = UNet(depth=2, base=32)
    conv = m.down[1][2]  # second conv of level 2: 64 in, 3x3
    expected = math.sqrt(2 / (9 * conv.in_channels))
    assert abs(conv.weight.std().item() - expected) / expected < 0.05


def test_batch_norm_and_dropout_options():
    m = UNet(depth=2, base=4, batch_norm=True, dropout=0.5)
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())
    assert isinstance(m.dropout, torch.nn.Dropout2d)
    m.train()
    x = torch.randn(1, 1, 92, 92)
    assert not torch.equal(m(x), m(x))  # dropout active in training
    m.eval()
    assert torch.equal(m(x), m(x))


def test_onnx_parity(tmp_path):
    from unet_deploy.export import export_onnx

    info = ModelInfo(depth=2, base=4, tile=92, classes=["a", "b", "c"])
    torch.manual_seed(0)
    unet = UNet(depth=2, base=4, out_channels=3)
    path = export_onnx(unet, info, tmp_path / "m.onnx")
    assert parity_error(SoftmaxUNet(unet).eval(), path, info) <= 1e-4
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    back = ModelInfo.from_json(meta["unet_deploy"])
    assert back.classes == ["a", "b", "c"] and back.depth == 2 and len(back.sha256) == 64
    # dynamic batch and spatial axes
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path))
    out = sess.run(None, {"image": np.zeros((3, 1, 140, 108), np.float32)})[0]
    assert out.shape == (3, 3, 100, 68)
