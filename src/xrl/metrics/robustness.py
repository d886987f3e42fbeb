"""Robustness: how much the explanation moves when the state barely does.

``lipschitz``: the local Lipschitz estimate of Alvarez-Melis & Jaakkola 2018 ("On the Robustness
of Interpretability Methods", arXiv:1806.08049; "Towards Robust Interpretability with
Self-Explaining Neural Networks", NeurIPS 2018, arXiv:1806.07538),
``max_j ||e(x) - e(x_j)||_2 / ||x - x_j||_2`` over sampled neighbours ``x_j``. Four named
protocols (``protocol=``), see :class:`LocalLipschitz` and ``docs/metrics.md``.
"""

from __future__ import annotations

import math

import torch

from xrl.explainers.base import Explainer
from xrl.limits import check_memory
from xrl.metrics.base import METRICS, Metric
from xrl.ops import chunks, positive_int, target_function

#: the named local Lipschitz protocols; the first is the default
LIPSCHITZ_PROTOCOLS = ("xrl", "quantus", "xrl-raw", "latec")
#: Quantus' ``lipschitz_constant``: added to the denominator "for numerical stability"
QUANTUS_EPS = 1e-10
#: the Quantus fork LATEC runs (github.com/lukaskln/Quantus): ``normalise_by_max`` divides by ``max + 1e-13``
LATEC_NORMALISE_EPS = 1e-13


def normalise_by_max(maps: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """Each map of ``maps (B, ...)`` divided by its own largest absolute value (signs kept); an
    all-zero map is returned unchanged (Quantus' ``normalise_by_max``, applied per map). ``eps``
    is added to the divisor (the Quantus fork LATEC uses: ``1e-13``)."""
    flat = maps.flatten(1)
    top = flat.abs().amax(1, keepdim=True)
    return (flat / (torch.where(top > 0, top, torch.ones_like(top)) + eps)).view_as(maps)


@METRICS.register("lipschitz")
class LocalLipschitz(Metric):
    """Local Lipschitz Estimate: ``max_j ||n(e(x)) - n(e(x_j))||_2 / ||x - x_j||_2``.

    ``e(x)`` is the given ``saliency`` (it must come from ``explainer`` with the same ``targets``);
    the neighbours ``x_j`` are explained by ``explainer.explain(x_j, targets)`` with the targets of
    ``x`` (``None`` is resolved to the action on ``x`` first, so the explained action never
    switches; a callable is passed as is). Norms run over all pixels (maps) and over all
    channels and pixels (states), in float64. The neighbours' noise ``(n_samples, C, H, W)`` is
    drawn once per call on the CPU from ``torch.Generator().manual_seed(seed)`` and shared by every
    state, so a state's value depends neither on its batch nor on the device
    (:meth:`noise` returns it). Neighbours are not clamped to the valid input range. Neighbours
    are explained in chunks of ``batch_size`` states.

    Protocols:

    * ``"xrl"`` (default; scale-free): ``n`` = :func:`normalise_by_max`, every map (the given
      one and every neighbour's) divided by its own max ``|value|`` (an all-zero map stays 0), so
      multiplying a method's maps by any ``c > 0`` leaves the value unchanged. Neighbours
      ``x_j = x + d_j``, ``d_j = (2 u - 1) * radius`` with ``u = torch.rand((n_samples, C, H, W),
      generator)``: uniform in the L-inf ball of ``radius`` (default 0.02, about 5/255);
      ``n_samples=16``; denominator ``||d_j||_2``.
    * ``"xrl-raw"``: the same without normalisation (``n`` = identity), xrl's ``lipschitz``
      before issue 23. **Scale-dependent**: maps multiplied by ``c`` give ``|c|`` times the value,
      so values of methods whose maps have different units are not comparable.
    * ``"quantus"``: Quantus' ``LocalLipschitzEstimate`` (Hedström et al. 2023, "Quantus: An
      Explainable AI Toolkit for Responsible Evaluation of Neural Network Explanations and
      Beyond", JMLR, arXiv:2202.06861; github.com/understandable-machine-intelligence-lab/Quantus,
      ``quantus/metrics/robustness/local_lipschitz_estimate.py`` with its defaults and the
      helpers it calls): ``x_j = x + d_j``, ``d_j`` Gaussian, mean 0, std ``std`` (default 0.1;
      ``batch_gaussian_noise``) on every channel and pixel; ``n_samples=200`` (``nr_samples``);
      ``n`` = ``normalise_by_max`` (``normalise=True``), no absolute value (``abs=False``),
      applied to the unperturbed explanation too; numerator and denominator Euclidean
      (``distance_euclidean``), the denominator measured on the perturbed input as fed to the
      explainer plus ``1e-10`` (``lipschitz_constant``); the max over samples (``np.nanmax``);
      the explained targets are the given ``y_batch`` for every neighbour. Differences from
      Quantus: (1) Quantus' ``normalise_by_max`` runs with ``normalise_axes=None``, i.e. over the
      whole array including the batch axis, so it divides every map by the largest ``|value|`` of
      its *batch* (the given maps: the whole ``a_batch`` of the call; the neighbours' maps: each
      ``batch_size`` chunk) and skips normalisation only when that whole batch is 0: its values
      depend on which states share a call. Here every map is divided by its own max, which is
      Quantus called on one state at a time. (2) Quantus draws fresh noise for every state and
      sample from numpy's global generator (``np.random.normal``, unseeded); here the
      ``(n_samples, C, H, W)`` draws ``torch.randn(..., generator) * std`` are seeded and shared
      by all states. ``d_j`` is drawn in float32 and added to float32 states, which gives the
      same float32 neighbours as Quantus' float64 noise added then stored in the float32 input.
      (3) Quantus expects targets given; ``None`` here is the action on ``x``.
      ``return_nan_when_prediction_changes`` is Quantus' default, False (not offered).
    * ``"latec"``: LATEC's ``locallipschitzestimate`` (Klein et al. 2024, "Navigating the Maze of
      Explainable AI: A Systematic Approach to Evaluating Methods and Metrics", arXiv:2409.16756;
      github.com/IML-DKFZ/latec, ``src/modules/registry/eval_metrics_registry.py`` with
      ``configs/eval_metric/image_imagenet.yaml``), which runs ``LocalLipschitzEstimate`` of the
      Quantus fork github.com/lukaskln/Quantus (``quantus/metrics/robustness/
      local_lipschitz_estimate.py``) with ``nr_samples: 5``, ``perturb_std: 0.1``,
      ``perturb_mean: 0.0``, ``perturb_func=gaussian_noise``, Euclidean numerator and
      denominator, ``lipschitz_constant`` (denominator ``+ 1e-10``), ``normalise=True``,
      ``abs=False``: as ``"quantus"`` with ``n_samples=5`` and the fork's ``normalise_by_max``,
      which divides by ``max |value| + 1e-13``. ``normalise=False`` (a setting of this protocol
      only) compares raw maps. Differences from LATEC: the fork normalises the given maps per map
      but each neighbour's map by the largest ``|value|`` of all neighbour maps of its call
      (``normalise_axes=None``; LATEC's evaluation loop calls it on 2 states at a time,
      ``chunk_size: 2``), so its values depend on which states share a call; here every map by
      its own max. Seeded noise shared by all states (the fork: ``np.random.normal`` per state);
      targets may be left out; LATEC feeds inputs with more than 3 channels to the explainer as
      volumes (``unsqueeze(1)``), here the state goes as it is.

    Settings: ``protocol``; ``radius`` (``"xrl"``, ``"xrl-raw"``) or ``std`` (``"quantus"``,
    ``"latec"``) — the other one is refused; ``n_samples`` (default 16, 200 for ``"quantus"``, 5
    for ``"latec"``); ``normalise`` (``"latec"`` only, default True); ``batch_size=64``;
    ``seed=0``. Lower is better.
    """

    higher_is_better = False
    category = "robustness"
    requires = ("explainer",)

    def __init__(
        self,
        *,
        protocol: str = "xrl",
        radius: float | None = None,
        std: float | None = None,
        n_samples: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        normalise: bool | None = None,
    ) -> None:
        if protocol not in LIPSCHITZ_PROTOCOLS:
            raise ValueError(f"protocol must be one of {LIPSCHITZ_PROTOCOLS}, got {protocol!r}")
        if normalise is not None and (protocol != "latec" or not isinstance(normalise, bool)):
            raise ValueError(
                f"normalise= (True or False) is a setting of protocol='latec' only, got {normalise!r} "
                f"with protocol={protocol!r} ('xrl-raw' is 'xrl' without normalisation)"
            )
        if protocol in ("quantus", "latec"):
            if radius is not None:
                raise ValueError(
                    f"radius= is the L-inf ball of protocol='xrl'/'xrl-raw'; protocol={protocol!r} "
                    "adds Gaussian noise of std= (default 0.1)"
                )
            std = 0.1 if std is None else std
            if not std > 0:
                raise ValueError(f"std must be positive, got {std!r}")
        else:
            if std is not None:
                raise ValueError(
                    f"std= is the Gaussian noise of protocol='quantus'/'latec'; protocol={protocol!r} "
                    "samples the L-inf ball of radius= (default 0.02)"
                )
            radius = 0.02 if radius is None else radius
            if not radius > 0:
                raise ValueError(f"radius must be positive, got {radius!r}")
        if n_samples is None:
            n_samples = {"quantus": 200, "latec": 5}.get(protocol, 16)
        positive_int("n_samples", n_samples), positive_int("batch_size", batch_size)
        self.protocol = protocol
        self.normalise = protocol != "xrl-raw" if normalise is None else normalise
        self.radius = None if radius is None else float(radius)
        self.std = None if std is None else float(std)
        self.n_samples = int(n_samples)
        self.batch_size = int(batch_size)
        self.seed = int(seed)

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The offsets ``d_j (n_samples, *shape)`` (float32, CPU) for states of shape ``(B, *shape)``:
        ``(2 * torch.rand(...) - 1) * radius`` or, for ``"quantus"`` and ``"latec"``,
        ``torch.randn(...) * std``, from ``torch.Generator().manual_seed(seed)``."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        size = (self.n_samples, *shape)
        if self.protocol in ("quantus", "latec"):
            assert self.std is not None  # __init__ sets std for "quantus", radius for the others
            return torch.randn(size, generator=gen, device="cpu") * self.std
        assert self.radius is not None
        return (torch.rand(size, generator=gen, device="cpu") * 2 - 1) * self.radius

    def check_budget(self, b: int, shape: tuple[int, ...]) -> None:
        """Refuse (``MemoryError``) a batch of ``b`` states of ``shape`` whose offsets, neighbours and
        their float64 maps would need more than ``XRL_MAX_ALLOC_GB``; run before anything is computed."""
        s, numel = self.n_samples, math.prod(shape)
        check_memory(
            4 * numel * (s + b * s) + 8 * b * s * shape[-2] * shape[-1] * 2,
            f"lipschitz with n_samples={s} ({b * s} neighbours of {shape} states)",
            "lower lipschitz.n_samples",
        )

    def compute(self, *, states, saliency, explainer, targets=None, **_) -> torch.Tensor:
        if not isinstance(explainer, Explainer):
            raise TypeError(f"explainer must be an xrl Explainer, got {type(explainer).__name__}")
        explainer.model.check_states(states)
        b, s = states.shape[0], self.n_samples
        self.check_budget(b, tuple(states.shape[1:]))
        # None is the argmax on the states, not on each neighbour; a callable stays itself
        resolved = target_function(explainer.model, states, targets)
        fixed = targets if resolved.index is None else resolved.index
        if isinstance(fixed, torch.Tensor):
            fixed = fixed.repeat_interleave(s)  # one per neighbour, sample-major
        offsets = self.noise(tuple(states.shape[1:])).to(states)  # (S, C, H, W)
        neighbours = (states.unsqueeze(1) + offsets).flatten(0, 1)  # (B*S, C, H, W)
        maps = torch.cat(
            [
                explainer.explain(neighbours[part], fixed[part] if isinstance(fixed, torch.Tensor) else fixed)
                for part in chunks(b * s, self.batch_size)
            ]
        ).double()
        given = saliency.reshape(b, -1).double()
        if self.normalise:
            eps = LATEC_NORMALISE_EPS if self.protocol == "latec" else 0.0
            maps, given = normalise_by_max(maps, eps), normalise_by_max(given, eps)
        change = (maps.view(b, s, -1) - given.view(b, 1, -1)).norm(dim=2)  # (B, S)
        if self.protocol in ("quantus", "latec"):
            moved = (neighbours.view(b, s, -1).double() - states.reshape(b, 1, -1).double()).norm(dim=2)
            return (change / (moved + QUANTUS_EPS)).amax(dim=1).float()
        step = offsets.flatten(1).double().norm(dim=1)  # (S,)
        return (change / step).amax(dim=1).float()
