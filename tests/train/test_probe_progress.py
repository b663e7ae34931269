"""extract_features (the cached-feature route) reports its progress as fit does when asked: plain lines when the
output is not a terminal, nothing by default."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtl.data import ArrayDataset
from jaxtl.models.autoencoder import ConvNet
from jaxtl.train.probe import extract_features


def test_extract_features_progress_lines(capsys):
    module = ConvNet(num_classes=0, widths=(4,))
    variables = module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    data = ArrayDataset(np.random.default_rng(0).random((10, 8, 8, 1), np.float32), None, 0)
    quiet = extract_features(module, variables, data, batch_size=4)
    assert capsys.readouterr().err == ""
    feats = extract_features(module, variables, data, batch_size=4, progress=True)
    np.testing.assert_array_equal(feats, quiet)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "features: 0/3 steps, compiling the first step..."
    assert lines[1].startswith("features: 1/3 steps, first step (compile included) took ")
    assert lines[-1].startswith("features: 3/3 steps (100%)") and len(lines) <= 4
