"""Gaze metrics (NSS, KL, shuffled AUC) against known values and independent computations, and
the Atari-HEAD loader on small files written here in the published format."""

from __future__ import annotations

import io
import math
import tarfile

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats
import torch
from PIL import Image

from xrl.data.atari_head import HEADER, fixation_map, load_trial, read_labels
from xrl.metrics import get_metric
from xrl.ops import gaussian_blur

GAZE = ("nss", "gaze_kl", "shuffled_auc")


def score(name, saliency, labels, **settings):
    states = torch.zeros(saliency.shape[0], 1, *saliency.shape[1:])
    return get_metric(name, **settings)(states=states, saliency=saliency, labels=labels)


def random_fixations(b=4, h=12, w=10, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = torch.zeros(b, h * w, dtype=torch.long)
    for i in range(b):
        f[i].index_add_(0, torch.randint(h * w, (n,), generator=g), torch.ones(n, dtype=torch.long))
    return f.view(b, h, w)


# --------------------------------------------------------------------------- known values


def test_constant_map_gives_nss_0_and_shuffled_auc_one_half():
    fixations = random_fixations()
    flat = torch.full((4, 12, 10), 0.7)
    assert score("nss", flat, fixations).tolist() == [0.0] * 4
    assert score("shuffled_auc", flat, fixations).tolist() == [0.5] * 4


def test_nss_by_hand():
    saliency = torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])
    fixations = torch.tensor([[[0, 0], [0, 2]]])  # two fixations on the 3
    expected = (3 - 1.5) / math.sqrt(1.25)
    assert score("nss", saliency, fixations).item() == pytest.approx(expected, rel=1e-6)


def test_map_equal_to_the_blurred_fixations_gives_kl_0():
    fixations = random_fixations(h=30, w=24)
    blurred = gaussian_blur(fixations.double(), 5.0).float()
    kl = score("gaze_kl", blurred, fixations)
    assert (kl.abs() < 1e-6).all()
    assert (score("gaze_kl", blurred * 3 + 0.0, fixations).abs() < 1e-6).all()  # scale does not matter
    other = score("gaze_kl", torch.rand(4, 30, 24, generator=torch.Generator().manual_seed(1)), fixations)
    assert (other > 0.05).all()


def test_frames_without_fixations_are_nan_and_do_not_change_the_others():
    fixations = random_fixations(b=3)
    fixations[1] = 0
    saliency = torch.rand(3, 12, 10, generator=torch.Generator().manual_seed(2))
    for name in GAZE:
        values = score(name, saliency, fixations)
        assert math.isnan(values[1]) and not values[[0, 2]].isnan().any(), name
    alone = score("nss", saliency[[0, 2]], fixations[[0, 2]])
    torch.testing.assert_close(score("nss", saliency, fixations)[[0, 2]], alone)


# --------------------------------------------------------------------------- independent computations


def test_nss_matches_numpy():
    fixations, saliency = random_fixations(), torch.rand(4, 12, 10, generator=torch.Generator().manual_seed(3))
    for i in range(4):
        s, f = saliency[i].double().numpy(), fixations[i].numpy()
        expected = np.average((s - s.mean()) / s.std(), weights=f)
        assert score("nss", saliency, fixations)[i].item() == pytest.approx(expected, rel=1e-5)


def test_kl_matches_scipy_for_positive_maps():
    fixations = random_fixations(h=30, w=24)
    saliency = torch.rand(4, 30, 24, generator=torch.Generator().manual_seed(4)) + 0.1
    values = score("gaze_kl", saliency, fixations, sigma=2.0)
    for i in range(4):
        blurred = scipy.ndimage.gaussian_filter(fixations[i].double().numpy(), 2.0, mode="nearest", truncate=4.0)
        expected = scipy.stats.entropy(blurred.ravel(), saliency[i].double().numpy().ravel())
        assert values[i].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def brute_force_auc(s, positives, negatives):
    pos = np.repeat(s.ravel(), positives.ravel())
    neg = np.repeat(s.ravel(), negatives.ravel())
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (len(pos) * len(neg))


def test_shuffled_auc_matches_pairwise_counting_with_other_frames_as_negatives():
    fixations = random_fixations(b=5)
    saliency = torch.randint(0, 4, (5, 12, 10), generator=torch.Generator().manual_seed(5)).float()  # ties
    values = score("shuffled_auc", saliency, fixations)
    for i in range(5):
        others = (fixations.sum(0) - fixations[i]).numpy()
        expected = brute_force_auc(saliency[i].numpy(), fixations[i].numpy(), others)
        assert values[i].item() == pytest.approx(expected, abs=1e-6)


def test_shuffled_auc_scores_a_shared_centre_bias_at_chance():
    h, w = 12, 10
    centre = torch.zeros(4, h, w, dtype=torch.long)
    centre[:, 6, 5] = 3  # every frame fixates the centre ...
    for i in range(4):
        centre[i, i, 0] = 1  # ... and one frame-specific pixel
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    prior = (-((yy - 6.0) ** 2 + (xx - 5.0) ** 2) / 8).exp().expand(4, h, w)  # centre prior
    assert score("shuffled_auc", prior, centre).sub(0.5).abs().max() < 0.15
    own = torch.zeros(4, h, w)
    for i in range(4):
        own[i, i, 0] = 1.0  # a map that finds the frame-specific fixation
    assert (score("shuffled_auc", own, centre) > score("shuffled_auc", prior, centre)).all()


def test_shuffled_auc_with_dataset_negatives_does_not_depend_on_the_batch():
    fixations = random_fixations(b=6)
    saliency = torch.rand(6, 12, 10, generator=torch.Generator().manual_seed(6))
    total = fixations.sum(0)
    whole = score("shuffled_auc", saliency, fixations, negatives=total)
    torch.testing.assert_close(whole, score("shuffled_auc", saliency, fixations))  # same negatives
    parts = torch.cat(
        [score("shuffled_auc", saliency[i : i + 2], fixations[i : i + 2], negatives=total) for i in range(0, 6, 2)]
    )
    torch.testing.assert_close(parts, whole)


def test_excluded_pixels_are_left_out():
    fixations, saliency = (
        random_fixations(h=12, w=10),
        torch.rand(4, 12, 10, generator=torch.Generator().manual_seed(7)),
    )
    labels = fixations.clone()
    labels[:, :, 7:] = -1  # excluded columns: same as scoring the left 7 columns only
    for name in GAZE:
        cropped = score(
            name,
            saliency[:, :, :7].contiguous(),
            fixations[:, :, :7].contiguous(),
            **({"sigma": 0.0} if name == "gaze_kl" else {}),
        )
        full = score(name, saliency, labels, **({"sigma": 0.0} if name == "gaze_kl" else {}))
        torch.testing.assert_close(full, cropped, equal_nan=True)


def test_maps_are_upscaled_to_the_fixation_maps():
    saliency = torch.zeros(1, 84, 84)
    saliency[0, 40:44, 20:24] = 1.0
    fixations = torch.zeros(1, 210, 160, dtype=torch.long)
    fixations[0, 105, 42] = 1  # the same place on the 210x160 screen
    assert score("nss", saliency, fixations).item() > 5
    pair = torch.cat([fixations, torch.roll(fixations, 80, 2)])  # the other frame looks elsewhere
    assert score("shuffled_auc", saliency.expand(2, 84, 84), pair).tolist()[0] == 1.0


def test_bad_input_is_refused():
    saliency = torch.rand(2, 4, 4)
    with pytest.raises(TypeError, match="integer fixation counts"):
        score("nss", saliency, torch.rand(2, 4, 4))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        score("nss", saliency, torch.full((2, 4, 4), -2))
    with pytest.raises(ValueError, match="B = 2"):
        score("gaze_kl", saliency, torch.zeros(3, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="needs labels"):
        get_metric("nss")(states=torch.zeros(2, 1, 4, 4), saliency=saliency)
    with pytest.raises(ValueError, match="sigma"):
        get_metric("gaze_kl", sigma=-1)
    with pytest.raises(ValueError, match="integer fixation counts"):
        get_metric("shuffled_auc", negatives=torch.rand(4, 4))
    with pytest.raises(ValueError, match="include the scored frames"):
        score(
            "shuffled_auc",
            saliency,
            torch.ones(2, 4, 4, dtype=torch.long),
            negatives=torch.zeros(4, 4, dtype=torch.long),
        )


# --------------------------------------------------------------------------- Atari-HEAD files


def write_trial(folder, n=14, stem="100_RZ_3592991_Aug-24-11-44-38", skip_png=None, extra_png=False, gaze=None):
    """A label file and a .tar.bz2 of PNGs in the published format: frame k is gray 10*k and has
    one fixation at (x, y) = (k, 2k) (frame 3 none: ``null``)."""
    ids = [f"RZ_3592991_{k + 1}" for k in range(n)]
    lines = [",".join(HEADER)]
    for k, frame_id in enumerate(ids):
        points = "null" if k == 3 else (gaze or f"{k}.0,{2 * k}.0")
        action = "null" if k == n - 1 else str(k % 4)
        lines.append(f"{frame_id},{0 if k < n - 1 else 'null'},{k},50,0,{action},{points}")
    (folder / f"{stem}.txt").write_text("\n".join(lines) + "\n")
    with tarfile.open(folder / f"{stem}.tar.bz2", "w:bz2") as tar:
        names = [i for i in ids if i != skip_png] + (["RZ_3592991_999"] if extra_png else [])
        for frame_id in names:
            k = ids.index(frame_id) if frame_id in ids else 0
            data = io.BytesIO()
            Image.fromarray(np.full((210, 160, 3), 10 * k, dtype=np.uint8)).save(data, format="PNG")
            info = tarfile.TarInfo(f"{stem}/{frame_id}.png")
            info.size = data.tell()
            data.seek(0)
            tar.addfile(info, data)
    return folder / f"{stem}.txt", ids


def test_label_file_is_parsed(tmp_path):
    path, ids = write_trial(tmp_path)
    trial = read_labels(path)
    assert trial.frame_ids == ids and len(trial) == 14
    assert trial.actions[:4] == [0, 1, 2, 3] and trial.actions[-1] is None and trial.episode_ids[-1] is None
    assert trial.gaze[2].tolist() == [[2.0, 4.0]] and trial.gaze[3].shape == (0, 2)


def test_frames_states_and_fixations_are_aligned(tmp_path):
    path, ids = write_trial(tmp_path)
    trial = load_trial(path)
    frames = trial.frames()
    assert frames.shape == (14, 210, 160, 3) and (frames[5] == 50).all()
    assert trial.state_frames() == [[0], [0, 3, 4], [0, 3, 4, 7, 8], [0, 3, 4, 7, 8, 11, 12]]
    fixations = trial.fixations()  # (4, 210, 160)
    assert fixations.shape == (4, 210, 160)
    for s, frames_behind in enumerate(trial.state_frames()):
        expected = {(2 * k, k) for k in frames_behind if k != 3}  # frame 3 has no fixation
        assert {tuple(p) for p in np.argwhere(fixations[s])} == expected and fixations[s].sum() == len(expected)
    small = trial.fixations(size=(84, 84))
    assert small.shape == (4, 84, 84) and small[3, int(24 * 84 / 210), int(12 * 84 / 160)] == 1
    states = trial.states()  # (4, 4, 84, 84): skip g of state s shows its last frame (the brighter)
    assert states.shape == (4, 4, 84, 84)
    for s, t in enumerate(range(0, 14, 4)):
        for g in range(4):
            last = t - (3 - g) * 4
            assert (states[s, g] == (10 * last if last >= 0 else 0)).all(), (s, g)


def test_mismatched_frames_are_refused_with_the_first_mismatch(tmp_path):
    path, ids = write_trial(tmp_path, skip_png="RZ_3592991_6")
    with pytest.raises(ValueError, match=r"'RZ_3592991_6' \(row 6\) has no PNG"):
        load_trial(path).frames()
    other = tmp_path / "b"
    other.mkdir()
    path, _ = write_trial(other, extra_png=True)
    with pytest.raises(ValueError, match="RZ_3592991_999.png is not in the label file"):
        load_trial(path).frames()


def test_bad_label_files_are_refused(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("frame,episode\nRZ_1,0\n")
    with pytest.raises(ValueError, match="first line must be"):
        read_labels(bad)
    path, _ = write_trial(tmp_path, gaze="1.0,2.0,3.0")
    with pytest.raises(ValueError, match=r":2: gaze positions come as x,y pairs; got 3"):
        read_labels(path)
    lonely = tmp_path / "lonely.txt"
    lonely.write_text(path.read_text().replace("1.0,2.0,3.0", "1.0,2.0"))
    with pytest.raises(ValueError, match="no frames"):
        load_trial(lonely).frames()  # no lonely.tar.bz2 beside it


def test_fixation_map_counts_points_in_their_pixels():
    m = fixation_map(np.array([[0.2, 0.9], [0.7, 0.1], [159.9, 209.9], [160.0, 5.0], [-1.0, 3.0]]))
    assert m[0, 0] == 2 and m[209, 159] == 1 and m.sum() == 3  # the last two are off screen


def test_trial_states_are_what_a_v4_agent_sees(tmp_path):
    """Screens of a real Pong game written as an Atari-HEAD trial give back the observations of
    xrl's v4 env (same frames, same max-pool, gray, resize, stack), state by state."""
    import gymnasium as gym

    from xrl.envs import make_env

    env = make_env("pong", version="v4", noop_max=0, sticky_actions=False)
    raw = gym.make("PongNoFrameskip-v4", frameskip=1, repeat_action_probability=0.0)
    actions = np.random.default_rng(0).integers(6, size=24)
    observations = [env.reset(seed=5)[0]] + [env.step(int(a))[0] for a in actions]
    raw.reset(seed=5)
    screens = [raw.step(a)[0] for a in [1] * 4 + [2] * 4 + [int(a) for a in actions for _ in range(4)]]
    screens = screens[7:]  # v4 resets with FIRE and action 2 (8 frames); state k is then at frame 4k
    stem = "7_XX_1_Jan-01-00-00-00"
    ids = [f"XX_1_{k + 1}" for k in range(len(screens))]
    (tmp_path / f"{stem}.txt").write_text("\n".join([",".join(HEADER)] + [f"{i},0,0,50,0,0,null" for i in ids]) + "\n")
    with tarfile.open(tmp_path / f"{stem}.tar.bz2", "w:bz2") as tar:
        for frame_id, screen in zip(ids, screens):
            data = io.BytesIO()
            Image.fromarray(screen).save(data, format="PNG")
            info = tarfile.TarInfo(f"{stem}/{frame_id}.png")
            info.size = data.tell()
            data.seek(0)
            tar.addfile(info, data)
    states = load_trial(tmp_path / f"{stem}.txt").states()
    assert len(states) == len(range(0, len(screens), 4))
    for k in range(4, len(states)):  # full stacks (the first ones differ only in their padding)
        np.testing.assert_array_equal(states[k], observations[k], err_msg=f"state {k}")


def test_the_documented_atari_head_recipe_runs(tmp_path):
    """docs/fls.md's recipe: trial -> states -> attention maps -> the three gaze metrics."""
    import xrl
    from xrl.agents.load import build_policy, model_from_policy

    path, _ = write_trial(tmp_path)
    trial = load_trial(path)
    torch.manual_seed(0)
    model = model_from_policy(build_policy("sparse_fls", (4, 84, 84), 4))
    states = model.preprocess(trial.states())
    saliency = xrl.get_explainer("attention", model).explain(states)
    fixations = torch.as_tensor(trial.fixations())
    assert states.shape == (4, 4, 84, 84) and saliency.shape == (4, 84, 84) and fixations.shape == (4, 210, 160)
    for name, settings in [("nss", {}), ("gaze_kl", {}), ("shuffled_auc", {"negatives": fixations.sum(0)})]:
        values = xrl.get_metric(name, **settings)(states=states, saliency=saliency, labels=fixations)
        assert values.shape == (4,) and values.isfinite().all(), name
