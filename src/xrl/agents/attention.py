"""Attention agents whose attention is a saliency map: FLS (Nikulin et al. 2019, "Free-Lunch
Saliency via Attention in Atari Agents"), its Table 3 ablations, and the two baselines it is
compared with, DAQN (non-recurrent DARQN, Sorokin et al. 2015) and RS-PPO (the region-sensitive
module of Yang et al. 2018, trained with PPO).

Every architecture is an SB3 features extractor registered in ``ARCHS`` (so ``xrl train agent
--arch NAME`` and ``xrl.load_agent`` work as for ``nature_cnn``), for two trunks:

* ``nature``: the Nature-CNN convolutions (32 8×8/4, 64 4×4/2, 64 3×3/1) of the ``nature_cnn``
  architecture, for 84×84 Atari stacks; the head is one 512-unit linear layer + ReLU.
* ``grid`` (names ``grid_*``): the ``grid_cnn`` convolutions (16, 32, 64 channels; 4×4/2 p1,
  4×4/2 p1, 3×3/2 p1 for inputs of side ≥ 32, else 3×3/1 p1) for Red-Fetch-Green; the head is one
  256-unit linear layer + ReLU.

The FLS module (paper Fig. 1.f; the authors' ``fls_module``) is a ``same``-padded conv to 256
channels, ReLU, a ``same``-padded conv to 1 channel and SoftPlus: ``a = softplus(conv(relu(conv(x))))``
``(B, 1, h, w)``, multiplied into the trunk's output ``x``. Variants (Table 3):

=============================  ==============================================================
name                           what changes
=============================  ==============================================================
``sparse_fls``                 FLS after the sparse (Nature) block; ``x * a`` flattened
``sparse_fls_pool``            sum-pooling: ``sum_hw x * a`` (B, C) instead of flattening
``dense_fls_pool``             the dense block (7×7, 5×5, 3×3 convs, stride 1, ``same``) + pool
``sparse_fls_norm``            ``a / sum_hw a`` (normalised output)
``sparse_fls_1x1``             the FLS convs are 1×1 instead of 3×3
``sparse_fls_sp2``             SoftPlus₂: ``log2(1 + 2^z)`` (zero weights give 1, not ln 2)
``sparse_fls_norelu``          no ReLU after the block's last conv
``sparse_fls_norelu_pool``     no final ReLU + sum-pooling
``dense_fls_norelu_pool``      dense block without final ReLU + sum-pooling
``sparse_fls_first``           FLS after the first conv only
``sparse_fls_each``            one FLS module after each of the three convs
``daqn``                       1×1 conv 256, tanh, 1×1 conv 1, softmax over positions; ``sum_hw x * a``
``rs_ppo`` / ``rs_ppo_nopad``  input padded by 1 (or not), channel-wise L2 normalisation, 1×1 conv
                               512, ELU, 1×1 conv 2, softmax over positions per channel, summed;
                               ``x * a`` flattened
=============================  ==============================================================

The grid versions carry the same names with a ``grid_`` prefix.

**Attention protocol** (what the ``attention`` explainer looks for in a Model's network): a module
with ``attention_maps(states) -> list[(B, h_i, w_i)]`` (one map per attention module, from the
same float states the network consumes) and ``receptive_fields -> list[ReceptiveField]`` (the
input-pixel receptive field of one cell of each map: size, stride and the input coordinate of
cell 0's first pixel). :func:`draw` turns them into an input-resolution map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from xrl.compat import quiet_old_gym

quiet_old_gym()  # before Stable-Baselines3, which imports the old gym when installed
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor  # noqa: E402

from xrl.agents.nets import ARCHS, Arch  # noqa: E402

#: (out_channels, kernel, stride, padding) of each conv of a trunk
ConvSpec = tuple[int, int, int, int]

NATURE_SPARSE: list[ConvSpec] = [(32, 8, 4, 0), (64, 4, 2, 0), (64, 3, 1, 0)]
NATURE_DENSE: list[ConvSpec] = [(32, 7, 1, 3), (64, 5, 1, 2), (64, 3, 1, 1)]
GRID_DENSE: list[ConvSpec] = [(16, 7, 1, 3), (32, 5, 1, 2), (64, 3, 1, 1)]


def grid_sparse(height: int, width: int) -> list[ConvSpec]:
    """The ``grid_cnn`` convolutions for an input of this size (see :class:`xrl.agents.nets.GridCNN`)."""
    if min(height, width) >= 32:
        return [(16, 4, 2, 1), (32, 4, 2, 1), (64, 3, 2, 1)]
    return [(16, 3, 1, 1), (32, 3, 1, 1), (64, 3, 1, 1)]


@dataclass(frozen=True)
class ReceptiveField:
    """Input pixels seen by one cell of a feature map: cell ``i`` covers input rows (and columns)
    ``offset + i * stride`` to ``offset + i * stride + size - 1`` (``offset < 0`` when padded)."""

    size: int
    stride: int
    offset: int

    def then(self, kernel: int, stride: int, padding: int) -> ReceptiveField:
        """The receptive field after one more conv (or pooling) layer."""
        return ReceptiveField(
            self.size + (kernel - 1) * self.stride, self.stride * stride, self.offset - padding * self.stride
        )


def receptive_field(convs: Sequence[tuple[int, int, int]], input_padding: int = 0) -> ReceptiveField:
    """Receptive field of the last of ``convs`` = ``[(kernel, stride, padding), ...]``."""
    field = ReceptiveField(1, 1, -input_padding)
    for kernel, stride, padding in convs:
        field = field.then(kernel, stride, padding)
    return field


def draw(
    maps: Sequence[torch.Tensor], fields: Sequence[ReceptiveField], size: tuple[int, int], mode: str = "transposed"
) -> torch.Tensor:
    """Attention maps ``[(B, h_i, w_i)]`` drawn onto the input grid ``size = (H, W)`` and summed.

    ``transposed`` (FLS section 3): transposed convolution with a unit kernel (all ones) of the
    receptive field's size and stride, so each cell adds its value to every input pixel it sees;
    the result is cropped to the input (padding in front, pixels beyond the last field are 0).
    ``bilinear``: each map bilinearly resized to ``(H, W)`` (``align_corners=False``).
    ``nearest``: each cell's value copied onto its block of ``(H / h, W / w)`` input pixels,
    ignoring the receptive field (on the Red-Fetch-Green trunk, 8×8 cells onto the 8×8 tiles).
    ``transposed_mean``: ``transposed`` divided by the number of cells whose field covers each
    pixel, i.e. the mean attention of the cells that see it (0 where none does). Overlapping
    fields make ``transposed`` peak where the most fields overlap, whatever the attention; a
    uniform attention draws as a uniform map here.
    """
    height, width = size
    total = None
    for att, field in zip(maps, fields, strict=True):
        x = att.unsqueeze(1)  # (B, 1, h, w)
        if mode == "bilinear":
            out = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        elif mode == "nearest":
            out = F.interpolate(x, size=(height, width), mode="nearest")
        elif mode in ("transposed", "transposed_mean"):
            out = _unit_kernel(x, field, height, width)
            if mode == "transposed_mean":
                coverage = _unit_kernel(torch.ones_like(x[:1]), field, height, width)
                out = torch.where(coverage > 0, out / coverage.clamp_min(1), torch.zeros_like(out))
        else:
            raise ValueError(f"mode must be 'transposed', 'transposed_mean', 'bilinear' or 'nearest', got {mode!r}")
        total = out if total is None else total + out
    assert total is not None  # at least one attention map
    return total.squeeze(1)  # (B, H, W)


def _unit_kernel(x: torch.Tensor, field: ReceptiveField, height: int, width: int) -> torch.Tensor:
    """``(B, 1, h, w)`` cells -> ``(B, 1, H, W)``: each cell's value added over its receptive field."""
    ones = torch.ones(1, 1, field.size, field.size, dtype=x.dtype, device=x.device)
    full = F.conv_transpose2d(x, ones, stride=field.stride)  # input coords from field.offset
    start = -field.offset  # >= 0: padding puts cell 0's field before the first pixel
    full = F.pad(full, (0, max(0, start + width - full.shape[-1]), 0, max(0, start + height - full.shape[-2])))
    return full[..., start : start + height, start : start + width]


class FLSModule(nn.Module):
    """``softplus(conv(relu(conv(x))))``: ``(B, C, h, w) -> (B, 1, h, w)`` positive attention.

    ``kernel`` 3 (paper) or 1 (the 1×1 ablation), ``same`` padding; ``base2`` uses SoftPlus₂
    ``log2(1 + 2^z) = softplus(z ln 2) / ln 2``, which is 1 (not ln 2) for zero weights.
    """

    def __init__(self, channels: int, *, kernel: int = 3, hidden: int = 256, base2: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, kernel, padding=kernel // 2)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(hidden, 1, kernel, padding=kernel // 2)
        self.base2 = base2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv2(self.relu(self.conv1(x)))
        if self.base2:
            return F.softplus(z * math.log(2)) / math.log(2)
        return F.softplus(z)


class DAQNModule(nn.Module):
    """DAQN attention (non-recurrent DARQN): ``softmax_hw(conv1x1(tanh(conv1x1(x))))`` ``(B, 1, h, w)``."""

    def __init__(self, channels: int, hidden: int = 256) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.tanh = nn.Tanh()
        self.conv2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv2(self.tanh(self.conv1(x)))  # (B, 1, h, w)
        return torch.softmax(z.flatten(2), dim=-1).view_as(z)


class RSModule(nn.Module):
    """Region-sensitive module: ``sum_k softmax_hw(conv1x1(elu(conv1x1(x))))_k`` over 2 maps ``(B, 1, h, w)``.

    Its input is the L2-normalised (over channels) trunk output (done by the extractor, which also
    multiplies the normalised features by the attention)."""

    def __init__(self, channels: int, hidden: int = 512, heads: int = 2) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.elu = nn.ELU()
        self.conv2 = nn.Conv2d(hidden, heads, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv2(self.elu(self.conv1(x)))  # (B, heads, h, w)
        return torch.softmax(z.flatten(2), dim=-1).view_as(z).sum(1, keepdim=True)


class AttentionExtractor(BaseFeaturesExtractor):
    """A conv trunk with attention module(s), then a linear layer + ReLU: SB3 features extractor.

    ``convs``: the trunk as ``(out_channels, kernel, stride, padding)``; ``attention``: ``"fls"``,
    ``"daqn"`` or ``"rs"``; ``after``: indices of the convs followed by an attention module
    (FLS only; DAQN and RS sit after the last conv); ``final_relu``: ReLU after the last conv (the
    ReLUs between convs are always there); ``pool``: sum-pool ``sum_hw x * a`` to ``(B, C)``
    instead of flattening ``x * a``; ``norm``: divide the attention by its sum over positions;
    ``kernel``/``base2``: FLS convs' size and SoftPlus₂; ``input_padding``: zero-pad the input
    (RS-PPO pads by 1).

    :meth:`attention_maps` and :attr:`receptive_fields` implement the attention protocol (module
    docstring). Stateless: the maps are recomputed from the states, nothing is cached.
    """

    def __init__(
        self,
        observation_space: gym.spaces.Box,
        features_dim: int = 512,
        *,
        convs: Sequence[ConvSpec] | str = "nature_sparse",
        attention: str = "fls",
        after: Sequence[int] | None = None,
        final_relu: bool = True,
        pool: bool = False,
        norm: bool = False,
        kernel: int = 3,
        base2: bool = False,
        input_padding: int = 0,
    ) -> None:
        super().__init__(observation_space, features_dim)
        c, h, w = observation_space.shape
        convs = _trunk_convs(convs, h, w)
        after = [len(convs) - 1] if after is None else sorted(after)
        if attention not in ("fls", "daqn", "rs"):
            raise ValueError(f"attention must be 'fls', 'daqn' or 'rs', got {attention!r}")
        if attention != "fls" and after != [len(convs) - 1]:
            raise ValueError(f"{attention} attention sits after the last conv only")
        if not after or after[0] < 0 or after[-1] >= len(convs):
            raise ValueError(f"after must index the {len(convs)} convs, got {after}")
        self.kind, self.after, self.pool, self.norm = attention, list(after), pool, norm
        self.final_relu, self.input_padding = final_relu, input_padding
        # attention first: the trunk's last conv stays the last nn.Conv2d in module order, the
        # layer Grad-CAM and NormGrad use by default (model.conv_layers()), as for nature_cnn
        self.attention = nn.ModuleDict()
        self.convs = nn.ModuleList()
        self.relus = nn.ModuleList()
        fields, field, channels = [], ReceptiveField(1, 1, -input_padding), c
        for i, (out, k, s, p) in enumerate(convs):
            self.convs.append(nn.Conv2d(channels, out, k, s, p))
            self.relus.append(nn.ReLU() if (final_relu or i < len(convs) - 1) else nn.Identity())
            field, channels = field.then(k, s, p), out
            if i in after:
                self.attention[str(i)] = (
                    FLSModule(out, kernel=kernel, base2=base2)
                    if attention == "fls"
                    else DAQNModule(out)
                    if attention == "daqn"
                    else RSModule(out)
                )
                fields.append(field)
        self.receptive_fields: list[ReceptiveField] = fields
        with torch.no_grad():
            n_flat = self._trunk(torch.zeros(1, c, h, w))[0].flatten(1).shape[1]
        self.linear = nn.Sequential(nn.Linear(n_flat, features_dim), nn.ReLU())

    def _trunk(self, states: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Trunk output (``(B, C, h, w)``, or ``(B, C)`` when pooled) and the attention maps ``[(B, 1, h_i, w_i)]``."""
        x = F.pad(states, (self.input_padding,) * 4) if self.input_padding else states
        maps = []
        for i, (conv, relu) in enumerate(zip(self.convs, self.relus)):
            x = relu(conv(x))
            if str(i) not in self.attention:
                continue
            if self.kind == "rs":
                x = F.normalize(x, dim=1)  # unit L2 norm over channels at every position
            a = self.attention[str(i)](x)  # (B, 1, h, w)
            if self.norm:
                a = a / a.sum((2, 3), keepdim=True)
            maps.append(a)
            last = i == len(self.convs) - 1
            x = (x * a).sum((2, 3)) if (last and (self.pool or self.kind == "daqn")) else x * a
        return x, maps

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.linear(self._trunk(states)[0].flatten(1))

    def attention_maps(self, states: torch.Tensor) -> list[torch.Tensor]:
        """The attention of each module ``[(B, h_i, w_i)]`` for float states ``(B, C, H, W)``."""
        return [a.squeeze(1) for a in self._trunk(states)[1]]


def _trunk_convs(convs: Sequence[ConvSpec] | str, height: int, width: int) -> list[ConvSpec]:
    named = {
        "nature_sparse": NATURE_SPARSE,
        "nature_dense": NATURE_DENSE,
        "grid_dense": GRID_DENSE,
        "grid_sparse": grid_sparse(height, width),
    }
    if isinstance(convs, str):
        if convs not in named:
            raise ValueError(f"unknown trunk {convs!r}; known: {', '.join(sorted(named))}")
        return list(named[convs])
    return [tuple(int(v) for v in spec) for spec in convs]  # type: ignore[misc]


def has_attention(model: nn.Module) -> bool:
    """Whether ``model`` (a Model or any module) holds a module following the attention protocol."""
    return any(is_attention(m) for m in model.modules())


def is_attention(module: nn.Module) -> bool:
    """Whether ``module`` follows the attention protocol (module docstring)."""
    return callable(getattr(module, "attention_maps", None)) and hasattr(module, "receptive_fields")


#: name suffix -> extractor settings (Table 3 rows); registered for both trunks
VARIANTS: dict[str, dict] = {
    "sparse_fls": {},
    "sparse_fls_pool": {"pool": True},
    "dense_fls_pool": {"convs": "dense", "pool": True},
    "sparse_fls_norm": {"norm": True},
    "sparse_fls_1x1": {"kernel": 1},
    "sparse_fls_sp2": {"base2": True},
    "sparse_fls_norelu": {"final_relu": False},
    "sparse_fls_norelu_pool": {"final_relu": False, "pool": True},
    "dense_fls_norelu_pool": {"convs": "dense", "final_relu": False, "pool": True},
    "sparse_fls_first": {"after": [0]},
    "sparse_fls_each": {"after": [0, 1, 2]},
    "daqn": {"attention": "daqn"},
    "rs_ppo": {"attention": "rs", "input_padding": 1},
    "rs_ppo_nopad": {"attention": "rs"},
}

for _name, _settings in VARIANTS.items():
    for _prefix, _trunk_name, _dim in (("", "nature", 512), ("grid_", "grid", 256)):
        _kwargs = {**_settings, "convs": f"{_trunk_name}_{_settings.get('convs', 'sparse')}", "features_dim": _dim}
        ARCHS.register(_prefix + _name)(Arch(AttentionExtractor, _kwargs))
