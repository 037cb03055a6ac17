import math

import numpy as np
import pytest
import torch

from cogqa.errors import CogqaError
from cogqa.evaluate import loss_at_contexts, loss_by_position, relative_delta, token_losses


def test_token_losses_hand_computed():
    # vocab 2; logits favour token 0 with log-odds log(3): p(0)=3/4, p(1)=1/4
    V = 2
    logits = torch.zeros(2, 3, V)
    logits[..., 0] = math.log(3)
    ids = torch.tensor([[0, 0, 1], [1, 1, 0]])
    L = token_losses(logits, ids)
    assert L.shape == (2, 2)
    a, b = -math.log(0.75), -math.log(0.25)
    np.testing.assert_allclose(L, [[a, b], [b, a]], rtol=1e-6)
    pos = loss_by_position(L)
    np.testing.assert_allclose(pos, [(a + b) / 2, (a + b) / 2], rtol=1e-6)


def test_matches_torch_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    ids = torch.randint(0, 11, (3, 7))
    L = token_losses(logits, ids)
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1))
    assert abs(L.mean() - ref.item()) < 1e-6


def test_contexts_and_delta():
    pos = np.array([4.0, 3.0, 2.0, 1.0])
    assert loss_at_contexts(pos, [2, 3, 5]) == {2: 4.0, 3: 3.5, 5: 2.5}
    np.testing.assert_allclose(relative_delta([2.2, 1.0], [2.0, 1.0]), [0.1, 0.0])
    with pytest.raises(CogqaError, match="needs chunks"):
        loss_at_contexts(pos, [8])


def test_tiny_model_positions_and_too_long_context():
    from cogqa.evaluate import evaluate_positions
    from cogqa.model import GQADecoder
    from cogqa.shapes import ModelShape
    shape = ModelShape(layers=1, hidden_size=64, ffn_size=128, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=97)
    model = GQADecoder(shape, max_seq_len=32)
    model.init_weights(seed=1)
    chunks = [np.arange(i, i + 16) % 97 for i in range(5)]
    pos = evaluate_positions(model, chunks, batch=2)
    ids = torch.as_tensor(np.stack(chunks))
    with torch.no_grad():
        ref = model(ids, labels=ids).loss.item()
    assert pos.shape == (15,) and abs(pos.mean() - ref) < 1e-5
    with pytest.raises(CogqaError, match="longer than the model supports"):
        evaluate_positions(model, [np.zeros(64, dtype=np.int64)])
