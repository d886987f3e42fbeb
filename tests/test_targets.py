"""Targets resolved once per batch: ``xrl.ops.target_function`` gives a ``TargetFn`` whose
``index`` is the action indices (None for a caller's callable) and whose call picks each row's
target score, also for the state-major copies the perturbation methods score."""

import pytest
import torch
from torch import nn

import xrl
from xrl.ops import TargetFn, target_function


def model():
    torch.manual_seed(0)
    return xrl.as_model(nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 5)), input_shape=(2, 4, 4))


def test_index_targets_pick_each_states_score_also_for_its_copies():
    m, states = model(), torch.rand(3, 2, 4, 4)
    fn = target_function(m, states, torch.tensor([4, 0, 2]))
    assert isinstance(fn, TargetFn) and fn.index.tolist() == [4, 0, 2]
    scores = torch.arange(3 * 5, dtype=torch.float32).view(3, 5)
    assert fn(scores).tolist() == [4.0, 5.0, 12.0]  # row r, column index[r]
    copies = torch.arange(6 * 5, dtype=torch.float32).view(6, 5)  # two copies per state, state-major
    assert fn(copies).tolist() == [copies[0, 4], copies[1, 4], copies[2, 0], copies[3, 0], copies[4, 2], copies[5, 2]]
    argmax = target_function(m, states, None)
    assert torch.equal(argmax.index, m(states).argmax(-1))
    assert target_function(m, states, 3).index.tolist() == [3, 3, 3]
    assert target_function(m, states, torch.tensor(1)).index.tolist() == [1, 1, 1]


def test_a_callable_has_no_index_and_its_output_is_checked():
    m, states = model(), torch.rand(3, 2, 4, 4)
    fn = target_function(m, states, lambda s: s[:, 1] - s[:, 0])
    assert fn.index is None
    scores = torch.rand(3, 5)
    assert torch.equal(fn(scores), scores[:, 1] - scores[:, 0])
    with pytest.raises(ValueError, match=r"must map scores \(B, K\) to a \(B,\) tensor, got \(3, 5\)"):
        target_function(m, states, lambda s: s)(scores)
    with pytest.raises(ValueError, match="either index .* or fn"):
        TargetFn(3)


def test_every_method_receives_a_target_fn():
    seen = []

    class Spy(xrl.explainers.base.Explainer):
        def _explain(self, states, target_fn):
            seen.append(target_fn)
            return states[:, 0]

    m, states = model(), torch.rand(2, 2, 4, 4)
    Spy(m).explain(states, 1)
    Spy(m).explain(states, lambda s: s.sum(1))
    assert [type(f) for f in seen] == [TargetFn, TargetFn]
    assert seen[0].index.tolist() == [1, 1] and seen[1].index is None


@pytest.mark.parametrize("metric, settings", [("sanity", {}), ("lipschitz", {"n_samples": 2})])
def test_metrics_that_explain_again_pass_a_callable_target_on(metric, settings):
    """Sanity and Lipschitz explain again (randomized models, neighbours): action indices and
    None are fixed on the given states, and a callable target reaches the explainer as itself
    (not replaced by the argmax of each new model or neighbour)."""
    received = []

    class Spy(xrl.explainers.base.Explainer):
        def explain(self, states, targets=None):
            received.append(targets)
            return super().explain(states, targets)

        def _explain(self, states, target_fn):
            return states[:, 0]

    m, states = model(), torch.rand(2, 2, 4, 4)
    own = lambda s: s[:, 1] - s[:, 0]  # noqa: E731
    xrl.get_metric(metric, **settings)(states=states, saliency=states[:, 0], explainer=Spy(m), targets=own)
    assert received and all(t is own for t in received)
    received.clear()
    xrl.get_metric(metric, **settings)(states=states, saliency=states[:, 0], explainer=Spy(m), targets=None)
    argmax = m(states).argmax(-1)
    assert received and all(isinstance(t, torch.Tensor) and set(t.tolist()) <= set(argmax.tolist()) for t in received)
