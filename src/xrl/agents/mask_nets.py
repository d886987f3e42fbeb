"""Mask networks: the explainer network f_theta of VisionMask (Zuo et al. 2025, section 3.2) and
of the Stalder et al. 2022 Explainer, with what they need at run time.

A mask network maps states ``(B, C, H, W)`` (the agent's input space) to K logit maps
``(B, K, H, W)``; ``masks`` applies the sigmoid, so every mask is in [0, 1] (one per action).
Architectures (``MASK_NETS``, selectable by name):

* ``small`` (default): a conv encoder-decoder at 1/2 and 1/4 resolution with a skip, a dilated
  conv and a global pooling branch at the bottleneck (every pixel sees the whole state), logits
  upsampled bilinearly; ~27k parameters, no batch norm; trains on Red-Fetch-Green (3x64x64) on
  one CPU core in minutes;
* ``unet``: UNet (Ronneberger et al. 2015), four levels, two conv-BN-ReLU per level, base 32;
* ``fcn``: torchvision ``fcn_resnet50``; ``deeplabv3``: torchvision ``deeplabv3_resnet50`` (the
  paper's). Both with ``weights=None, weights_backbone=None`` (nothing is downloaded) and the
  first convolution rebuilt for the state's channel count.

Reference values ``r`` of the overlay ``s * m + r * (1 - m)`` (VisionMask Eq. 1, section 4.4):
``background`` (the per-pixel median over the training states, stored in the network),
``black`` (0), ``mean`` (each channel's mean over the training states, stored) and ``blur``
(each state blurred by a Gaussian of kernel 39 and sigma 15).

Checkpoints: ``<name>.pt`` = ``{"format": "xrl.mask_network", "version", "method", "arch",
"input_shape", "n_maps", "reference", "agent": {"fingerprint", "n_actions", "input_shape",
"source", "env"}, "state_dict"}``, loaded with ``torch.load(weights_only=True)``; beside it
``<name>.json``, the card (:func:`save_mask_network`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from xrl._version import __version__
from xrl.agents.model import Model
from xrl.artifacts import ArtifactError, load_payload, save_payload
from xrl.ops import gaussian_blur
from xrl.registry import Registry

FORMAT = "xrl.mask_network"
VERSION = 1
REFERENCES = ("background", "black", "mean", "blur")
#: VisionMask section 4.4: "Gaussian blur (kernel is 39, sigma = 15)"
BLUR_KERNEL, BLUR_SIGMA = 39, 15.0

MASK_NETS: Registry[Callable[[int, int], nn.Module]] = Registry("mask network")


def _conv(c_in: int, c_out: int, *, stride: int = 1, dilation: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, dilation, dilation=dilation), nn.ReLU())


@MASK_NETS.register("small")
class SmallMaskNet(nn.Module):
    """Conv encoder at 1/2 and 1/4 resolution (a dilated conv and a global pooling branch at the
    bottleneck, so every pixel sees the whole state), a decoder back to 1/2 with a skip, logits
    upsampled bilinearly to the state's size (as DeepLabv3 does from 1/8)."""

    def __init__(self, in_channels: int, n_maps: int, width: int = 16) -> None:
        super().__init__()
        w = width
        self.enc1 = nn.Sequential(_conv(in_channels, w, stride=2), _conv(w, w))
        self.enc2 = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w, dilation=2))
        self.pool = nn.Sequential(nn.Linear(2 * w, 2 * w), nn.ReLU())
        self.fuse = nn.Sequential(nn.Conv2d(4 * w, 2 * w, 1), nn.ReLU())
        self.dec = _conv(3 * w, w)
        self.head = nn.Conv2d(w, n_maps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)  # (B, w, H/2, W/2)
        e2 = self.enc2(e1)  # (B, 2w, H/4, W/4)
        g = self.pool(e2.mean((2, 3)))[:, :, None, None].expand_as(e2)  # whole-state context
        d = F.interpolate(self.fuse(torch.cat([e2, g], 1)), size=e1.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.head(self.dec(torch.cat([d, e1], 1)))  # (B, K, H/2, W/2)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def _double_conv(c_in: int, c_out: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


@MASK_NETS.register("unet")
class UNet(nn.Module):
    """UNet (Ronneberger et al. 2015): max-pool down, bilinear up, skips concatenated."""

    def __init__(self, in_channels: int, n_maps: int, base: int = 32, levels: int = 4) -> None:
        super().__init__()
        widths = [base * 2**i for i in range(levels)]
        self.down = nn.ModuleList(
            [_double_conv(in_channels, widths[0])] + [_double_conv(a, b) for a, b in zip(widths, widths[1:])]
        )
        self.up = nn.ModuleList([_double_conv(b + a, a) for a, b in zip(widths[:-1], widths[1:])][::-1])
        self.head = nn.Conv2d(widths[0], n_maps, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2, ceil_mode=True))
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1]):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], 1))
        return self.head(x)


class _TorchvisionSegmentation(nn.Module):
    """A torchvision segmentation model returning its ``"out"`` logits ``(B, K, H, W)``."""

    def __init__(self, builder: Callable, in_channels: int, n_maps: int) -> None:
        super().__init__()
        self.model = builder(weights=None, weights_backbone=None, num_classes=n_maps, aux_loss=False)
        if in_channels != 3:  # the ResNet stem, rebuilt for the state's channels (stacked frames)
            self.model.backbone.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


@MASK_NETS.register("fcn")
def fcn(in_channels: int, n_maps: int) -> nn.Module:
    """torchvision FCN-ResNet50 (Long et al. 2015), untrained."""
    from torchvision.models.segmentation import fcn_resnet50

    return _TorchvisionSegmentation(fcn_resnet50, in_channels, n_maps)


@MASK_NETS.register("deeplabv3")
def deeplabv3(in_channels: int, n_maps: int) -> nn.Module:
    """torchvision DeepLabv3-ResNet50 (Chen et al. 2017; the VisionMask paper's), untrained."""
    from torchvision.models.segmentation import deeplabv3_resnet50

    return _TorchvisionSegmentation(deeplabv3_resnet50, in_channels, n_maps)


class MaskNetwork(nn.Module):
    """A mask network with what it was trained for: ``masks(states) -> (B, K, H, W)`` in [0, 1]
    and ``reference_for(states) -> (B, C, H, W)``.

    ``agent`` records the agent it explains (``fingerprint``, ``n_actions``, ``input_shape``,
    ``source``, ``env``); ``method`` is ``"visionmask"`` or ``"stalder_explainer"``.
    """

    def __init__(
        self,
        arch: str,
        input_shape: Sequence[int],
        n_maps: int,
        *,
        reference: str = "background",
        reference_image: torch.Tensor | None = None,
        agent: dict | None = None,
        method: str = "visionmask",
    ) -> None:
        super().__init__()
        if reference not in REFERENCES:
            raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
        c, h, w = (int(v) for v in input_shape)
        if reference in ("background", "mean"):
            if reference_image is None:
                raise ValueError(
                    f"reference={reference!r} needs the reference image (C, H, W) "
                    "computed from the training states (reference_image=)"
                )
            if tuple(reference_image.shape) != (c, h, w):
                raise ValueError(f"reference_image must have shape {(c, h, w)}, got {tuple(reference_image.shape)}")
        self.arch, self.input_shape, self.n_maps = arch, (c, h, w), int(n_maps)
        self.reference, self.method, self.agent = reference, method, dict(agent or {})
        self.net = MASK_NETS.get(arch)(c, self.n_maps)
        image = reference_image if reference_image is not None else torch.zeros(c, h, w)
        self.reference_image: torch.Tensor
        self.register_buffer("reference_image", image.detach().float().clone())

    @classmethod
    def for_model(cls, model: Model, arch: str = "small", *, seed: int = 0, **kwargs) -> MaskNetwork:
        """A freshly initialised network (from ``seed``, global RNG untouched) for ``model``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(arch, model.input_shape, model.n_actions, agent=agent_of(model), **kwargs)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """Logit maps ``(B, K, H, W)``."""
        return self.net(states)

    def masks(self, states: torch.Tensor) -> torch.Tensor:
        """Masks ``(B, K, H, W)`` in [0, 1]: the sigmoid of the logits (VisionMask section 3.2)."""
        return torch.sigmoid(self.net(states))

    def reference_for(self, states: torch.Tensor) -> torch.Tensor:
        """The reference value ``r (B, C, H, W)`` for ``states``."""
        if self.reference == "black":
            return torch.zeros_like(states)
        if self.reference == "blur":
            return gaussian_blur(states, BLUR_SIGMA, kernel_size=BLUR_KERNEL)
        return self.reference_image.to(states).expand_as(states)

    def check_agent(self, model: Model) -> None:
        """Refuse a model this network was not trained for (other weights, action count or input)."""
        if self.n_maps != model.n_actions:
            raise ValueError(
                f"this {self.method} network has {self.n_maps} maps (one per action of the agent "
                f"it was trained for), the model has {model.n_actions} actions"
            )
        if tuple(self.input_shape) != tuple(model.input_shape):
            raise ValueError(
                f"this {self.method} network takes states {tuple(self.input_shape)}, the model "
                f"{tuple(model.input_shape)}"
            )
        mine, theirs = self.agent.get("fingerprint"), model.fingerprint()
        if mine != theirs:
            raise ValueError(
                f"this {self.method} network was trained for another agent ({self.agent.get('source')}, "
                f"weights {mine}); the model's weights are {theirs}: train one for this agent "
                f"(xrl train {self.method.replace('_', '-')})"
            )


def agent_of(model: Model) -> dict:
    """What a mask network records about the agent it explains."""
    return {
        "fingerprint": model.fingerprint(),
        "n_actions": int(model.n_actions),
        "input_shape": [int(v) for v in model.input_shape],
        "source": str(model.info.get("source")),
        "env": json.dumps(model.info.get("env"), sort_keys=True),
    }


def overlay(states: torch.Tensor, masks: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """VisionMask Eq. 1 for every mask: ``s_i = s * m_i + r * (1 - m_i)`` and
    ``s~_i = s * (1 - m_i) + r * m_i``, each ``(B, K, C, H, W)`` from states and reference
    ``(B, C, H, W)`` and masks ``(B, K, H, W)`` (one mask shared by all channels)."""
    s, r, m = states[:, None], reference[:, None], masks[:, :, None]
    return s * m + r * (1 - m), s * (1 - m) + r * m


def save_mask_network(network: MaskNetwork, path: str | os.PathLike, *, card: dict) -> Path:
    """Write ``path`` (.pt, atomically) and the card beside it (``.json``, with the file's sha256
    and the network's weights fingerprint)."""
    settings = {
        "method": network.method,
        "arch": network.arch,
        "input_shape": list(network.input_shape),
        "n_maps": network.n_maps,
        "reference": network.reference,
        "agent": network.agent,
        "xrl_version": __version__,
    }
    return save_payload(path, FORMAT, settings, network.state_dict(), card={**card, "xrl_version": __version__})


def load_mask_network(path: str | os.PathLike, *, method: str | None = None) -> MaskNetwork:
    """A saved mask network in eval mode; ``method`` (when given) must match the saved one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no mask network at {path}; train one with xrl train visionmask (or stalder-explainer)"
        )
    try:
        payload = load_payload(path, FORMAT)
    except ArtifactError as err:  # not a torch file, one holding arbitrary objects, another format
        found = err.found if "xrl mask network" in err.found else f"is not an xrl mask network ({err.found})"
        raise ArtifactError(path, found, err.expected) from None
    if method is not None and payload["method"] != method:
        raise ValueError(f"{path} holds a {payload['method']} network, not a {method} one")
    with torch.device("cpu"):  # built on the CPU like the file's tensors (the device rule); moved by its user
        network = MaskNetwork(
            payload["arch"],
            tuple(payload["input_shape"]),
            payload["n_maps"],
            reference=payload["reference"],
            reference_image=payload["state_dict"]["reference_image"],
            agent=payload["agent"],
            method=payload["method"],
        )
    try:
        network.load_state_dict(payload["state_dict"])
    except RuntimeError as err:  # the architecture changed since it was saved
        raise ValueError(
            f"{path} holds weights that do not fit xrl's {payload['arch']!r} mask network "
            f"(saved by xrl {payload.get('xrl_version', 'unknown')}): {err}"
        ) from err
    return network.eval()
