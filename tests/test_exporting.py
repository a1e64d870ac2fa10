"""unet-deploy export: checkpoint → ONNX with dynamic batch, metadata, checker and parity."""

import json

import numpy as np
import onnx
import pytest
import torch

from unet_deploy.errors import ModelError, ModelNotFoundError, OutputError
from unet_deploy.export import OPSET, export_checkpoint, load_training_checkpoint
from unet_deploy.flops import conv_macs, torch_conv_macs
from unet_deploy.metadata import METADATA_KEY, ModelInfo
from unet_deploy.model_store import file_sha256, read_onnx
from unet_deploy.train.unet import SoftmaxUNet, build_unet

TILE = 92  # legal for depth 2 (output 52)


def tiny_info(**kw) -> ModelInfo:
    return ModelInfo(name="tiny", depth=2, base=4, tile=TILE, **kw)


def training_checkpoint(path, info=None, seed=0):
    """A checkpoint exactly as the trainer's best.pt writes it."""
    torch.manual_seed(seed)
    info = info or tiny_info()
    model = build_unet(info)
    torch.save({"model": model.state_dict(), "info": info.to_json(), "step": 3,
                "metrics": json.dumps({"f1@0.5": 0.5})}, path)
    return model.eval()


def test_training_checkpoint_exports_without_flags(tmp_path):
    model = training_checkpoint(tmp_path / "best.pt")
    res = export_checkpoint(tmp_path / "best.pt")
    assert res.path == tmp_path / "best.onnx" and res.path.exists()
    assert res.opset == OPSET and res.parity_max_abs_error <= 1e-4
    assert res.onnx_sha256 == file_sha256(res.path)
    proto = onnx.load(str(res.path))
    onnx.checker.check_model(proto)
    assert any(o.domain in ("", "ai.onnx") and o.version == OPSET for o in proto.opset_import)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"  # dynamic batch axis
    meta = {p.key: p.value for p in proto.metadata_props}
    info = ModelInfo.from_json(meta[METADATA_KEY])
    assert (info.depth, info.base, info.tile) == (2, 4, TILE)
    assert len(info.sha256) == 64
    assert read_onnx(res.path).info.sha256 == info.sha256
    # batch 3 through ORT equals PyTorch
    import onnxruntime as ort
    x = np.random.default_rng(1).standard_normal((3, 1, TILE, TILE)).astype(np.float32)
    got = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x})[0]
    with torch.no_grad():
        ref = SoftmaxUNet(model)(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 2, 52, 52)
    assert np.abs(got - ref).max() <= 1e-4


def test_bare_state_dict_is_described_from_shapes(tmp_path):
    torch.manual_seed(0)
    model = build_unet(tiny_info(classes=["bg", "in", "border"]))
    torch.save(model.state_dict(), tmp_path / "w.pt")
    m, info = load_training_checkpoint(tmp_path / "w.pt")
    assert (info.depth, info.base, info.in_channels, info.out_channels) == (2, 4, 1, 3)
    res = export_checkpoint(tmp_path / "w.pt", tmp_path / "w.onnx", tile=TILE)
    assert res.tile == TILE


def test_parity_failure_writes_nothing(tmp_path, monkeypatch):
    training_checkpoint(tmp_path / "best.pt")
    monkeypatch.setattr("unet_deploy.export.parity_error", lambda *a, **k: 3e-4)
    with pytest.raises(ModelError, match="differs from PyTorch"):
        export_checkpoint(tmp_path / "best.pt", tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


class Evil:  # pickled by reference: loading it would need arbitrary code
    pass


def test_refuses_pickled_code_overwrite_and_missing(tmp_path):
    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ModelError, match="weights-only"):
        export_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(ModelNotFoundError):
        export_checkpoint(tmp_path / "nope.pt")
    training_checkpoint(tmp_path / "best.pt")
    (tmp_path / "best.onnx").write_bytes(b"x")
    with pytest.raises(OutputError):
        export_checkpoint(tmp_path / "best.pt")
    with pytest.raises(ModelError, match="not a legal"):
        export_checkpoint(tmp_path / "best.pt", tmp_path / "o.onnx", tile=91)


def test_conv_macs_match_torch_hooks(tmp_path):
    model = training_checkpoint(tmp_path / "best.pt")
    res = export_checkpoint(tmp_path / "best.pt")
    x = torch.zeros(2, 1, TILE, TILE)
    assert conv_macs(res.path, 2, TILE) == torch_conv_macs(model, x) > 0
