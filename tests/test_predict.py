"""jaxtl.predict and `jaxtl predict`: the top-k class names torchvision's model gives, from weights by name or from a
jaxtl checkpoint; JSON output; one-line errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxtl.cli import main
from jaxtl.models.card import ModelCard
from jaxtl.predict import predict, preprocess

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

W18 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(240, 320), (300, 260)]):
        base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)  # smooth, distinct images: clear top classes
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
        paths.append(d / f"img{i}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A random-init resnet18 (random BN statistics) in a temporary TORCH_HOME under the official file name."""
    root = tmp_path_factory.mktemp("hub")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TORCH_HOME", str(root / "torch"))
        mp.setenv("JAXTL_WEIGHTS_CACHE", str(root / "cache"))
        mp.setenv("JAXTL_OFFLINE", "1")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).eval()
        g = torch.Generator().manual_seed(2)
        with torch.no_grad():
            for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
                bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
                bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
        path = root / "torch" / "hub" / "checkpoints" / W18.url.rsplit("/", 1)[1]
        path.parent.mkdir(parents=True)
        torch.save(model.state_dict(), path)
        yield model


def _torch_top(model, image_path, k):
    x = W18.transforms()(Image.open(image_path).convert("RGB"))
    with torch.inference_mode():
        p = torch.softmax(model(x[None]), dim=-1)[0].numpy()
    order = np.argsort(-p, kind="stable")[:k]
    return [W18.meta["categories"][i] for i in order], p[order]


def test_cli_predict_by_weights_name_prints_torchvision_top_k(hub, images, capsys) -> None:
    assert main(["predict", *map(str, images), "--weights", "resnet18.IMAGENET1K_V1", "--top-k", "3", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == W18.url
    for path, pred in zip(images, doc["predictions"]):
        names, probs = _torch_top(hub, path, 3)
        assert pred["image"] == str(path)
        assert [t["class"] for t in pred["top"]] == names
        np.testing.assert_allclose([t["probability"] for t in pred["top"]], probs, atol=1e-5)
        assert [W18.meta["categories"][t["index"]] for t in pred["top"]] == names

    assert main(["predict", str(images[0]), "--weights", "ResNet18_Weights.DEFAULT", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    names, probs = _torch_top(hub, images[0], 2)
    assert lines[0] == str(images[0])
    assert [ln.split(None, 1)[1] for ln in lines[1:]] == names
    assert [float(ln.split()[0]) for ln in lines[1:]] == pytest.approx(probs, abs=1e-4)


@pytest.fixture(scope="module")
def small_classifier():
    """A 3-class resnet18 at 32 px with random variables and its card."""
    import jaxtl

    module = jaxtl.create("resnet18", num_classes=3)
    variables = jax.jit(lambda k: module.init(k, jnp.zeros((1, 32, 32, 3)), train=False))(jax.random.PRNGKey(3))
    card = ModelCard.for_arch("resnet18", 3, class_names=("cat", "dog", "fox"), image_size=32)
    return module, variables, card


def test_library_predict_matches_softmax_of_logits(small_classifier, images) -> None:
    module, variables, card = small_classifier
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    preds = predict([images[0], arrays[1], Image.open(images[1])], module, variables, card, top_k=5, batch_size=2)
    assert [p.source for p in preds] == [str(images[0]), "image[1]", "image[2]"]
    x = np.stack([preprocess(p, card.preprocessing) for p in images])
    assert x.shape == (2, 32, 32, 3)
    probs = np.asarray(jax.nn.softmax(module.apply(variables, x, train=False), axis=-1))
    for pred, p in zip([preds[0], preds[1]], probs):
        assert len(pred.top) == 3  # top_k is capped at the number of classes
        order = np.argsort(-p)
        assert [t[0] for t in pred.top] == [card.class_names[i] for i in order]
        np.testing.assert_allclose([t[1] for t in pred.top], p[order], rtol=1e-5)
    # A Pillow image and its array give the same answer (up to batch-dependent float rounding).
    assert [t[0] for t in preds[2].top] == [t[0] for t in preds[1].top]
    np.testing.assert_allclose([t[1] for t in preds[2].top], [t[1] for t in preds[1].top], rtol=1e-5)
    with pytest.raises(ValueError, match="the model is a backbone without classifier head"):
        predict(images, module, variables, card.replace(num_classes=0, class_names=(), kind="backbone"))
    with pytest.raises(ValueError, match="the model is an encoder without classifier head"):
        predict(images, module, variables, card.replace(num_classes=0, class_names=(), kind="encoder"))
    with pytest.raises(ValueError, match=r"expected a uint8 array"):
        predict([np.zeros((8, 8, 3), np.float32)], module, variables, card)


def test_unreadable_images_do_not_lose_the_others(small_classifier, images, tmp_path) -> None:
    module, variables, card = small_classifier
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    batch = [tmp_path / "missing.png", images[0], tmp_path / "broken.png", images[1]]
    preds = predict(batch, module, variables, card, top_k=2, batch_size=2)
    assert [p.source for p in preds] == [str(p) for p in batch]
    assert [p.error is None for p in preds] == [False, True, False, True]
    assert "cannot read the image" in preds[0].error and "missing.png" in preds[0].error
    assert preds[2].top == () and preds[2].to_dict()["error"] == preds[2].error
    alone = predict([images[0], images[1]], module, variables, card, top_k=2)
    assert [p.top for p in (preds[1], preds[3])] == [p.top for p in alone]
    assert "error" not in preds[1].to_dict()
    only_bad = predict([tmp_path / "missing.png"], module, variables, card)
    assert only_bad[0].error and only_bad[0].top == ()


def test_write_predictions_text_json_and_a_closed_pipe(tmp_path) -> None:
    import io
    import subprocess
    import sys

    from jaxtl.predict import Prediction, write_predictions

    preds = [Prediction("a.png", (("cat", 0.75, 0), ("dog", 0.25, 1))), Prediction("b.png", (), "cannot read")]
    out = io.StringIO()
    assert write_predictions(preds, "ck", file=out)
    assert out.getvalue() == "a.png\n    0.7500  cat\n    0.2500  dog\n"
    out = io.StringIO()
    assert write_predictions(preds, "ck", as_json=True, file=out)
    doc = json.loads(out.getvalue())
    assert doc["model"] == "ck" and doc["predictions"][1] == {"image": "b.png", "top": [], "error": "cannot read"}

    # `jaxtl predict ... | head -1`: the reader goes away; no error, no "Exception ignored" at exit.
    script = (
        "import sys\n"
        "from jaxtl.predict import Prediction, write_predictions\n"
        "preds = [Prediction(f'img{i}.png', (('cat', 0.5, 0),)) for i in range(50_000)]\n"
        "sys.exit(0 if not write_predictions(preds, 'm') else 3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"img0.png\n"
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and err == b"", err.decode()


def test_cli_predict_from_checkpoint_and_errors(small_classifier, images, tmp_path, capsys) -> None:
    from jaxtl.train.model_files import save_variables

    module, variables, card = small_classifier
    save_variables(tmp_path / "ck", variables, card)
    assert main(["predict", str(images[0]), "--checkpoint", str(tmp_path / "ck"), "--top-k", "1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (pred,) = doc["predictions"]
    (expected,) = predict([images[0]], module, variables, card, top_k=1)
    assert pred["top"][0]["class"] == expected.top[0][0]
    assert doc["model"] == str(tmp_path / "ck")  # the checkpoint, not the weights it was made from

    # One unreadable file among others: the others are printed, exit 2 names the bad one.
    missing = str(tmp_path / "nope.png")
    assert main(["predict", str(images[0]), missing, "--checkpoint", str(tmp_path / "ck"), "--top-k", "1"]) == 2
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == str(images[0]) and missing not in captured.out
    err = captured.err.strip().splitlines()
    assert err[0].startswith("jaxtl: error: 1 of 2 images could not be read") and missing in err[0], err
    assert any("cannot read the image" in line for line in err)

    for argv, message in [
        ([str(images[0]), "--checkpoint", str(tmp_path / "missing")], "missing does not exist"),
        ([str(images[0]), "--weights", "resnet18.IMAGENET1K_V9"], "has no weights 'IMAGENET1K_V9'"),
        ([str(images[0]), "--checkpoint", str(tmp_path / "ck"), "--top-k", "0"], "--top-k must be >= 1"),
    ]:
        assert main(["predict", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("jaxtl: error: ") and message in err[0], err
