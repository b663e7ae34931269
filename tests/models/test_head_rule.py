"""The one head rule: a new head is initialised as the architecture initialises it, from the seed's key, and every
route that makes one (``init_head``, ``replace_head``, the recipes' ``build_classifier``, the linear probe given the
model) gives the very same arrays. The bridge's new head is checked in tests/bridge (it needs torch)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxtl.models import (
    ConvNet,
    ConvNeXt,
    VisionTransformer,
    create,
    get_head,
    init_head,
    new_head,
    replace_head,
    strip_head,
)
from jaxtl.recipes.model import build_classifier
from jaxtl.train import fit_linear_probe

SEED = 7
K = 5
MODULES = {
    "resnet": (create("resnet18", num_classes=3), 32),
    "vit": (VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8), 16),
    "convnext": (ConvNeXt(block_setting=((4, None, 2),), num_classes=3), 32),
    "convnet": (ConvNet(num_classes=3, widths=(4, 8)), 32),
}


@pytest.fixture(scope="module", params=list(MODULES))
def family(request):
    module, size = MODULES[request.param]
    variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, size, size, 3)))
    full = jax.jit(module.clone(num_classes=K).init)(jax.random.PRNGKey(SEED), jnp.zeros((1, size, size, 3)))
    return request.param, module, variables, get_head(full, module)


def _same(a, b) -> None:
    for k in ("kernel", "bias"):
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


def test_init_head_is_the_modules_own_init(family) -> None:
    name, module, _, expected = family
    head = init_head(module, K, SEED)
    _same(head, expected)
    _same(init_head(module, K, jax.random.PRNGKey(SEED)), expected)  # an int seed is PRNGKey(seed)
    kernel = np.asarray(head["kernel"])
    assert kernel.shape == (module.num_features, K) and head["bias"].shape == (K,)
    if name == "vit":
        assert not kernel.any() and not np.asarray(head["bias"]).any()  # zeros, as torchvision's ViT
    elif name == "convnext":
        # torch's trunc_normal_(std=0.02) (cut at +-2 absolute: no cut at this std), zero bias
        assert 0.005 < kernel.std() < 0.04 and not np.asarray(head["bias"]).any()
    else:  # torch's nn.Linear init: U(-1/sqrt(F), 1/sqrt(F)) for kernel and bias
        bound = 1 / np.sqrt(module.num_features)
        assert 0 < np.abs(kernel).max() <= bound and np.asarray(head["bias"]).any()


def test_every_route_makes_the_same_head(family) -> None:
    _, module, variables, expected = family
    clf, built = build_classifier((module, variables), K, jax.random.PRNGKey(SEED))
    assert clf.num_classes == K
    _same(get_head(built, clf), expected)
    replaced = replace_head(variables, K, SEED, head=module)
    _same(get_head(replaced, module), expected)
    assert strip_head(replaced, module)["params"] == strip_head(variables, module)["params"]
    feats = np.random.default_rng(0).standard_normal((8, module.num_features)).astype(np.float32)
    labels = np.arange(8) % K
    # A zero learning rate leaves the starting head as it is: the probe's start, made from the model.
    probe = fit_linear_probe(feats, labels, K, optax.sgd(0.0), classifier=module, steps=1, batch_size=8, seed=SEED)
    _same(probe.head, expected)


def test_bad_requests_say_what_is_wrong() -> None:
    module = MODULES["resnet"][0]
    with pytest.raises(ValueError, match="num_classes >= 1"):
        init_head(module, 0, 0)
    with pytest.raises(TypeError, match="Classifier protocol"):
        init_head(object(), 2, 0)  # type: ignore[arg-type]
    # Features without a model: a bare linear layer's init (torch's Linear), at the head path given.
    feats = np.ones((8, 6), np.float32)
    tx = optax.sgd(0.0)
    probe = fit_linear_probe(feats, np.arange(8) % 2, 2, tx, classifier="heads/head", steps=1, batch_size=8, seed=1)
    _same(probe.head, new_head(6, 2, 1))
