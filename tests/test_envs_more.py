"""Every registered env: the Gymnasium checker and seeded determinism. The optional envs (ViZDoom,
highway-env, Super Mario Bros): layout (channels first, newest frame last, matching the rendered
screen), ground truth, missing extras, refused agents, and the Mario adapter against the original."""

from __future__ import annotations

import sys

import cv2
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from xrl.envs import ENVS, EXTRAS, FAMILIES, env_spec, extra_installed, list_envs, make_env
from xrl.envs.labels import EXCLUDED, IMPORTANT, UNIMPORTANT

OPTIONAL = ["vizdoom-basic", "vizdoom-defend-the-center", "highway-fast", "mario"]
EXTRA_MODULES = {"vizdoom": "vizdoom", "highway": "highway_env", "mario": "gym_super_mario_bros"}


def needs_extra(name: str):
    """Skip (with the reason) when the env's extra is not installed; CI installs them all."""
    if name in EXTRAS:
        pytest.importorskip(EXTRA_MODULES[EXTRAS[name]])


def rollout(env, seed: int, n: int = 30, action_seed: int = 0):
    """Observations, rewards and flags of ``n`` seeded random steps (resetting on episode end)."""
    rng = np.random.default_rng(action_seed)
    obs, _ = env.reset(seed=seed)
    out = [(obs.copy(), 0.0, False, False)]
    for _ in range(n):
        obs, reward, terminated, truncated, _ = env.step(int(rng.integers(env.action_space.n)))
        out.append((obs.copy(), float(reward), terminated, truncated))
        if terminated or truncated:
            obs, _ = env.reset()
    return out


# The render check re-makes the env in every declared render mode, "human" included (no screen
# here); rgb_array rendering is checked below. SB3's v4 Atari wrappers cannot be re-made from
# env.spec (see tests/test_envs_atari.py), so their close check is skipped.
@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.filterwarnings("ignore:.*unconventional shape")
@pytest.mark.parametrize("name", list_envs())
def test_check_env_every_registered_env(name):
    needs_extra(name)
    check_env(make_env(name), skip_render_check=True)


@pytest.mark.parametrize("name", list_envs())
def test_seeded_rollouts_repeat_every_registered_env(name):
    needs_extra(name)
    first, second = make_env(name), make_env(name)
    rollout(second, seed=99, n=5)  # a used env reseeded must start afresh
    a, b = rollout(first, seed=7), rollout(second, seed=7)
    for (oa, ra, ta, ua), (ob, rb, tb, ub) in zip(a, b, strict=True):
        np.testing.assert_array_equal(oa, ob)
        assert (ra, ta, ua) == (rb, tb, ub)


@pytest.mark.parametrize("name", OPTIONAL)
def test_layout_and_render(name):
    needs_extra(name)
    env = make_env(name)
    shape = (4, 64, 128) if name == "highway-fast" else (4, 84, 84)
    assert env.observation_space.shape == shape and env.observation_space.dtype == np.uint8
    assert FAMILIES[name] == EXTRAS[name] and extra_installed(name) is True
    obs, _ = env.reset(seed=0)
    for action in np.random.default_rng(0).integers(env.action_space.n, size=6):
        new, *_ = env.step(int(action))
        assert new.shape == shape and new.dtype == np.uint8
        np.testing.assert_array_equal(new[:-1], obs[1:])  # oldest first, newest last
        obs = new
    frame = env.render()
    assert frame.ndim == 3 and frame.shape[-1] == 3 and frame.dtype == np.uint8
    # the newest frame is the rendered screen, made gray and small (rows = rows: no H/W swap)
    if name == "highway-fast":  # its own gray weights, render drawn at twice the size
        small = np.dot(frame.astype(float), [0.2989, 0.5870, 0.1140])
        small = cv2.resize(small, (128, 64), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(small.ravel(), obs[-1].ravel())[0, 1] > 0.9
        transposed = cv2.resize(small.T, (128, 64), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(transposed.ravel(), obs[-1].ravel())[0, 1] < 0.9
    elif name.startswith("vizdoom"):
        gray = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs[-1], gray)
    assert len(env.unwrapped.action_names) == env.action_space.n


@pytest.mark.parametrize("name", OPTIONAL)
def test_missing_extra_names_the_extra_to_install(name, monkeypatch):
    extra = EXTRAS[name]
    for module in list(sys.modules):  # a None entry makes `import module` raise ImportError
        if module.split(".")[0] in {EXTRA_MODULES[extra], "nes_py"}:
            monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, EXTRA_MODULES[extra], None)
    monkeypatch.setitem(sys.modules, "nes_py", None)
    with pytest.raises(ImportError, match=rf"needs the optional extra '{extra}': pip install 'xrl\[{extra}\]'"):
        make_env(name)
    assert name in ENVS  # still listed, so `xrl envs` shows it and what to install


def test_envs_command_says_which_extras_are_installed(capsys, monkeypatch):
    from xrl import cli
    from xrl.envs import registry

    monkeypatch.setattr(
        registry.importlib.util, "find_spec", lambda module: None if module == "highway_env" else object()
    )
    assert cli.main(["envs"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["highway-fast"].endswith("[extra highway: NOT installed]")
    assert lines["mario"].endswith("[extra mario: installed]")
    assert "[extra" not in lines["pong"]


@pytest.mark.parametrize(
    "settings, error",
    [
        ({"frame_stack": 0}, ValueError),
        ({"frame_skip": 1.5}, ValueError),
        ({"resolution": "100x100"}, ValueError),
        ({"labels": "yes"}, TypeError),
    ],
)
def test_vizdoom_bad_settings(settings, error):
    needs_extra("vizdoom-basic")
    with pytest.raises(error):
        make_env("vizdoom-basic", **settings)


def test_settings_are_recorded_and_rebuild_the_same_env():
    for name in OPTIONAL:
        needs_extra(name)
    assert env_spec(make_env("vizdoom-basic", frame_stack=2))["settings"] == {
        "frame_stack": 2,
        "frame_skip": 4,
        "resolution": "160x120",
        "labels": False,
    }
    assert env_spec(make_env("highway-fast"))["settings"] == {
        "frame_stack": 4,
        "width": 128,
        "height": 64,
        "scaling": 1.75,
        "policy_frequency": 2,
        "duration": 30,
        "labels": False,
    }
    assert env_spec(make_env("mario"))["settings"] == {
        "stage": "1-1",
        "actions": "simple",
        "frame_stack": 4,
        "noop_max": 30,
        "max_steps": 5000,
    }
    env = make_env("highway-fast", frame_stack=3, width=96, height=48)
    assert env.observation_space.shape == (3, 48, 96)
    again = make_env(**{"name": env_spec(env)["name"], **env_spec(env)["settings"]})
    for (a, *_), (b, *_) in zip(rollout(env, 3, n=5), rollout(again, 3, n=5)):
        np.testing.assert_array_equal(a, b)


# -- ViZDoom ground truth -------------------------------------------------------------------------


def _monster(env):
    state = env.unwrapped.state
    monsters = [lab for lab in state.labels if lab.object_category == "Monster"]
    return state, np.isin(state.labels_buffer, [lab.value for lab in monsters]), monsters


def test_vizdoom_labels_are_exactly_where_the_monster_is_drawn():
    """In ``basic`` the player starts on the same spot and the seed places the Cacodemon: two
    first screens differ exactly on the pixels the labels give to the monster in either."""
    needs_extra("vizdoom-basic")
    env = make_env("vizdoom-basic", labels=True)
    for a, b in [(0, 1), (2, 3), (4, 5)]:
        env.reset(seed=a)
        state, first, monsters = _monster(env)
        assert [lab.object_name for lab in monsters] == ["Cacodemon"]
        screen_a = state.screen_buffer.copy()
        env.reset(seed=b)
        state, second, _ = _monster(env)
        differ = (screen_a != state.screen_buffer).any(-1)
        either = first | second
        assert not (differ & ~either).any()  # nothing but the monster moved
        assert (differ & either).sum() >= 0.95 * either.sum()  # and it is drawn where labelled


def test_vizdoom_label_maps():
    needs_extra("vizdoom-basic")
    env, plain = make_env("vizdoom-basic", labels=True), make_env("vizdoom-basic")
    obs, info = env.reset(seed=0)
    plain_obs, _ = plain.reset(seed=0)
    history = []
    for action in [0, 2, 2, 3, 3, 0, 2, 3, 0, 0]:  # no ATTACK: the Cacodemon stays
        state, pixels, _ = _monster(env)
        labels = info["labels"]
        assert labels.shape == (84, 84) and labels.dtype == np.int8
        assert set(np.unique(labels)) <= {EXCLUDED, UNIMPORTANT, IMPORTANT}
        footprint = cv2.resize(pixels.astype(np.float32), (84, 84), interpolation=cv2.INTER_AREA) > 0
        np.testing.assert_array_equal(labels == IMPORTANT, footprint)
        ring = cv2.dilate(footprint.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (labels[ring & ~footprint] == EXCLUDED).all()
        for old in history[-3:]:  # the monster on the older frames of the stack
            assert (labels[old & ~footprint] == EXCLUDED).all()
        weapon = state.labels_buffer == next(lab.value for lab in state.labels if lab.object_category == "Self")
        weapon = cv2.resize(weapon.astype(np.float32), (84, 84), interpolation=cv2.INTER_AREA) > 0
        assert (labels[weapon & ~footprint] == EXCLUDED).all()  # the player's own weapon: uncertain
        assert (labels == UNIMPORTANT).mean() > 0.5
        history.append(footprint)
        obs, _, terminated, truncated, info = env.step(action)
        plain_obs, *_ = plain.step(action)
        np.testing.assert_array_equal(obs, plain_obs)  # labels change nothing the agent sees
        assert not (terminated or truncated)


def test_vizdoom_timeout_is_a_truncation():
    needs_extra("vizdoom-basic")
    env = make_env("vizdoom-basic")
    env.reset(seed=0)
    for t in range(100):  # noqa: B007  (t is read after the loop)
        obs, reward, terminated, truncated, _ = env.step(0)  # NOOP until the 300-tic timeout
        if terminated or truncated:
            break
    assert (t + 1, terminated, truncated) == (75, False, True)
    assert obs.any()  # the last screen, not ViZDoom's zeros


# -- Mario ----------------------------------------------------------------------------------------


def test_mario_rom_header_and_ram_reads_are_fixed_for_numpy2():
    needs_extra("mario")
    from gym_super_mario_bros._roms import rom_path
    from nes_py._rom import ROM

    from xrl.envs.mario import IntRAM, patch_nes_py

    patch_nes_py()
    rom = ROM(rom_path(False, "vanilla"))
    assert (rom.prg_rom_size, rom.chr_rom_size, rom.mapper) == (32, 8, 0)  # SMB: NROM, 32 KB + 8 KB
    assert len(rom.prg_rom) == 32 * 1024 and len(rom.chr_rom) == 8 * 1024
    ram = np.array([255, 7], dtype=np.uint8).view(IntRAM)
    assert ram[0] * 0x100 + ram[1] == 65287 and type(ram[0]) is int
    assert isinstance(ram[:1], np.ndarray)


def test_mario_adapter_returns_gymnasium_tuples_and_the_original_frames():
    needs_extra("mario")
    from gym_super_mario_bros.actions import SIMPLE_MOVEMENT
    from gym_super_mario_bros.smb_env import SuperMarioBrosEnv
    from nes_py.wrappers import JoypadSpace

    from xrl.envs.mario import _int_ram_env, patch_nes_py

    patch_nes_py()
    env = make_env("mario", noop_max=0)
    obs, info = env.reset(seed=0)
    assert isinstance(obs, np.ndarray) and isinstance(info, dict) and info["x_pos"] > 0
    # the original: gym-super-mario-bros' env (only the numpy-2 fixes) in nes-py's own old-gym
    # JoypadSpace wrapper, stepped frame by frame with the same actions
    original = JoypadSpace(_int_ram_env(SuperMarioBrosEnv)(rom_mode="vanilla", target=(1, 1)), SIMPLE_MOVEMENT)
    screen = original.reset()
    np.testing.assert_array_equal(env.render(), screen)
    actions = [1] * 20 + [2] * 6 + [4] * 20 + [6] * 4 + [0] * 10
    for action in actions:
        result = env.step(action)
        assert len(result) == 5
        obs, reward, terminated, truncated, info = result
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
        total, screens = 0.0, []
        for _ in range(4):
            screen, r, done, original_info = original.step(action)  # old gym: a 4-tuple
            total += r
            screens.append(screen.copy())
            if done:
                break
        np.testing.assert_array_equal(env.render(), screens[-1])
        pooled = np.maximum(screens[-2], screens[-1]) if len(screens) > 1 else screens[-1]
        gray = cv2.resize(cv2.cvtColor(pooled, cv2.COLOR_RGB2GRAY), (84, 84), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(obs[-1], gray)
        assert reward == total and terminated == done and info == original_info
        ram = env.unwrapped.nes.ram
        assert info["x_pos"] == int(np.asarray(ram)[0x6D]) * 256 + int(np.asarray(ram)[0x86])
        if terminated:
            break
    assert info["x_pos"] > 200  # Mario ran right
    env.close()
    original.close()


def test_mario_noops_at_reset_vary_the_start_with_the_seed():
    needs_extra("mario")
    env = make_env("mario")
    starts = {env.reset(seed=s)[0].tobytes() for s in range(6)}
    assert len(starts) > 1
    with pytest.raises(ValueError, match="stage must be"):
        make_env("mario", stage="9-1")
    with pytest.raises(ValueError, match="actions must be one of"):
        make_env("mario", actions="all")
    assert make_env("mario", actions="right_only").action_space.n == 5


# -- agents made for other settings are refused -----------------------------------------------------


def _untrained_agent(tmp_path, name: str, settings: dict):
    from xrl.agents.load import build_policy, load_agent, save_policy

    env = make_env(name, **settings)
    policy = build_policy("nature_cnn", env.observation_space.shape, env.action_space.n)
    card = {"env": {"name": name, "settings": settings}, "action_names": list(env.unwrapped.action_names)}
    return load_agent(save_policy(policy, tmp_path / f"{name}.pt", algo="ppo", arch="nature_cnn", card=card))


@pytest.mark.parametrize(
    "name, settings, other, differ",
    [
        ("vizdoom-basic", {"frame_stack": 4}, {"frame_stack": 3}, "frame_stack: agent 4, asked 3"),
        ("mario", {"actions": "simple"}, {"actions": "complex"}, "actions: agent 'simple', asked 'complex'"),
        ("highway-fast", {"width": 128}, {"width": 96}, "width: agent 128, asked 96"),
    ],
)
def test_agent_for_other_settings_is_refused_naming_the_difference(tmp_path, name, settings, other, differ):
    needs_extra(name)
    from xrl.data.collect import collect

    model = _untrained_agent(tmp_path, name, settings)
    with pytest.raises(ValueError, match=rf"they differ in {differ}"):
        collect(model, episodes=1, max_steps=2, out=tmp_path / "x.h5", env_settings=other, progress=False)
    # an agent without a card: the observation or action space itself is checked
    model.info["env"] = None
    with pytest.raises(ValueError, match="do(es)? not match the model"):
        collect(model, episodes=1, max_steps=2, out=tmp_path / "y.h5", env=name, env_settings=other, progress=False)


# -- the CLI runs every optional env unchanged ----------------------------------------------------


@pytest.mark.parametrize("name", OPTIONAL)
def test_collect_explain_evaluate_with_an_untrained_agent(tmp_path, name, capsys):
    needs_extra(name)
    from xrl import cli
    from xrl.data.dataset import StateDataset

    settings = {"labels": True} if name.startswith("vizdoom") else {}
    agent = _untrained_agent(tmp_path, name, settings).info["source"]
    data = tmp_path / "states.h5"
    assert cli.main(["collect", "--agent", agent, "--episodes", "1", "--max-steps", "6", "--out", str(data)]) == 0
    with StateDataset.open(data) as ds:
        assert len(ds) == 6 and ds.env["name"] == name and ds.has_labels == name.startswith("vizdoom")
        assert ds.frames([0]).shape[-1] == 3
    assert (
        cli.main(
            [
                "explain",
                "--agent",
                agent,
                "--data",
                str(data),
                "--methods",
                "gradient,random",
                "--n",
                "2",
                "--out",
                str(tmp_path / "maps.png"),
            ]
        )
        == 0
    )
    assert (tmp_path / "maps.png").stat().st_size > 0
    metrics = "sparseness,localization" if name.startswith("vizdoom") else "sparseness"
    assert (
        cli.main(
            [
                "evaluate",
                "--agent",
                agent,
                "--data",
                str(data),
                "--methods",
                "gradient,random",
                "--metrics",
                metrics,
                "--n-states",
                "4",
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 0
    )
    assert (tmp_path / "eval" / "metrics.csv").exists()


def test_background_is_the_per_pixel_median_of_random_play():
    needs_extra("vizdoom-basic")
    import torch

    from xrl.envs.background import background, random_observations

    observations = random_observations("vizdoom-basic", steps=40, seed=1)
    assert observations.shape == (40, 4, 84, 84) and observations.dtype == np.uint8
    ref = background("vizdoom-basic", steps=40, seed=1)
    assert ref.shape == (4, 84, 84) and ref.dtype == torch.float32
    lower_median = np.sort(observations, axis=0)[(len(observations) - 1) // 2]
    np.testing.assert_array_equal((ref.numpy() * 255).round().astype(np.uint8), lower_median)
    assert torch.equal(ref, background("vizdoom-basic", steps=40, seed=1))


# -- highway-env ground truth ---------------------------------------------------------------------


def test_highway_labels_are_the_cars_where_the_simulator_puts_them():
    needs_extra("highway-fast")
    env, plain = make_env("highway-fast", labels=True), make_env("highway-fast")
    obs, info = env.reset(seed=0)
    plain_obs, _ = plain.reset(seed=0)
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(12):
        labels = info["labels"]
        assert labels.shape == (64, 128) and labels.dtype == np.int8
        important = labels == IMPORTANT
        road = np.isin(obs[-1], [99, 254])  # the road's gray and the white lane markings
        np.testing.assert_array_equal(important, ~road)  # every car pixel, nothing else
        inner = env.unwrapped
        surface = inner.observation_type.viewer.sim_surface
        count, blobs = cv2.connectedComponents(important.astype(np.uint8))
        centres = [surface.pos2pix(*v.position) for v in inner.road.vehicles]
        visible = [(row, col) for col, row in centres if 1 <= row < 63 and 1 <= col < 127]
        for row, col in visible:  # each car in view lies on important pixels
            assert important[row - 1 : row + 2, col - 1 : col + 2].any(), (row, col)
            checked += 1
        assert count - 1 <= len(centres)
        ring = cv2.dilate(important.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (labels[ring & ~important] == EXCLUDED).all()
        assert (labels[(obs[-1] == 254) & ~important] == EXCLUDED).all()  # lane markings
        action = int(rng.integers(5))
        obs, _, terminated, truncated, info = env.step(action)
        plain_obs, *_ = plain.step(action)
        np.testing.assert_array_equal(obs, plain_obs)  # labels change nothing the agent sees
        if terminated or truncated:
            break
    assert checked >= 12


@pytest.mark.parametrize("name", ["vizdoom-basic", "mario"])
def test_emulators_refuse_pickling_so_training_resumes_with_new_episodes(name):
    """A pickled ViZDoom env is an un-reset new game and a pickled NES env aliases the emulator's
    C++ memory; xrl.train.agent falls back to fresh episodes when pickling raises."""
    needs_extra(name)
    import cloudpickle

    env = make_env(name)
    env.reset(seed=0)
    with pytest.raises(TypeError, match="cannot be pickled"):
        cloudpickle.dumps(env)
