"""Attacks (FGSM, PGD, MI-FGSM, MAD): inside the ε-ball and the bounds, harmful, seeded, side-effect free;
return under attack on the zoo Red-Fetch-Green agent."""

import pytest
import torch
from torch import nn

import xrl
from xrl.attacks import get_attack, list_attacks
from xrl.attacks.evaluate import return_under_attack, write_attack_results


def tiny_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 5 * 5, 16), nn.Tanh(), nn.Linear(16, 4))
    return xrl.as_model(net, input_shape=(2, 5, 5))


def states(n=6, seed=0):
    return torch.rand(n, 2, 5, 5, generator=torch.Generator().manual_seed(seed))


def test_all_four_attacks_are_registered():
    assert list_attacks() == ["fgsm", "mad", "mi_fgsm", "pgd"]


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mi_fgsm", "mad"])
@pytest.mark.parametrize("eps", [0.02, 0.1])
def test_attack_stays_in_the_ball_and_the_bounds(name, eps):
    model, x = tiny_model(), states()
    adv = get_attack(name, model, eps=eps)(x)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert (adv - x).abs().max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv - x).abs().max() > eps / 2  # it does move


@pytest.mark.parametrize("name", ["fgsm", "pgd", "mi_fgsm"])
def test_attack_lowers_the_attacked_actions_probability(name):
    model, x = tiny_model(), states()
    with torch.no_grad():
        actions = model(x).argmax(-1)
        before = model.probs(x).gather(1, actions[:, None])
    adv = get_attack(name, model, eps=0.1)(x)
    with torch.no_grad():
        after = model.probs(adv).gather(1, actions[:, None])
    assert (after < before).all()


def test_mad_moves_the_action_distribution_more_than_random_noise():
    model, x = tiny_model(), states()
    eps = 0.1

    def kl(adv):
        with torch.no_grad():
            log_p, log_q = model(x).log_softmax(-1), model(adv).log_softmax(-1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    noise = (x + eps * (torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1).sign()).clamp(0, 1)
    assert (kl(get_attack("mad", model, eps=eps)(x)) > kl(noise)).all()


def test_fgsm_on_a_linear_model_is_the_sign_of_the_weights_difference():
    """Cross-entropy of a 2-action linear model: grad = (p_other)(w_other - w_target); FGSM
    moves each pixel by eps along its sign (away from the bounds)."""
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 3.0], [0.0, 1.0, 1.0, -1.0]]))
    model = xrl.as_model(nn.Sequential(nn.Flatten(), lin), input_shape=(1, 2, 2))
    x = torch.full((1, 1, 2, 2), 0.5)
    adv = get_attack("fgsm", model, eps=0.1)(x, actions=torch.tensor([0]))
    expected = 0.5 + 0.1 * torch.sign(lin.weight[1] - lin.weight[0]).detach().view(1, 1, 2, 2)
    assert torch.allclose(adv, expected)


def test_attacks_are_seeded_and_leave_the_model_alone():
    model, x = tiny_model(), states()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = get_attack("pgd", model, eps=0.05, seed=3)(x)
    assert torch.equal(a, get_attack("pgd", model, eps=0.05, seed=3)(x))
    assert not torch.equal(a, get_attack("pgd", model, eps=0.05, seed=4)(x))
    assert model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_zero_eps_is_the_identity():
    model, x = tiny_model(), states()
    for name in list_attacks():
        assert torch.equal(get_attack(name, model, eps=0)(x), x)


def test_bad_settings_and_inputs_say_what_was_expected():
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown attack 'cw'.*fgsm"):
        get_attack("cw", model, eps=0.1)
    with pytest.raises(ValueError, match="eps"):
        get_attack("fgsm", model, eps=-1)
    with pytest.raises(ValueError, match="steps"):
        get_attack("pgd", model, eps=0.1, steps=0)
    with pytest.raises(ValueError, match="actions must be indices"):
        get_attack("fgsm", model, eps=0.1)(states(2), actions=torch.tensor([0, 9]))
    with pytest.raises(TypeError, match="float"):
        get_attack("fgsm", model, eps=0.1)(torch.zeros(1, 2, 5, 5, dtype=torch.uint8))


def test_return_under_attack_on_the_zoo_agent(tmp_path):
    model = xrl.load_agent("red-fetch-green")
    curves = return_under_attack(
        model, ["fgsm", "pgd"], [0.0, 0.3], episodes=4, seed=0, progress=False, attack_settings={"pgd": {"steps": 3}}
    )
    assert [r["eps"] for r in curves["fgsm"]] == [0.0, 0.3]
    # eps = 0 is the clean agent: the same episodes score as the plain evaluation
    from xrl.train.agent import evaluate

    clean = evaluate(model, "red-fetch-green", {}, episodes=4, seed=0, progress=False)
    assert curves["fgsm"][0]["mean_return"] == curves["pgd"][0]["mean_return"] == clean["mean_return"]
    assert curves["pgd"][1]["mean_return"] < clean["mean_return"]  # a large ball breaks the agent
    out = write_attack_results({"teacher": curves}, tmp_path)
    assert (out / "attacks.csv").read_text().count("\n") == 1 + 4


def test_xrl_attack_command_writes_table_and_figure(tmp_path, capsys):
    from xrl.cli import main

    code = main(
        [
            "attack",
            "--agent",
            "red-fetch-green",
            "--attacks",
            "fgsm,mad",
            "--eps",
            "0,0.3",
            "--episodes",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert "red-fetch-green fgsm: eps 0:" in capsys.readouterr().out
    for name in ("attacks.csv", "attacks.json", "attacks.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert main(["attack", "--agent", "red-fetch-green", "--attacks", "cw", "--out", str(tmp_path)]) == 2


def test_reseeding_with_a_list_gives_each_row_the_stream_it_would_have_alone():
    model, x = tiny_model(), states(3)
    batched = get_attack("pgd", model, eps=0.05)
    batched.reseed([7, 8, 9])
    together = batched(x)
    for j, seed in enumerate([7, 8, 9]):
        alone = get_attack("pgd", model, eps=0.05)
        alone.reseed(seed)
        assert torch.allclose(together[j : j + 1], alone(x[j : j + 1]), atol=1e-6)
    with pytest.raises(ValueError, match="3 streams, one per row.*batch of 2"):
        batched(x[:2])


def test_episodes_played_side_by_side_are_the_episodes_played_one_at_a_time():
    from xrl.train.agent import evaluate

    model = xrl.load_agent("red-fetch-green")
    for attack in (None, get_attack("pgd", model, eps=0.02, steps=2)):  # a mix of won and lost
        one = evaluate(model, "red-fetch-green", {}, episodes=3, seed=3, perturb=attack, progress=False)
        side = evaluate(
            model, "red-fetch-green", {}, episodes=3, seed=3, perturb=attack, progress=False, batch=2, per_episode=True
        )
        assert one == {k: v for k, v in side.items() if k != "returns"}
        singles = [
            evaluate(model, "red-fetch-green", {}, episodes=1, seed=s, perturb=attack, progress=False)
            for s in (3, 4, 5)
        ]
        assert side["returns"] == [r["mean_return"] for r in singles]
    with pytest.raises(ValueError, match="batch must be a positive"):
        evaluate(model, "red-fetch-green", {}, episodes=1, seed=0, batch=0)
