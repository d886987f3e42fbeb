"""xrl watch: a seeded episode filmed with overlays; MP4 (H.264) and GIF; the counterfactual."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import xrl
from xrl import cli
from xrl.data.collect import collect
from xrl.data.dataset import StateDataset
from xrl.metrics.faithfulness import Substrate
from xrl.viz.video import panel_row, upscale, write_video
from xrl.watch import removed_region, watch

AGENT = "red-fetch-green"
STEPS = 4


@pytest.fixture(scope="module")
def model():
    return xrl.load_agent(AGENT)


@pytest.fixture(scope="module")
def filmed(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("watch") / "episode"
    return watch(
        model,
        methods={"gradient": {}, "greydanus": {"radius": 4, "stride": 8}},
        seed=3,
        max_steps=STEPS,
        counterfactual=True,
        out=out,
        progress=False,
    )


def test_the_episode_is_the_seeded_greedy_one(filmed, model, tmp_path):
    data = collect(model, episodes=1, seed=3, max_steps=STEPS, out=tmp_path / "s.h5", progress=False)
    with StateDataset.open(data) as ds:
        assert filmed.actions == ds.actions.tolist()
        assert filmed.steps == len(ds) == STEPS


def test_videos_hold_every_frame_side_by_side(filmed, model, tmp_path):
    mp4, gif = filmed.paths
    assert mp4.suffix == ".mp4" and gif.suffix == ".gif"
    assert iio.immeta(mp4, plugin="FFMPEG")["codec"] == "h264"
    video = iio.imread(mp4, plugin="FFMPEG")
    frames = iio.imread(gif)
    assert len(video) == len(frames) == STEPS
    # frame, 2 overlays and the counterfactual, 64 px frames upscaled 3x to 192: 4 tiles wide
    assert frames.shape[2] >= 4 * 192 and video.shape[1:3] == frames.shape[1:3]
    # the first tile is the game frame
    collect(model, episodes=1, seed=3, max_steps=STEPS, out=tmp_path / "s.h5", progress=False)
    with StateDataset.open(tmp_path / "s.h5") as ds:
        first = upscale(ds.frames([0])[0], 192)
    tile = frames[0, 18 : 18 + 192, :192].astype(float)
    assert np.abs(tile - first).mean() < 8  # GIF palette quantisation only
    assert np.abs(video[0, 18 : 18 + 192, :192].astype(float) - first).mean() < 8  # H.264 loss only


def test_counterfactual_is_the_action_without_the_most_salient_region(filmed, model, tmp_path):
    assert len(filmed.counterfactual_actions) == STEPS
    collect(model, episodes=1, seed=3, max_steps=STEPS, out=tmp_path / "s.h5", progress=False)
    with StateDataset.open(tmp_path / "s.h5") as ds:
        states = ds.states()
    maps = xrl.get_explainer("gradient", model).explain(states, torch.as_tensor(filmed.actions))
    for i in range(STEPS):
        mask = removed_region(maps[i], 0.05)
        removed = torch.where(mask, Substrate("blur")(states[i : i + 1]), states[i : i + 1])
        with torch.no_grad():
            assert int(model(removed).argmax()) == filmed.counterfactual_actions[i]


def test_removed_region_known_values():
    s = torch.zeros(10, 10)
    s[2, 3] = 5.0
    s[7, 7] = 4.0
    m = removed_region(s, 0.02)  # 2 pixels
    assert m.sum() == 2 and m[2, 3] and m[7, 7]
    assert removed_region(s, 0.001).sum() == 1  # at least one pixel
    assert removed_region(torch.zeros(4, 4), 0.25).view(-1)[:4].all()  # ties: reading order


def test_speed_is_measured_per_method(filmed):
    assert set(filmed.seconds_per_map) == {"gradient", "greydanus"}
    for m, s in filmed.seconds_per_map.items():
        assert s > 0 and filmed.fps[m] == pytest.approx(1 / s)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"methods": []}, ["at least one method"]),
        ({"methods": ["nosuch"]}, ["nosuch", "gradient"]),
        ({"methods": ["gradient"], "fraction": 1.5}, ["fraction"]),
        ({"methods": ["gradient"], "formats": ("avi",)}, ["mp4", "gif"]),
        ({"methods": ["gradient"], "env": "pong"}, ["trained on env 'red-fetch-green'"]),
    ],
)
def test_bad_input(model, tmp_path, kwargs, words):
    with pytest.raises(ValueError) as info:
        watch(model, out=tmp_path / "w", max_steps=2, progress=False, **kwargs)
    for word in words:
        assert word in str(info.value)
    assert not list(tmp_path.iterdir())


def test_write_video_refuses_other_formats(tmp_path):
    frame = panel_row(np.zeros((8, 8, 3), np.uint8), {}, caption=["x"], height=16)
    with pytest.raises(ValueError, match="mp4 or .gif"):
        write_video([frame], tmp_path / "v.avi")
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "v.mp4")
    assert frame.shape[0] % 2 == 0 and frame.shape[1] % 2 == 0  # H.264 needs even sizes


def test_watch_command(capsys, tmp_path):
    out = tmp_path / "w"
    code = cli.main(
        [
            "watch",
            "--agent",
            AGENT,
            "--methods",
            "gradient,random",
            "--max-steps",
            "2",
            "--out",
            str(out),
            "--formats",
            "gif",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert "2 frames" in printed and "frames/s" in printed and f"wrote {out}.gif" in printed
    assert len(iio.imread(f"{out}.gif")) == 2 and not (tmp_path / "w.mp4").exists()


def test_video_frames_carry_the_colour_key_of_the_overlays():
    """A frame with maps gets a key row: the jet ramp of xrl.viz.overlay from its 0 to its 1."""
    from matplotlib import colormaps

    frame = panel_row(np.zeros((8, 8, 3), np.uint8), {"m": np.arange(64.0).reshape(8, 8)}, height=64)
    plain = panel_row(np.zeros((8, 8, 3), np.uint8), {}, height=64)
    assert frame.shape[0] >= plain.shape[0] + 20
    width = min(120, max(8, frame.shape[1] // 4))  # 136 px wide: even, so not padded
    ramp = list(frame[-10, 16 : 16 + width].astype(float))  # the key's middle row, beside its "0"
    jet = (colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).round()
    assert len(ramp) >= 8
    # every pixel of the key is a jet colour, from the blue end to the red end
    assert all(np.abs(jet - px).sum(1).min() <= 6 for px in ramp)
    assert ramp[0][2] > ramp[0][0] and ramp[-1][0] > ramp[-1][2]
