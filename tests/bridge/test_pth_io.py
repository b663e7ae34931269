"""The torch-free .pth reader (bridge/pth_io.py) gives what torch.load(weights_only=True) gives, or hands over.

Every file here is written by torch.save; each is read both ways and compared key by key, dtype and bits. Files the
reader must not build (legacy format, big-endian, quantized, float8, a pickled class, damaged) answer None, so that
torch.load reads them and the bridge keeps its refusals word for word (tests/bridge/test_checkpoint_shapes.py).
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import zipfile
from typing import Any

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from bridge.io import load_state_dict  # noqa: E402
from bridge.pth_io import read_pth  # noqa: E402


def _as_numpy(obj: Any) -> Any:
    """torch.load's object with tensors as numpy arrays (bfloat16 through ml_dtypes), containers kept."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if isinstance(obj, dict):
        return type(obj)((k, _as_numpy(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_as_numpy(v) for v in obj)
    return obj


def _assert_same(ours: Any, ref: Any, where: str = "") -> None:
    if isinstance(ref, np.ndarray):
        assert isinstance(ours, np.ndarray), where
        assert ours.dtype == ref.dtype and ours.shape == ref.shape, (where, ours.dtype, ref.dtype, ours.shape)
        assert ours.tobytes() == np.ascontiguousarray(ref).tobytes(), where
        assert ours.flags.writeable and ours.flags.c_contiguous, where
        return
    assert type(ours) is type(ref), (where, type(ours), type(ref))
    if isinstance(ref, dict):
        assert list(ours) == list(ref), where
        for k in ref:
            _assert_same(ours[k], ref[k], f"{where}/{k}")
    elif isinstance(ref, list | tuple):
        assert len(ours) == len(ref), where
        for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
            _assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == ref, where


def _roundtrip(obj: Any, path: Any, **save: Any) -> tuple[Any, Any]:
    torch.save(obj, path, **save)
    return read_pth(path), _as_numpy(torch.load(path, weights_only=True))


def _random_bn(model: Any) -> Any:
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.num_batches_tracked.fill_(7)
    return model


VIT = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)  # torchvision's class


@pytest.mark.parametrize("arch", ["resnet18", "convnext_tiny", "vit"])
def test_torchvision_state_dicts_read_exactly(tmp_path, arch):
    if arch == "vit":
        model = torchvision.models.VisionTransformer(**VIT)  # vit_b_16's layers, small
    else:
        model = _random_bn(getattr(torchvision.models, arch)(weights=None))
    ours, ref = _roundtrip(model.state_dict(), tmp_path / "w.pth")
    assert ours is not None
    _assert_same(ours, ref)
    # the OrderedDict's per-module version record, as torch.load keeps it
    assert ours._metadata == torch.load(tmp_path / "w.pth", weights_only=True)._metadata


def test_dtypes_views_and_containers(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    obj = {
        "model": collections.OrderedDict(
            f32=torch.randn(3, 4),
            f64=torch.randn(2, dtype=torch.float64),
            f16=torch.randn(5).half(),
            bf16=torch.randn(7).bfloat16(),
            i64=torch.tensor(3),  # 0-d, as num_batches_tracked
            i32=torch.arange(4, dtype=torch.int32),
            i16=torch.arange(4, dtype=torch.int16),
            i8=torch.arange(-2, 2, dtype=torch.int8),
            u8=torch.arange(4, dtype=torch.uint8),
            b=torch.tensor([True, False]),
            empty=torch.zeros(0, 3),
            transposed=base.t(),  # strides (1, 10)
            sliced=base[2:5, 3:7],  # an offset into a shared storage
            shared=base,
            param=torch.nn.Parameter(torch.ones(2, 2)),
        ),
        "epoch": 4,
        "loss": 0.25,
        "name": "run",
        "flags": [True, None, (1, 2.5)],
        "raw": b"\x00\x01",
    }
    ours, ref = _roundtrip(obj, tmp_path / "ckpt.pt")
    assert ours is not None
    _assert_same(ours, ref)
    assert ours["model"]["bf16"].dtype == ml_dtypes.bfloat16


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: {"q": torch.quantize_per_tensor(torch.ones(2), 0.1, 0, torch.qint8)}, id="quantized"),
        pytest.param(lambda: {"f8": torch.ones(2).to(torch.float8_e4m3fn)}, id="float8"),
        pytest.param(lambda: {"args": argparse.Namespace(lr=0.1), "w": torch.ones(1)}, id="namespace"),
        pytest.param(lambda: torch.nn.Linear(2, 2), id="pickled-module"),
        pytest.param(lambda: {"c": torch.ones(2, dtype=torch.complex64)}, id="complex"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning")
def test_what_it_does_not_build_goes_to_torch(tmp_path, make):
    path = tmp_path / "w.pth"
    torch.save(make(), path)
    assert read_pth(path) is None


def test_legacy_big_endian_and_damaged_files_go_to_torch(tmp_path):
    sd = {"w": torch.randn(3)}
    torch.save(sd, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert read_pth(tmp_path / "legacy.pth") is None
    good = tmp_path / "good.pth"
    torch.save(sd, good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    assert read_pth(tmp_path / "cut.pth") is None
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "big.pth", "w") as dst:
        for info in src.infolist():
            body = b"big" if info.filename.endswith("/byteorder") else src.read(info)
            dst.writestr(info, body)
    assert read_pth(tmp_path / "big.pth") is None
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp_path / "nostorage.pth", "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info, src.read(info))
    assert read_pth(tmp_path / "nostorage.pth") is None
    (tmp_path / "text.pth").write_text("not a torch file")
    assert read_pth(tmp_path / "text.pth") is None


def test_a_tensor_past_its_storage_is_not_read(tmp_path):
    """A pickle whose tensor claims more elements than its storage holds is refused by the bounds check, not read
    out of bounds."""
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(4)}, path)
    with zipfile.ZipFile(path) as src:
        infos = [(i, src.read(i)) for i in src.infolist()]
    out = tmp_path / "long.pth"
    with zipfile.ZipFile(out, "w") as dst:
        for info, body in infos:
            if info.filename.endswith("data.pkl"):
                assert body.count(b"K\x04\x85") == 1
                body = body.replace(b"K\x04\x85", b"K\x40\x85")  # size (4,) -> (64,)
            dst.writestr(info, body)
    assert read_pth(out) is None


def test_a_broadcast_view_goes_to_torch_and_reads_the_same(tmp_path):
    """A stride-0 view has more elements than its storage: copying it out is torch's business (a crafted size could
    ask for any amount of memory); the bridge still reads it, through torch.load, as before."""
    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(3.0).expand(4, 3), "b": torch.ones(2)}, path)
    assert read_pth(path) is None
    sd = load_state_dict(path)
    np.testing.assert_array_equal(sd["w"], np.tile(np.arange(3.0, dtype=np.float32), (4, 1)))


def test_a_plain_state_dict_loads_without_importing_torch(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    code = (
        "import sys\n"
        "from bridge.io import load_state_dict\n"
        f"sd = load_state_dict({str(tmp_path / 'r18.pth')!r})\n"
        "assert len(sd) == 122, len(sd)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_load_state_dict_is_the_same_either_way(tmp_path):
    """Through the bridge's reader: the numpy state dict from the torch-free path equals torch.load's."""
    model = _random_bn(torchvision.models.resnet18(weights=None))
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    ours = load_state_dict(path)
    ref = model.state_dict()
    assert list(ours) == list(ref)
    for k, v in ref.items():
        assert ours[k].dtype == v.numpy().dtype and np.array_equal(ours[k], v.numpy()), k
