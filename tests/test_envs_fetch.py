"""Red-Fetch-Green: Gymnasium API, seeding, ground-truth labels, rewards, actions and settings.

Labels are checked against an independent computation from the grid (and against the pixels of
the rendered image), not against ``env.labels()`` itself.
"""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import xrl
from xrl.envs import env_spec, make_env
from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT

NAME = "red-fetch-green"
# MiniGrid colours and indices, written out so that the test does not reuse what the env uses
RGB = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0), "grey": (100, 100, 100)}
OBJECT_IDX = {"empty": 1, "wall": 2, "key": 5, "ball": 6, "agent": 10}
COLOR_IDX = {"red": 0, "green": 1, "blue": 2, "yellow": 4, "grey": 5}
DIR_VEC = {0: (1, 0), 1: (0, 1), 2: (-1, 0), 3: (0, -1)}  # right, down, left, up
LEFT, RIGHT, FORWARD, PICKUP = range(4)


def expected_cells(env) -> np.ndarray:
    """Cell categories ``(H, W)`` indexed ``[y, x]``, computed from the grid."""
    u = env.unwrapped
    cells = np.empty((u.height, u.width), dtype=np.int8)
    for y in range(u.height):
        for x in range(u.width):
            obj = u.grid.get(x, y)
            if obj is None:
                cells[y, x] = UNIMPORTANT
            elif obj.type == "wall":
                cells[y, x] = EXCLUDED
            elif obj.type in ("ball", "key"):
                cells[y, x] = IMPORTANT if obj.color == "green" else EXCLUDED
            else:
                raise AssertionError(f"unexpected object {obj.type} at {(x, y)}")
    ax, ay = (int(v) for v in u.agent_pos)
    cells[ay, ax] = IMPORTANT
    return cells


def expected_labels(env) -> np.ndarray:
    """Pixel labels: pixel (row, col) belongs to cell (y, x) = (row // t, col // t)."""
    u = env.unwrapped
    cells = expected_cells(env)
    if u.obs_type == "symbolic":
        return cells
    t = u.tile_size
    out = np.empty((u.height * t, u.width * t), dtype=np.int8)
    for row in range(out.shape[0]):
        for col in range(out.shape[1]):
            out[row, col] = cells[row // t, col // t]
    return out


def check_labels(env, obs: np.ndarray, info: dict) -> None:
    labels = info["labels"]
    assert isinstance(labels, np.ndarray)
    assert labels.shape == obs.shape[1:]
    assert set(np.unique(labels).tolist()) <= {IMPORTANT, UNIMPORTANT, EXCLUDED}
    np.testing.assert_array_equal(labels, expected_labels(env))


def check_pixels_match_grid(env, obs: np.ndarray) -> None:
    """The rendered image shows each object in the cell the labels put it in (no x/y swap)."""
    u = env.unwrapped
    t = u.tile_size
    ax, ay = (int(v) for v in u.agent_pos)

    def tile(x, y):
        return obs[:, y * t : (y + 1) * t, x * t : (x + 1) * t].reshape(3, -1).T

    def has(px, colour):
        return bool((px == np.array(RGB[colour])).all(axis=1).any())

    for y in range(u.height):
        for x in range(u.width):
            px, obj = tile(x, y), u.grid.get(x, y)
            if (x, y) == (ax, ay):
                assert has(px, "red"), f"agent cell {(x, y)} shows no red"
            elif obj is None:
                assert px.max() < 100, f"empty cell {(x, y)} is not dark floor"
            elif obj.type == "wall":
                assert (px == np.array(RGB["grey"])).all(), f"wall cell {(x, y)} is not grey"
            else:
                assert has(px, obj.color), f"{obj.color} {obj.type} not drawn at {(x, y)}"


def place(env, agent, direction, objects: dict) -> None:
    """Clear the room, then put the agent and objects (colour -> (x, y)) where given."""
    u = env.unwrapped
    by_colour = {}
    for x in range(1, u.width - 1):
        for y in range(1, u.height - 1):
            obj = u.grid.get(x, y)
            if obj is not None:
                by_colour[obj.color] = obj
                u.grid.set(x, y, None)
    assert by_colour["green"] is u.target
    for colour, (x, y) in objects.items():
        u.grid.set(x, y, by_colour[colour])
        by_colour[colour].cur_pos = np.array((x, y))
    u.agent_pos = np.array(agent)
    u.agent_dir = direction


def rollout(env, seed: int, n: int = 40, action_seed: int = 0):
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    steps = [(obs, 0.0, False, False, info)]
    for _ in range(n):
        step = env.step(int(rng.integers(4)))
        steps.append(step)
        if step[2] or step[3]:
            break
    return steps


# check_env cannot re-make the env in other render modes (it was not made by gymnasium.make)
@pytest.mark.filterwarnings("ignore:.*Not able to test alternative render modes")
@pytest.mark.parametrize("obs_type", ["rgb", "symbolic"])
def test_check_env(obs_type):
    env = make_env(NAME, obs_type=obs_type)
    check_env(env)


@pytest.mark.parametrize("obs_type, shape", [("rgb", (3, 64, 64)), ("symbolic", (3, 8, 8))])
def test_observation_space_and_render(obs_type, shape):
    env = make_env(NAME, obs_type=obs_type)
    assert env.observation_space.shape == shape and env.observation_space.dtype == np.uint8
    obs, info = env.reset(seed=0)
    assert obs.shape == shape and obs.dtype == np.uint8
    assert info["labels"].shape == shape[1:] and info["labels"].dtype == np.int8
    frame = env.render()
    assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
    if obs_type == "rgb":  # the observation is the rendered frame, channels first
        np.testing.assert_array_equal(obs, frame.transpose(2, 0, 1))


def test_settings_are_recorded_and_rebuild_the_same_env():
    env = make_env(NAME, size=6, tile_size=4, max_steps=30)
    spec = env_spec(env)
    assert spec["name"] == NAME
    assert spec["settings"] == {
        "size": 6,
        "obs_type": "rgb",
        "tile_size": 4,
        "object_type": "ball",
        "max_steps": 30,
        "render_tile_size": 4,
    }
    again = make_env(spec["name"], **spec["settings"])
    assert again.observation_space.shape == (3, 24, 24)
    np.testing.assert_array_equal(env.reset(seed=3)[0], again.reset(seed=3)[0])


@pytest.mark.parametrize("obs_type", ["rgb", "symbolic"])
def test_seeded_rollouts_are_reproducible(obs_type):
    first = rollout(make_env(NAME, obs_type=obs_type), seed=7)
    second = rollout(make_env(NAME, obs_type=obs_type), seed=7)
    assert len(first) == len(second) > 1
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:4] == b[1:4]
        np.testing.assert_array_equal(a[4]["labels"], b[4]["labels"])
    # re-seeding the same env repeats its first layout
    env = make_env(NAME, obs_type=obs_type)
    obs0, _ = env.reset(seed=7)
    rollout(env, seed=1)
    np.testing.assert_array_equal(env.reset(seed=7)[0], obs0)


def test_different_seeds_give_different_layouts():
    env = make_env(NAME)
    layouts, images = set(), []
    for seed in range(6):
        obs, _ = env.reset(seed=seed)
        u = env.unwrapped
        objects = tuple(
            sorted(
                (u.grid.get(x, y).color, x, y) for x in range(1, 7) for y in range(1, 7) if u.grid.get(x, y) is not None
            )
        )
        layouts.add((tuple(int(v) for v in u.agent_pos), int(u.agent_dir), objects))
        images.append(obs)
    assert len(layouts) == 6
    assert all(not np.array_equal(images[i], images[j]) for i in range(6) for j in range(i))


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"obs_type": "symbolic"},
        {"object_type": "key"},
        {"size": 6, "tile_size": 5},
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_labels_on_every_reset_and_step(settings, seed):
    env = make_env(NAME, **settings)
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    n_important = []
    for _ in range(30):
        check_labels(env, obs, info)
        if env.unwrapped.obs_type == "rgb":
            check_pixels_match_grid(env, obs)
        n_important.append(int((expected_cells(env) == IMPORTANT).sum()))
        obs, _, terminated, truncated, info = env.step(int(rng.integers(4)))
        if terminated or truncated:
            check_labels(env, obs, info)  # the last step's labels too
            break
    assert n_important[0] == 2  # agent + green object, never on the same cell


def test_label_categories_for_a_known_layout():
    env = make_env(NAME)
    env.reset(seed=0)
    place(env, agent=(2, 3), direction=0, objects={"green": (5, 5), "yellow": (1, 1), "blue": (6, 2)})
    labels = env.unwrapped.labels()
    t = 8

    def cell(x, y):
        return labels[y * t : (y + 1) * t, x * t : (x + 1) * t]

    for (x, y), value in [
        ((2, 3), IMPORTANT),
        ((5, 5), IMPORTANT),
        ((1, 1), EXCLUDED),
        ((6, 2), EXCLUDED),
        ((0, 0), EXCLUDED),
        ((7, 4), EXCLUDED),
        ((3, 6), UNIMPORTANT),
        ((4, 1), UNIMPORTANT),
    ]:
        assert (cell(x, y) == value).all(), (x, y)
    assert (labels == IMPORTANT).sum() == 2 * t * t
    assert (labels == EXCLUDED).sum() == (28 + 2) * t * t  # 28 wall cells of an 8x8 room + 2 distractors
    # symbolic: the same categories one value per cell, and the agent is in the encoding
    sym = make_env(NAME, obs_type="symbolic")
    sym.reset(seed=0)
    place(sym, agent=(2, 3), direction=1, objects={"green": (5, 5), "yellow": (1, 1), "blue": (6, 2)})
    obs = sym.unwrapped._observation()
    assert tuple(obs[:, 3, 2]) == (OBJECT_IDX["agent"], COLOR_IDX["red"], 1)
    assert tuple(obs[:2, 5, 5]) == (OBJECT_IDX["ball"], COLOR_IDX["green"])
    assert tuple(obs[:2, 2, 6]) == (OBJECT_IDX["ball"], COLOR_IDX["blue"])
    assert obs[0, 0, 0] == OBJECT_IDX["wall"] and obs[0, 6, 3] == OBJECT_IDX["empty"]
    np.testing.assert_array_equal(sym.unwrapped.labels(), expected_cells(sym))


def test_object_labels_mark_only_the_drawn_pixels_of_agent_and_green_object():
    cells, objects = make_env(NAME), make_env(NAME, labels="objects")
    for env in (cells, objects):
        env.reset(seed=0)
        place(env, agent=(2, 3), direction=0, objects={"green": (5, 5), "yellow": (1, 1), "blue": (6, 2)})
    a, b = cells.unwrapped.labels(), objects.unwrapped.labels()
    obs = objects.unwrapped._observation().astype(int)
    r, g, bl = obs
    t = 8
    outside = np.ones_like(a, dtype=bool)
    for (x, y), drawn in [
        ((2, 3), (r > 0) & (g == 0) & (bl == 0)),  # the red agent's pixels
        ((5, 5), (g > 0) & (r == 0) & (bl == 0)),
    ]:  # the green ball's pixels
        sl = (slice(y * t, (y + 1) * t), slice(x * t, (x + 1) * t))
        np.testing.assert_array_equal(b[sl], np.where(drawn[sl], IMPORTANT, EXCLUDED))
        assert 5 < drawn[sl].sum() < t * t
        outside[sl] = False
    np.testing.assert_array_equal(a[outside], b[outside])  # floor, walls, distractors as with cells
    assert objects.unwrapped.xrl_spec["settings"]["labels"] == "objects"
    with pytest.raises(ValueError, match="labels must be 'cells'.*or 'objects'"):
        make_env(NAME, labels="pixels")
    with pytest.raises(ValueError, match="needs obs_type='rgb'"):
        make_env(NAME, labels="objects", obs_type="symbolic")


def test_object_labels_are_info_only_for_collect(tmp_path):
    from xrl.data.collect import collect
    from xrl.data.dataset import StateDataset

    agent = xrl.load_agent("red-fetch-green")  # trained without the setting
    out = collect(agent, episodes=1, out=tmp_path / "d.h5", seed=0, env_settings={"labels": "objects"}, progress=False)
    with StateDataset.open(out) as ds:
        assert ds.env["settings"]["labels"] == "objects"
        assert (ds.labels() == IMPORTANT).sum() < 2 * 64 * len(ds)


def test_env_pickled_before_the_labels_setting_resumes_with_cell_labels():
    # training checkpoints pickle their envs; one written before `labels` existed lacks the attribute
    import pickle

    env = make_env("red-fetch-green")
    env.reset(seed=3)
    expected = env.unwrapped.labels()
    del env.unwrapped.__dict__["label_mode"]
    old = pickle.loads(pickle.dumps(env))
    np.testing.assert_array_equal(old.unwrapped.labels(), expected)
    assert old.step(0)[4]["labels"].shape == expected.shape


@pytest.mark.parametrize("turns, max_steps", [(0, 100), (8, 100), (4, 20)])
def test_picking_up_green_rewards_by_time_and_terminates(turns, max_steps):
    env = make_env(NAME, max_steps=max_steps)
    env.reset(seed=0)
    place(env, agent=(2, 3), direction=0, objects={"green": (3, 3), "yellow": (5, 5), "blue": (1, 6)})
    for _ in range(turns):  # whole turns: the agent faces the green ball again
        _, reward, terminated, truncated, _ = env.step(LEFT)
        assert (reward, terminated, truncated) == (0.0, False, False)
    obs, reward, terminated, truncated, info = env.step(PICKUP)
    t = turns + 1
    assert reward == pytest.approx(1 - 0.9 * t / max_steps, abs=1e-12)
    assert terminated and not truncated
    assert env.unwrapped.carrying is env.unwrapped.target
    check_labels(env, obs, info)


@pytest.mark.parametrize("object_type", ["ball", "key"])
@pytest.mark.parametrize("colour", ["yellow", "blue"])
def test_picking_up_a_distractor_gives_zero_and_terminates(object_type, colour):
    env = make_env(NAME, object_type=object_type)
    env.reset(seed=1)
    others = {"green": (1, 1), "yellow": (6, 6), "blue": (1, 6)}
    others[colour] = (4, 4)
    place(env, agent=(4, 3), direction=1, objects=others)  # facing down, at the distractor
    _, reward, terminated, truncated, _ = env.step(PICKUP)
    assert reward == 0.0 and terminated and not truncated
    assert env.unwrapped.carrying.color == colour


def test_pickup_facing_nothing_or_a_wall_does_nothing():
    env = make_env(NAME)
    env.reset(seed=0)
    place(env, agent=(1, 3), direction=2, objects={"green": (5, 5), "yellow": (6, 6), "blue": (1, 6)})
    for direction in (2, 0):  # wall to the left, empty floor to the right
        env.unwrapped.agent_dir = direction
        _, reward, terminated, truncated, _ = env.step(PICKUP)
        assert (reward, terminated, truncated) == (0.0, False, False)
        assert env.unwrapped.carrying is None


def test_reduced_action_set_and_names():
    env = make_env(NAME)
    assert env.action_space.n == 4
    assert tuple(env.unwrapped.action_names) == ("left", "right", "forward", "pickup")
    env.reset(seed=0)
    place(env, agent=(3, 3), direction=0, objects={"green": (6, 6), "yellow": (1, 6), "blue": (6, 1)})
    u = env.unwrapped
    env.step(LEFT)
    assert u.agent_dir == 3
    env.step(RIGHT)
    env.step(RIGHT)
    assert u.agent_dir == 1
    for direction in range(4):
        u.agent_dir = direction
        before = tuple(int(v) for v in u.agent_pos)
        env.step(FORWARD)
        dx, dy = DIR_VEC[direction]
        assert tuple(int(v) for v in u.agent_pos) == (before[0] + dx, before[1] + dy)
    # MiniGrid's other actions (drop, toggle, done) and non-actions are refused
    for bad in (4, 5, 6, -1, 1.5, "left"):
        with pytest.raises(ValueError, match=r"action must be an int in \[0, 4\)"):
            env.step(bad)


def test_episode_is_truncated_at_max_steps():
    env = make_env(NAME, max_steps=5)
    env.reset(seed=0)
    for i in range(1, 6):
        _, reward, terminated, truncated, _ = env.step(LEFT)
        assert reward == 0.0 and not terminated
        assert truncated == (i == 5)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"obs_type": "grey"}, "obs_type must be 'rgb' or 'symbolic', got 'grey'"),
        ({"object_type": "box"}, "object_type must be one of ['ball', 'key'], got 'box'"),
        ({"size": 4}, "size must be at least 5"),
    ],
)
def test_bad_settings_raise_clear_errors(settings, message):
    with pytest.raises(ValueError) as err:
        make_env(NAME, **settings)
    assert message in str(err.value)


def test_unknown_setting_is_refused():
    with pytest.raises(TypeError, match="tile"):
        make_env(NAME, tile=8)


@pytest.mark.parametrize("settings", [{"tile_size": 0}, {"max_steps": 0}])
def test_nonpositive_tile_size_or_max_steps_raise(settings):
    with pytest.raises(ValueError):
        make_env(NAME, **settings)


@pytest.mark.parametrize(
    "settings",
    [{}, {"object_type": "key"}, {"size": 6, "tile_size": 5, "render_tile_size": 12}, {"labels": "objects"}],
)
def test_frames_are_minigrids_own_render(settings):
    """Observations and render() equal MiniGrid's get_frame along seeded random episodes (resets,
    turns, moves, pickups that change the grid), though drawn from a cached room."""
    env = make_env(NAME, **settings)
    inner = env.unwrapped
    rng = np.random.default_rng(0)
    for episode in range(6):
        obs, _ = env.reset(seed=episode)
        for _ in range(40):
            assert np.array_equal(obs, inner.get_frame(False, inner.tile_size).transpose(2, 0, 1))
            assert np.array_equal(env.render(), inner.get_frame(False, inner.render_tile_size))
            obs, _, terminated, truncated, _ = env.step(int(rng.choice(4, p=[0.25, 0.25, 0.3, 0.2])))
            if terminated or truncated:
                assert np.array_equal(obs, inner.get_frame(False, inner.tile_size).transpose(2, 0, 1))
                break
