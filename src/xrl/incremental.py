"""Incremental inference for local perturbations (Nakandala, Kumar & Papakonstantinou 2019,
"Incremental and Approximate Inference for Faster Occlusion-based Deep CNN Explanations",
SIGMOD, arXiv:1907.00478).

A perturbation that changes a small box of the state changes, in each convolution, only the
outputs whose receptive field meets that box; everything else equals the unperturbed state's
activations. For a network that is a chain of ``Conv2d`` / pointwise activations /
``MaxPool2d`` / ``Flatten`` followed by ``Linear`` layers (the Nature CNN, the grid CNN),
:func:`plan` records the chain, and :meth:`Plan.scores` computes each perturbation's scores
from the state's own activations:

- per convolution (or pooling) only the output box the changed input box reaches, from the
  input box that feeds it (the same size for every perturbation of a batch, shifted inside the
  layer at the borders, so one batched ``conv2d`` does all of them);
- pointwise activations on the changed box only;
- the first ``Linear`` after the spatial layers on the change alone:
  ``W x' = W x + W[:, box] (x'[box] - x[box])`` (one matmul per distinct box position);
- the layers after it on the ``(N, features)`` vectors as usual.

Anything else in the chain (batch norm, residual connections, attention, a custom forward)
makes :func:`plan` return None and the caller runs the model densely. Results equal the dense
forward pass up to float rounding (different summation order; maps within 1e-4 in
``tests/test_incremental.py``). The speed-up grows with the share of the state a perturbation
leaves alone: measured in ``benchmarks/bench_incremental.py``.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: pointwise layers: applied to the changed box only (batch norm only in eval mode, where it is
#: a per-channel affine map: :meth:`Plan.usable`)
POINTWISE = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.Identity, nn.BatchNorm2d)


@dataclass
class _Window:
    """A convolution or max pooling: kernel, stride and zero (or -inf) padding per axis."""

    module: nn.Module
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    pad_value: float


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(module: nn.Module) -> _Window | None:
    if isinstance(module, nn.Conv2d):
        if (
            module.groups != 1
            or _pair(module.dilation) != (1, 1)
            or module.padding_mode != "zeros"
            or isinstance(module.padding, str)
        ):
            return None
        return _Window(module, _pair(module.kernel_size), _pair(module.stride), _pair(module.padding), 0.0)
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or _pair(module.dilation) != (1, 1) or module.return_indices:
            return None
        stride = module.stride if module.stride is not None else module.kernel_size
        return _Window(module, _pair(module.kernel_size), _pair(stride), _pair(module.padding), -math.inf)
    return None


def _chain(net: nn.Module) -> list[nn.Module] | None:
    """The leaf modules of ``net`` if its forward is one straight chain of module calls (and
    flattens), else None."""
    import torch.fx as fx  # imported here: only the incremental path needs it

    try:
        graph = fx.symbolic_trace(net).graph
    except Exception:  # any forward fx cannot trace: the caller runs densely
        return None
    modules = dict(net.named_modules())
    chain: list[Any] = []
    previous = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if previous is not None:
                return None
            previous = node
            continue
        if node.op == "output":
            return chain if node.args[0] is previous else None
        if len(node.all_input_nodes) != 1 or node.all_input_nodes[0] is not previous:
            return None
        if node.op == "call_module":
            chain.append(modules[node.target])
        elif (
            node.op == "call_function"
            and node.target is torch.flatten
            and node.args[1:] in ((1,), ())
            and node.kwargs.get("start_dim", 1) == 1
        ) or (node.op == "call_method" and node.target == "flatten" and node.args[1:] in ((1,),)):
            chain.append(nn.Flatten())
        elif node.op == "call_function" and node.target in (F.relu, torch.relu):
            chain.append(nn.ReLU())
        else:
            return None
        previous = node
    return None


@dataclass
class Plan:
    """A network split into spatial steps (windows with their pointwise activations), the first
    ``Linear`` (applied to the change) and the dense rest."""

    spatial: list[tuple[_Window, list[nn.Module]]]
    linear: nn.Linear
    rest: nn.Module

    def usable(self) -> bool:
        """False while a batch norm is in training mode (batch statistics are not pointwise)."""
        return not any(m.training for _, pointwise in self.spatial for m in pointwise if isinstance(m, nn.BatchNorm2d))

    def scores(
        self, state: torch.Tensor, fill: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(K,)`` of ``state (C, H, W)`` and ``(N, K)`` of ``state * (1 - M_n) + fill *
        M_n`` for ``masks (N, H, W)`` that are 0 outside ``boxes (N, 4)`` = ``(top, left,
        height, width)`` (all boxes of one size)."""
        acts = [state[None]]
        x = state[None]
        for window, pointwise in self.spatial:  # the unperturbed activations of every layer
            x = window.module(x)
            for m in pointwise:
                x = m(x)
            acts.append(x)
        flat = x.flatten(1)
        base_linear = self.linear(flat)  # (1, F)
        base = self.rest(base_linear)[0]

        n = masks.shape[0]
        top, left = boxes[:, 0], boxes[:, 1]
        size = (int(boxes[0, 2]), int(boxes[0, 3]))
        tile = None  # the changed box of the current layer's input: (N, C, h, w) at (top, left)
        for i, (window, pointwise) in enumerate(self.spatial):
            source = acts[i][0]
            (kh, kw), (sh, sw), (ph, pw) = window.kernel, window.stride, window.padding
            height, width = source.shape[-2:]
            out_h, out_w = acts[i + 1].shape[-2:]
            # output rows the box [top, top + size) reaches: o*s - p + k > top and o*s - p <= bottom
            o_top = _ceil_div(top + ph - kh + 1, sh).clamp(min=0)
            o_bottom = torch.div(top + size[0] - 1 + ph, sh, rounding_mode="floor").clamp(max=out_h - 1)
            o_left = _ceil_div(left + pw - kw + 1, sw).clamp(min=0)
            o_right = torch.div(left + size[1] - 1 + pw, sw, rounding_mode="floor").clamp(max=out_w - 1)
            o_size = (int((o_bottom - o_top).max()) + 1, int((o_right - o_left).max()) + 1)
            o_top = o_top.clamp(max=out_h - o_size[0])
            o_left = o_left.clamp(max=out_w - o_size[1])
            # the input box that feeds it, in padded coordinates
            in_size = ((o_size[0] - 1) * sh + kh, (o_size[1] - 1) * sw + kw)
            if i == 0:
                patch = self._input_patch(
                    state, fill, masks, o_top * sh, o_left * sw, in_size, (ph, pw), window.pad_value
                )
            else:
                full = F.pad(source, (pw, pw, ph, ph), value=window.pad_value).expand(n, -1, -1, -1).clone()
                _paste(full, tile, top + ph, left + pw)  # type: ignore[arg-type]
                patch = _gather(full, o_top * sh, o_left * sw, in_size)
            out = _apply(window, patch)
            for m in pointwise:
                out = m(out)
            tile, top, left, size = out, o_top, o_left, o_size
        # the first Linear on the change of its input
        last = acts[-1][0]  # (C, h, w)
        old = _gather(last[None].expand(n, -1, -1, -1), top, left, size)
        delta = (tile - old).flatten(1)  # type: ignore[operator]  # (N, C * h * w)
        linear = base_linear.expand(n, -1).clone()
        key = top * last.shape[-1] + left
        for k in key.unique().tolist():
            rows = (key == k).nonzero().squeeze(1)
            r, c = divmod(k, last.shape[-1])
            linear[rows] = torch.addmm(linear[rows], delta[rows], self._weight_box(tuple(last.shape), r, c, size))  # type: ignore[arg-type]
        return base, self.rest(linear)

    def _weight_box(self, shape: tuple[int, int, int], row: int, col: int, size: tuple[int, int]) -> torch.Tensor:
        """The first Linear's weights on the box ``(C, row : row + h, col : col + w)`` of its
        input, ``(C * h * w, F)``, cached per box (and per version of the weights)."""
        weight = self.linear.weight
        key = (shape, row, col, size, weight._version, weight.data_ptr(), weight.dtype, weight.device)
        cache = self.__dict__.setdefault("_boxes", {})
        if key not in cache:
            held = sum(v.numel() * v.element_size() for v in cache.values())
            if held > 2**28 or any(k[4:6] != key[4:6] for k in cache):
                cache.clear()  # weights changed, or over 256 MB of boxes: start over
            box = weight.view(weight.shape[0], *shape)[:, :, row : row + size[0], col : col + size[1]]
            cache[key] = box.reshape(weight.shape[0], -1).T.contiguous()
        return cache[key]

    @staticmethod
    def _input_patch(state, fill, masks, top, left, size, padding, pad_value) -> torch.Tensor:
        """The first layer's input boxes ``(N, C, *size)`` of the perturbed states, built from the
        state, the fill and the masks inside the boxes only (zero padding outside the state)."""
        (ph, pw), n = padding, masks.shape[0]
        pad = (pw, pw, ph, ph)
        s = _gather(F.pad(state, pad, value=pad_value)[None].expand(n, -1, -1, -1), top, left, size)
        f = _gather(F.pad(fill, pad, value=pad_value)[None].expand(n, -1, -1, -1), top, left, size)
        m = _gather(F.pad(masks, pad)[:, None], top, left, size)
        return torch.lerp(s, f, m)


def _ceil_div(a: torch.Tensor, b: int) -> torch.Tensor:
    return -torch.div(-a, b, rounding_mode="floor")


def _gather(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes ``x[n, :, top_n : top_n + h, left_n : left_n + w]`` as ``(N, C, h, w)``."""
    n, c, _, width = x.shape
    rows = top[:, None] + torch.arange(size[0], device=x.device)  # (N, h)
    cols = left[:, None] + torch.arange(size[1], device=x.device)  # (N, w)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, -1).expand(n, c, -1)
    return x.flatten(2).gather(2, index).view(n, c, *size)


def _paste(x: torch.Tensor, tile: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> None:
    """``x[n, :, top_n : top_n + h, left_n : left_n + w] = tile[n]`` in place."""
    n, c, _, width = x.shape
    h, w = tile.shape[-2:]
    rows = top[:, None] + torch.arange(h, device=x.device)
    cols = left[:, None] + torch.arange(w, device=x.device)
    index = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, -1).expand(n, c, -1)
    x.view(n, c, -1).scatter_(2, index, tile.reshape(n, c, -1))


def _apply(window: _Window, patch: torch.Tensor) -> torch.Tensor:
    """The window's operation on a pre-padded patch (no padding of its own)."""
    module = window.module
    if isinstance(module, nn.Conv2d):
        return F.conv2d(patch, module.weight, module.bias, stride=window.stride)
    return F.max_pool2d(patch, window.kernel, window.stride)


def plan(net: nn.Module) -> Plan | None:
    """The incremental plan of ``net``, or None when its forward is not a chain of supported
    spatial layers followed by a ``Linear``."""
    chain = _chain(net)
    if not chain:
        return None
    spatial: list[tuple[_Window, list[nn.Module]]] = []
    for position, module in enumerate(chain):
        window = _window(module)
        if window is not None:
            spatial.append((window, []))
        elif isinstance(module, POINTWISE) and spatial:
            spatial[-1][1].append(module)
        elif isinstance(module, nn.Flatten) and spatial:
            continue
        elif isinstance(module, nn.Linear) and spatial and isinstance(chain[position - 1], nn.Flatten):
            if spatial[0][0].pad_value != 0 and spatial[0][0].padding != (0, 0):
                return None  # a padded max pooling on the input: the masks' zero padding would not do
            return Plan(spatial, module, nn.Sequential(*chain[position + 1 :]))
        else:
            return None
    return None


_PLANS: weakref.WeakKeyDictionary[nn.Module, Plan | None] = weakref.WeakKeyDictionary()


def cached_plan(net: nn.Module) -> Plan | None:
    """:func:`plan` of ``net``, traced once per network object."""
    if net not in _PLANS:
        _PLANS[net] = plan(net)
    return _PLANS[net]


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` boxes ``(top, left, height, width)`` of one common size holding each mask's
    non-zero pixels (shifted inside the state at the borders)."""
    n, height, width = masks.shape
    rows, cols = masks.ne(0).any(2), masks.ne(0).any(1)  # (N, H), (N, W)
    any_rows = rows.any(1)
    first_row = torch.where(any_rows, rows.float().argmax(1), torch.zeros_like(any_rows, dtype=torch.long))
    last_row = torch.where(any_rows, height - 1 - rows.flip(1).float().argmax(1), first_row)
    first_col = torch.where(any_rows, cols.float().argmax(1), torch.zeros_like(any_rows, dtype=torch.long))
    last_col = torch.where(any_rows, width - 1 - cols.flip(1).float().argmax(1), first_col)
    h = int((last_row - first_row).max()) + 1
    w = int((last_col - first_col).max()) + 1
    top = first_row.clamp(max=height - h)
    left = first_col.clamp(max=width - w)
    return torch.stack([top, left, torch.full_like(top, h), torch.full_like(top, w)], 1)
