"""Atari ground truth from RAM against the rendered screens, the label maps in ``info``, and
BreakoutInfinite."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xrl.envs import env_spec, make_env
from xrl.envs.atari_objects import (
    MSPACMAN_OBJECTS,
    SPACE_INVADERS_SHIELDS,
    BreakoutInfinite,
    breakout_score,
    label_map,
    mspacman_envelope,
    pong_objects,
    seaquest_envelopes,
    seaquest_objects,
    space_invaders_envelopes,
    space_invaders_objects,
    to_grid,
)
from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT
from xrl.metrics import get_metric

#: game -> object -> (RGB colour, screen rows, screen columns) where only that object has that colour
COLOURS = {
    "pong": {
        "player": ((92, 186, 92), (34, 194), (140, 144)),
        "enemy": ((213, 130, 74), (34, 194), (16, 20)),
        "ball": ((236, 236, 236), (34, 194), (0, 160)),
    },
    "breakout": {"player": ((200, 72, 72), (189, 193), (8, 152)), "ball": ((200, 72, 72), (94, 189), (8, 152))},
}


def drawn(frame: np.ndarray, colour, rows, cols) -> np.ndarray:
    """Screen pixels (row, col) of ``colour`` inside the region."""
    mask = (frame == np.asarray(colour)).all(-1)
    region = np.zeros_like(mask)
    region[rows[0] : rows[1], cols[0] : cols[1]] = True
    return np.argwhere(mask & region)


def recorded(game: str, steps: int, seed: int = 0):
    """(screen, RAM, labels, observation) after each of ``steps`` seeded random agent steps."""
    env = make_env(game, labels=True, sticky_actions=False)
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed)
    out = [(env.render(), env.unwrapped.ale.getRAM().copy(), info["labels"], obs)]
    for _ in range(steps):
        obs, _, terminated, truncated, info = env.step(int(rng.integers(env.action_space.n)))
        out.append((env.render(), env.unwrapped.ale.getRAM().copy(), info["labels"], obs))
        if terminated or truncated:
            break
    return env, out


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_ram_ground_truth_matches_the_rendered_ball_and_paddles(game):
    env, frames = recorded(game, 400)
    objects = env.get_wrapper_attr("objects")
    checked = {k: 0 for k in COLOURS[game]}
    for screen, ram, _labels, _ in frames:
        boxes = objects(ram)
        for name, (colour, rows, cols) in COLOURS[game].items():
            pixels = drawn(screen, colour, rows, cols)
            box = boxes.get(name)
            inside_region = box is not None and box.top < rows[1] and box.bottom > rows[0]
            if len(pixels) == 0:
                # RAM must not place a visible object where nothing is drawn
                assert not inside_region or game == "breakout" and name == "ball" and box.bottom > rows[1], (name, box)
                continue
            if game == "breakout" and name == "player" and "ball" in boxes and boxes["ball"].bottom > 189:
                continue  # the ball is in the paddle's rows, same colour
            assert box is not None, (name, pixels[:3])
            box = box.clip(rows, cols)  # the part inside the searched region
            assert box is not None, (name, pixels[:3])
            top, left = pixels.min(0)
            bottom, right = pixels.max(0) + 1
            assert box.top <= top and bottom <= box.bottom and box.left <= left and right <= box.right, (
                name,
                box,
                (top, bottom, left, right),
            )
            assert (box.bottom - box.top) <= (bottom - top) + 1 and (box.right - box.left) == (right - left), (
                name,
                box,
            )
            checked[name] += 1
    assert all(n >= 50 for n in checked.values()), checked  # every object was seen many times


@pytest.mark.parametrize("game", ["pong", "breakout"])
def test_labels_mark_the_objects_on_the_observation(game):
    env, frames = recorded(game, 120, seed=1)
    objects = env.get_wrapper_attr("objects")
    for _screen, ram, labels, obs in frames:
        assert labels.shape == obs.shape[1:] == (84, 84) and labels.dtype == np.int8
        assert set(np.unique(labels)) <= {EXCLUDED, UNIMPORTANT, IMPORTANT}
        for box in objects(ram).values():
            assert (labels[to_grid(box)] == IMPORTANT).all()
        assert (labels == IMPORTANT).sum() <= sum(
            (to_grid(b)[0].stop - to_grid(b)[0].start) * (to_grid(b)[1].stop - to_grid(b)[1].start)
            for b in objects(ram).values()
        )
    # the agent-visible ball of the newest frame lies on labelled pixels (important or excluded)
    screen, ram, labels, obs = frames[-1]
    ball = objects(ram).get("ball")
    if ball is not None:
        assert (labels[to_grid(ball, margin=1)] != UNIMPORTANT).all()


def test_label_map_excludes_older_positions_and_margins():
    now = pong_objects(np.array([0] * 49 + [100, 120, 100, 0, 0, 110] + [0] * 73, dtype=np.uint8))
    before = [{"ball": now["ball"]._replace(left=now["ball"].left - 20, right=now["ball"].right - 20)}]
    labels = label_map(now, before)
    ball = to_grid(now["ball"])
    assert (labels[ball] == IMPORTANT).all()
    old = to_grid(before[0]["ball"])
    assert (labels[old] == EXCLUDED).all()
    ring = to_grid(now["ball"], margin=1)
    assert (labels[ring] != UNIMPORTANT).all() and (labels[ring] == EXCLUDED).sum() > 0
    assert (labels == UNIMPORTANT).mean() > 0.9


def test_localization_scores_atari_labels():
    _, frames = recorded("pong", 40, seed=2)
    labels = torch.as_tensor(np.stack([f[2] for f in frames]))
    states = torch.zeros(len(frames), 4, 84, 84)
    oracle = (labels == IMPORTANT).float()
    auc = get_metric("localization")(states=states, saliency=oracle, labels=labels)["auc"]
    assert torch.allclose(auc[~auc.isnan()], torch.ones(1)) and (~auc.isnan()).sum() > 30


def test_settings_are_recorded_and_checked():
    env = make_env("breakout", labels=True, infinite=True)
    assert env_spec(env)["settings"]["labels"] is True and env_spec(env)["settings"]["infinite"] is True
    assert env_spec(make_env("pong"))["settings"]["labels"] is False
    with pytest.raises(
        ValueError, match="RAM ground truth exists for breakout, ms-pacman, pong, seaquest, space-invaders"
    ):
        make_env("enduro", labels=True)
    with pytest.raises(ValueError, match="applies to breakout"):
        make_env("pong", infinite=True)
    with pytest.raises(TypeError, match="labels must be a bool"):
        make_env("pong", labels="yes")


def test_breakout_infinite_sets_the_score_back_one_wall_without_negative_rewards():
    plain, infinite = (
        make_env("breakout", sticky_actions=False),
        make_env("breakout", infinite=True, sticky_actions=False),
    )
    # below 864 points nothing changes
    a, b = plain.reset(seed=3), infinite.reset(seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    for action in np.random.default_rng(0).integers(4, size=60):
        sa, sb = plain.step(int(action)), infinite.step(int(action))
        np.testing.assert_array_equal(sa[0], sb[0])
        assert sa[1] == sb[1]
    # at 864 points the RAM score is set back to 432, and the next frame's reward is not -432
    frame_env = infinite.unwrapped
    wrapper = next(w for w in _wrappers(infinite) if isinstance(w, BreakoutInfinite))
    score = breakout_score(frame_env.ale.getRAM())
    frame_env.ale.setRAM(76, 0x08)
    frame_env.ale.setRAM(77, 0x64)  # 864 in BCD
    _, jump, *_ = wrapper.step(0)  # ALE sees the score jump (as if points were scored) ...
    assert jump == 864 - score and breakout_score(frame_env.ale.getRAM()) == 432  # ... and it was set back
    rewards = [wrapper.step(0)[1] for _ in range(5)]
    assert rewards == [0.0] * 5 and breakout_score(frame_env.ale.getRAM()) == 432


def _wrappers(env):
    while hasattr(env, "env"):
        yield env
        env = env.env


def test_collected_atari_states_carry_labels_that_localization_scores(tmp_path):
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv

    from xrl.agents.load import load_agent, save_agent
    from xrl.agents.nets import ARCHS
    from xrl.data.collect import collect
    from xrl.data.dataset import StateDataset
    from xrl.evaluation import evaluate

    algo = PPO(
        "CnnPolicy",
        DummyVecEnv([lambda: make_env("pong", labels=True)]),
        n_steps=8,
        batch_size=8,
        seed=0,
        device="cpu",
        policy_kwargs=ARCHS.get("sparse_fls").policy_kwargs(),
    )
    card = {"env": {"name": "pong", "settings": {"labels": True}}}
    model = load_agent(save_agent(algo, tmp_path / "agent.pt", arch="sparse_fls", card=card))
    data = collect(model, episodes=1, max_steps=12, out=tmp_path / "states.h5", progress=False)
    with StateDataset.open(data) as ds:
        labels = ds.labels()
        assert labels.shape == (12, 84, 84) and (labels == IMPORTANT).any(axis=(1, 2)).all()
        result = evaluate(model, ds, ["attention", "random"], ["localization"], n_states=8, progress=False)
    auc = result.means()
    assert all(0 <= auc[m]["localization.auc"] <= 1 for m in ("attention", "random"))


def test_mspacman_envelopes_hold_every_drawn_sprite_and_labels_mark_them():
    """Seeded random play: each object's colour on the maze lies inside the envelope RAM gives it
    (ghost colours always; Ms. Pac-Man's in all but a few frames, e.g. while she dies), and
    the label map makes exactly those pixels (at 84×84) important."""
    import cv2

    drawn = {name: 0 for name in MSPACMAN_OBJECTS}
    outside = dict(drawn)
    for seed in range(2):
        env, frames = recorded("ms-pacman", 300, seed=seed)
        for screen, ram, labels, _obs in frames:
            assert labels.shape == (84, 84) and labels.dtype == np.int8
            important = np.zeros(screen.shape[:2], dtype=bool)
            for name, (colour, xa, ya) in MSPACMAN_OBJECTS.items():
                pixels = (screen == np.asarray(colour)).all(-1)
                pixels[172:] = False  # lives and fruit below the maze
                if not pixels.any():
                    continue
                box = mspacman_envelope(int(ram[xa]), int(ram[ya]))
                inside = np.zeros_like(pixels)
                inside[box.top : box.bottom, box.left : box.right] = True
                drawn[name] += 1
                outside[name] += bool((pixels & ~inside).any())
                important |= pixels & inside
            footprint = cv2.resize(important.astype(np.float32), (84, 84), interpolation=cv2.INTER_AREA) > 0
            np.testing.assert_array_equal(labels == IMPORTANT, footprint)
            assert (labels == UNIMPORTANT).mean() > 0.8
    assert drawn["player"] >= 550 and min(drawn.values()) >= 150, drawn  # ghosts flicker
    assert all(outside[name] == 0 for name in ("sue", "inky", "pinky", "blinky")), outside
    assert outside["player"] <= 0.01 * drawn["player"], outside


#: game -> (RAM -> envelopes, screen -> object pixels, screen pixels never checked)
ENVELOPE_GAMES = {
    "seaquest": (seaquest_envelopes, seaquest_objects, ()),
    "space-invaders": (space_invaders_envelopes, space_invaders_objects, SPACE_INVADERS_SHIELDS),
}
ALIEN = (134, 134, 29)


@pytest.mark.parametrize("game", ["seaquest", "space-invaders"])
def test_ram_envelopes_hold_every_drawn_object_and_labels_mark_them(game):
    """Seeded random play: every object pixel on the screen (Seaquest: whatever in the sea is not
    water; SpaceInvaders: whatever is not black above the ground, but scores, lives and shields)
    lies inside an envelope RAM gives, in every frame but a few (a bullet drawn once more after RAM
    reset it; SpaceInvaders: the explosion of an alien just shot, whose RAM bit is already
    cleared, must lie in that alien's grid cell); the envelopes of the objects that do
    not flicker hold drawn pixels; and the label map makes exactly those pixels important."""
    import cv2

    envelopes, objects_of, unchecked = ENVELOPE_GAMES[game]
    filled, total, frames, unexplained, explosions = {}, {}, 0, 0, 0
    for seed in range(2):
        env, recording = recorded(game, 200, seed=seed)
        for screen, ram, labels, _obs in recording:
            boxes, objects = envelopes(ram), objects_of(screen)
            inside = np.zeros(objects.shape, dtype=bool)
            for name, box in boxes.items():
                inside[box.top : box.bottom, box.left : box.right] = True
                kind = name.rstrip("0123456789_")
                total[kind] = total.get(kind, 0) + 1
                filled[kind] = filled.get(kind, 0) + bool(objects[box.top : box.bottom, box.left : box.right].any())
            out = objects & ~inside
            for box in unchecked:
                out[box.top : box.bottom, box.left : box.right] = False
            frames += 1
            alien = (screen == np.asarray(ALIEN)).all(-1)
            unexplained += bool((out & ~alien).any())
            if game == "space-invaders":  # an explosion lies in the grid cell of a dead alien
                dead = np.zeros_like(alien)
                for row in range(6):
                    for column in range(6):
                        if not ram[23 - row] >> column & 1:
                            top, left = 31 + 2 * int(ram[16]) + 18 * row, int(ram[26]) - 1 + 16 * column
                            dead[max(top, 0) : top + 10, max(left, 0) : left + 8] = True
                out &= ~dead
            explosions += bool((out & alien).any())
            footprint = cv2.resize((objects & inside).astype(np.float32), (84, 84), interpolation=cv2.INTER_AREA) > 0
            np.testing.assert_array_equal(labels == IMPORTANT, footprint)
            assert (labels == UNIMPORTANT).mean() > 0.3
    assert frames >= 300
    assert unexplained <= 0.03 * frames, (unexplained, frames)
    assert explosions == 0, (explosions, frames)
    kinds = {"seaquest": ("player", "enemy", "diver", "torpedo"), "space-invaders": ("player", "alien", "bullet")}[game]
    assert all(total.get(kind, 0) >= 50 for kind in kinds), total
    # bullets flicker (drawn on every other frame) and keep a stale RAM position a while after a hit
    assert all(filled[kind] >= (0.3 if kind == "bullet" else 0.85) * total[kind] for kind in kinds), (filled, total)
    steady = {"seaquest": ("enemy", "diver"), "space-invaders": ("alien",)}[game]
    assert all(filled[kind] == total[kind] for kind in steady), (filled, total)
