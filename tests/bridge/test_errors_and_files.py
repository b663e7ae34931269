"""Strict checking, file reading failures, head replacement, and the .safetensors reader/writer."""

from __future__ import annotations

import logging
import pickle

import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
st_numpy = pytest.importorskip("safetensors.numpy")
st_torch = pytest.importorskip("safetensors.torch")

from jaxtl.bridge import (  # noqa: E402
    BridgeError,
    from_torchvision,
    load_flax_safetensors,
    load_safetensors,
    load_state_dict,
    save_flax_safetensors,
    save_safetensors,
    to_torchvision,
)
from jaxtl.models import create, init_head  # noqa: E402


@pytest.fixture(scope="module")
def sd18():
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def _copy(sd):
    return {k: v.clone() for k, v in sd.items()}


def test_every_problem_is_reported_at_once(sd18) -> None:
    sd = _copy(sd18)
    del sd["layer1.0.bn1.running_var"], sd["layer2.0.conv1.weight"]
    sd["extra.weight"] = torch.zeros(3)
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    sd["bn1.weight"] = torch.ones(64, dtype=torch.int64)
    sd["layer4.1.bn2.bias"][0] = float("nan")
    sd["layer3.0.bn1.num_batches_tracked"] = torch.tensor(1.5)
    with pytest.raises(BridgeError) as e:
        from_torchvision(sd, arch="resnet18")
    msg = str(e.value)
    for expected in (
        "missing key 'layer1.0.bn1.running_var'",
        "missing key 'layer2.0.conv1.weight'",
        "unexpected key 'extra.weight'",
        "shape of 'layer1.0.conv1.weight' is [64, 64, 1, 1], resnet18 needs [64, 64, 3, 3]",
        "'bn1.weight' has dtype int64, expected floating point",
        "'layer4.1.bn2.bias' has 1 NaN/inf value(s)",
        "'layer3.0.bn1.num_batches_tracked' has dtype float32, expected an integer",
    ):
        assert expected in msg, f"{expected!r} not in:\n{msg}"


def test_infinite_value_and_long_lists_are_truncated(sd18) -> None:
    sd = _copy(sd18)
    sd["fc.bias"][3] = float("inf")
    with pytest.raises(BridgeError, match=r"'fc.bias' has 1 NaN/inf"):
        from_torchvision(sd)
    sd = {k: v for k, v in sd18.items() if not k.startswith("layer4")}
    with pytest.raises(BridgeError, match=r"\.\.\. and \d+ more"):
        from_torchvision(sd, arch="resnet18")


def test_strict_false_ignores_unexpected_and_fills_old_counters(sd18, caplog) -> None:
    sd = _copy(sd18)
    sd["extra.weight"] = torch.zeros(3)
    del sd["bn1.num_batches_tracked"]
    with caplog.at_level(logging.WARNING, logger="jaxtl.bridge"):
        result = from_torchvision(sd, strict=False)
    assert result.report.ignored == ["extra.weight"]
    assert "extra.weight" in caplog.text
    assert int(result.variables["batch_stats"]["bn1"]["num_batches_tracked"]) == 0
    sd["layer1.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(BridgeError, match=r"layer1\.0\.conv1\.weight"):
        from_torchvision(sd, strict=False)


def test_new_head_reproducible_from_seed_rest_identical(sd18, caplog) -> None:
    _, base = from_torchvision(sd18)
    with caplog.at_level(logging.WARNING, logger="jaxtl.bridge"):
        r1 = from_torchvision(sd18, num_classes=10, seed=3)
    assert "new 10-class head initialised from seed 3" in caplog.text
    assert r1.report.fc_reinitialized and r1.report.dropped == ["fc.weight", "fc.bias"]
    _, v2 = from_torchvision(sd18, num_classes=10, seed=3)
    _, v3 = from_torchvision(sd18, num_classes=10, seed=4)
    m1, v1 = r1
    assert m1.num_classes == 10
    assert v1["params"]["fc"]["kernel"].shape == (512, 10) and v1["params"]["fc"]["bias"].shape == (10,)
    np.testing.assert_array_equal(v1["params"]["fc"]["kernel"], v2["params"]["fc"]["kernel"])
    np.testing.assert_array_equal(v1["params"]["fc"]["bias"], v2["params"]["fc"]["bias"])
    assert not np.array_equal(v1["params"]["fc"]["kernel"], v3["params"]["fc"]["kernel"])
    want = init_head(create("resnet18", num_classes=10), 10, 3)  # the head rule, as every route makes a head
    np.testing.assert_array_equal(v1["params"]["fc"]["kernel"], want["kernel"])
    np.testing.assert_array_equal(v1["params"]["fc"]["bias"], want["bias"])
    bound = 1 / np.sqrt(512)
    assert np.abs(np.asarray(v1["params"]["fc"]["kernel"])).max() <= bound
    strip = {**v1["params"]}
    strip.pop("fc")
    base_no_fc = {k: v for k, v in base["params"].items() if k != "fc"}
    assert jax.tree.all(jax.tree.map(np.array_equal, strip, base_no_fc))
    assert jax.tree.all(jax.tree.map(np.array_equal, v1["batch_stats"], base["batch_stats"]))

    # The exported head loads into torchvision with the new size.
    torchvision.models.resnet18(num_classes=10).load_state_dict(to_torchvision(v1, "resnet18"), strict=True)

    m0, v0 = from_torchvision(sd18, num_classes=0)
    assert m0.num_classes == 0 and "fc" not in v0["params"]
    assert set(to_torchvision(v0, "resnet18")) == {k for k in sd18 if not k.startswith("fc.")}


def test_sources_module_numpy_nested_and_ddp_prefix(sd18, tmp_path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    _, ref = from_torchvision(model)
    as_numpy = {k: v.numpy() for k, v in sd18.items()}
    torch.save({"epoch": 3, "state_dict": {"module." + k: v for k, v in sd18.items()}}, tmp_path / "ckpt.pt")
    for source in (as_numpy, tmp_path / "ckpt.pt", str(tmp_path / "ckpt.pt")):
        _, v = from_torchvision(source)
        assert jax.tree.all(jax.tree.map(np.array_equal, v, ref))
    with pytest.raises(BridgeError, match="cannot convert a list"):
        from_torchvision([1, 2])


def test_export_rejects_wrong_variables(sd18) -> None:
    _, v = from_torchvision(sd18)
    with pytest.raises(BridgeError, match="missing variable 'params/layer1/2/conv1/kernel'"):
        to_torchvision(v, "resnet34")
    with pytest.raises(BridgeError, match="lack the collection"):
        to_torchvision({"params": v["params"]}, "resnet18")


# ---- files ---------------------------------------------------------------------------------------------------------


def test_zero_byte_and_missing_files(tmp_path) -> None:
    for name in ("empty.pth", "empty.safetensors"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(BridgeError, match=rf"{name} is empty"):
            load_state_dict(tmp_path / name)
    with pytest.raises(BridgeError, match=r"no such file: .*nope\.pth"):
        from_torchvision(tmp_path / "nope.pth")


def test_truncated_files(sd18, tmp_path) -> None:
    small = {k: v for k, v in sd18.items() if k.startswith(("conv1", "bn1"))}
    torch.save(small, tmp_path / "w.pth")
    st_torch.save_file(small, tmp_path / "w.safetensors")
    for name in ("w.pth", "w.safetensors"):
        blob = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(blob[: len(blob) // 2])
        with pytest.raises(BridgeError, match=name) as e:
            load_state_dict(tmp_path / name)
        assert e.value.__cause__ is not None or "safetensors" in str(e.value)


def test_non_dict_pickle_and_non_tensor_values(tmp_path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(BridgeError, match=r"list.pth holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pth")
    torch.save({"conv1.weight": torch.zeros(2), "note": "hello"}, tmp_path / "mixed.pth")
    with pytest.raises(BridgeError, match=r"'note': a str, not a tensor"):
        load_state_dict(tmp_path / "mixed.pth")


class _Payload:
    """Unpickling this calls open(marker, "w"): code execution that weights_only=True must refuse."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_needing_code_execution_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"conv1.weight": torch.zeros(1), "x": _Payload(str(marker))}, tmp_path / "evil.pth")
    with pytest.raises(BridgeError, match=r"evil.pth with torch.load\(weights_only=True\)"):
        from_torchvision(tmp_path / "evil.pth")
    assert not marker.exists()
    # Control: the payload is live, so the assertion above could fail.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Payload(str(control)))).close()
    assert control.exists()


ALL_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _arrays():
    rng = np.random.default_rng(0)
    out = {f"t/{k}": (rng.standard_normal((3, 5)) * 50).astype(v) for k, v in ALL_DTYPES.items()}
    out["scalar"] = np.array(7, np.int64)
    out["empty"] = np.zeros((0, 4), np.float32)
    return out


def test_safetensors_compatible_with_reference_package(tmp_path) -> None:
    arrays = _arrays()
    save_safetensors(arrays, tmp_path / "mine.safetensors", metadata={"who": "jaxtl"})
    theirs = st_torch.load_file(tmp_path / "mine.safetensors")  # torch loader: it knows bfloat16
    for k, a in arrays.items():
        t = theirs[k]
        got = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16) if t.dtype == torch.bfloat16 else t.numpy()
        assert got.dtype == a.dtype and np.array_equal(got, a), k
    plain = {k: v for k, v in arrays.items() if v.dtype != ml_dtypes.bfloat16}
    st_numpy.save_file(plain, tmp_path / "theirs.safetensors", metadata={"a": "b"})
    st_torch.save_file({"bf": torch.arange(6, dtype=torch.bfloat16)}, tmp_path / "bf.safetensors")
    mine, meta = load_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"a": "b"}
    assert set(mine) == set(plain)
    for k, a in plain.items():
        assert mine[k].dtype == a.dtype and np.array_equal(mine[k], a), k
    bf, _ = load_safetensors(tmp_path / "bf.safetensors")
    assert bf["bf"].dtype == ml_dtypes.bfloat16 and bf["bf"].astype(np.float32).tolist() == [0, 1, 2, 3, 4, 5]


def test_safetensors_corruption_is_detected(tmp_path) -> None:
    save_safetensors({"a": np.arange(4, dtype=np.float32)}, tmp_path / "ok.safetensors")
    blob = (tmp_path / "ok.safetensors").read_bytes()
    cases = {
        "short.safetensors": blob[:5],
        "trunc.safetensors": blob[:-4],
        "extra.safetensors": blob + b"\0" * 4,
        "header.safetensors": (10**12).to_bytes(8, "little") + blob[8:],
        "json.safetensors": blob[:8] + b"{" * (len(blob) - 8),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(BridgeError, match=name):
            load_safetensors(tmp_path / name)
    with pytest.raises(BridgeError, match=r"'c'.*complex"):
        save_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path / "c.safetensors")


def test_flax_safetensors_roundtrip(sd18, tmp_path) -> None:
    _, v = from_torchvision(sd18, num_classes=3)
    save_flax_safetensors(v, tmp_path / "flax.safetensors")
    keys = set(load_safetensors(tmp_path / "flax.safetensors")[0])
    assert "params/conv1/kernel" in keys and "batch_stats/layer1/0/bn1/num_batches_tracked" in keys
    back = load_flax_safetensors(tmp_path / "flax.safetensors")
    assert jax.tree.structure(back) == jax.tree.structure(v)
    assert jax.tree.all(jax.tree.map(lambda a, b: a.dtype == b.dtype and np.array_equal(a, b), back, v))
    st_torch.save_file(dict(sd18), tmp_path / "torch_layout.safetensors")
    with pytest.raises(BridgeError, match="not a jaxtl Flax-layout"):
        load_flax_safetensors(tmp_path / "torch_layout.safetensors")
