"""Physically remove pruned structures, and measure what that saves.

Masking a structure leaves its weights in the tensors; slicing deletes them, together with every
parameter that only existed to consume them (the next layer's input columns, including the
channel-major blocks a ``Flatten`` spreads one conv channel over). torch-pruning's
``DependencyGraph`` traces the model once and finds those coupled parameters for us.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

from bmrs.devices import module_device
from bmrs.models.structures import coupled_layers, dependency_graph
from bmrs.nn.attention import HeadAttention, remove_heads_
from bmrs.nn.groups import noise_groups
from bmrs.nn.noise import LogNormalNoise, noise_modules
from bmrs.nn.fold import fold_noise

SLICEABLE_LAYERS = (nn.Linear, nn.Conv2d)
# What a keep mask may name: a layer's output structures, or an attention's heads.
SLICEABLE_MODULES = (*SLICEABLE_LAYERS, HeadAttention)


@dataclass(frozen=True)
class SliceResult:
    """A sliced plain model and its size before and after.

    ``*_flops`` are in torch-pruning's unit, multiply-accumulates (MACs) per example: see
    ``count_flops``. ``compression`` is ``1 - pruned_params / dense_params``, of the model returned
    (widths rounded up to ``round_to``); ``compression_unrounded`` and ``pruned_params_unrounded``
    are what slicing every pruned structure would give, so their difference is what rounding costs
    (equal without rounding). ``widths`` maps each Linear/Conv2d path to its surviving output count;
    ``keep`` holds the masks the model was sliced by (what ``export.saved.save_sliced`` records).
    """

    model: nn.Module
    dense_params: int
    pruned_params: int
    dense_flops: int
    pruned_flops: int
    compression: float
    widths: dict[str, int]
    round_to: int | None
    pruned_params_unrounded: int
    compression_unrounded: float
    keep: dict[str, Tensor]


def check_round_to(round_to: object) -> None:
    """``round_to`` is None or an integer >= 1 (None and 1 both mean no rounding)."""
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"round_to must be an integer >= 1 (e.g. 8 or 16), or null for no rounding; got {round_to!r}")


def round_up_mask(mask: Tensor, round_to: int | None) -> Tensor:
    """``mask`` with pruned structures kept until the kept count is a multiple of ``round_to``
    (rounded up, at most every structure). The lowest pruned indices are kept, so equal masks
    (coupled layers) stay equal."""
    if round_to is None or round_to <= 1:
        return mask
    kept = int(mask.sum())
    target = min(math.ceil(kept / round_to) * round_to, int(mask.numel()))
    if target == kept:
        return mask
    rounded = mask.clone()
    rounded[_drop_indices(mask)[: target - kept]] = True
    return rounded


def slice_model(noisy_model: nn.Module, example_input: Tensor, round_to: int | None = None) -> SliceResult:
    """Fold ``noisy_model``'s noise (``fold_noise``) and slice away its pruned structures.

    A layer whose structures were all pruned keeps one: torch-pruning cannot make a zero-width
    layer, and the kept structure's folded row and bias are exactly zero, so the function (a
    constant downstream) is unchanged. A warning names such layers.

    ``round_to`` (None or 1: off): every sliced layer keeps a multiple of ``round_to`` outputs, or
    all of them, by keeping its lowest-indexed pruned structures; their folded rows are exactly
    zero too (``E[theta]`` of a pruned structure is 0), so the function is unchanged. Odd widths
    can be slower on real kernels (vectorised along channels, tensor cores in multiples of 8).
    """
    check_round_to(round_to)
    dense, keep = fold_noise(noisy_model)
    keep = dict(keep)
    for path, mask in keep.items():
        if not bool(mask.any()):
            warnings.warn(
                f"every structure of {path!r} is pruned, so the network's output no longer depends on "
                "its input; one all-zero structure is kept to keep the layer well-formed",
                stacklevel=2,
            )
            keep[path] = mask.clone()
            keep[path][0] = True
    # Heads are not rounded: a head is head_dim rows already, and kernels see those, not the count.
    attention = {path for path in keep if isinstance(dense.get_submodule(path), HeadAttention)}
    rounded = {path: mask if path in attention else round_up_mask(mask, round_to) for path, mask in keep.items()}
    sliced = slice_(dense, rounded, example_input)
    dense_params, pruned_params = count_params(dense), count_params(sliced)
    same = all(rounded[path] is mask for path, mask in keep.items())
    # Only the parameter count of the unrounded slice is needed; it is sliced only when it differs.
    unrounded_params = pruned_params if same else count_params(slice_(dense, keep, example_input))
    return SliceResult(
        model=sliced,
        dense_params=dense_params,
        pruned_params=pruned_params,
        dense_flops=count_flops(dense, example_input),
        pruned_flops=count_flops(sliced, example_input),
        compression=1.0 - pruned_params / dense_params,
        widths=surviving_widths(sliced),
        round_to=round_to,
        pruned_params_unrounded=unrounded_params,
        compression_unrounded=1.0 - unrounded_params / dense_params,
        keep=rounded,
    )


def slice_(model: nn.Module, keep: Mapping[str, Tensor], example_input: Tensor) -> nn.Module:
    """Return a copy of ``model`` with the output structures where ``keep[path]`` is False removed.

    ``keep`` maps Linear/Conv2d paths to bool masks over their outputs (as ``fold_noise`` returns);
    layers not named keep every output. Downstream input channels are removed with them, so the
    copy computes the same function as ``model`` with those outputs zeroed. ``example_input`` is a
    batch the model accepts; it is only used to trace the dependency graph. ``model`` is untouched.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"slice_ takes an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a Tensor batch, got {type(example_input).__name__}")
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep must map layer paths to bool masks, got {type(keep).__name__}")
    sliced = copy.deepcopy(model)
    layers = {path: _check_mask(sliced, path, mask) for path, mask in keep.items()}
    # Layers whose every output survives need no group; masks are in the layer's original indexing,
    # which stays valid because each layer's outputs are removed exactly once.
    plan = {path: (layers[path], _drop_indices(mask)) for path, mask in keep.items() if not bool(mask.all())}
    for path in [path for path, (layer, _) in plan.items() if isinstance(layer, HeadAttention)]:
        remove_heads_(layers[path], keep[path].cpu())  # heads touch no other layer: no dependency graph needed
    if all(isinstance(layer, HeadAttention) for layer, _ in plan.values()):
        return _checked_widths(sliced, keep, plan)

    was_training = sliced.training
    frozen = {name for name, parameter in sliced.named_parameters() if not parameter.requires_grad}
    sliced.eval()
    graph = dependency_graph(sliced, example_input)
    paths = {id(module): name for name, module in sliced.named_modules()}
    removed_with: set[str] = set()  # coupled layers whose outputs went with an earlier layer's group
    for path, (layer, drop) in plan.items():
        if path in removed_with or isinstance(layer, HeadAttention):
            continue
        prune_fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
        group = graph.get_pruning_group(layer, prune_fn, drop)
        for dep, indices in group:
            other = dep.target.module
            if other is layer or not isinstance(other, SLICEABLE_LAYERS) or not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            # A coupled layer (summed by a residual, tied by a depthwise convolution) loses these channels
            # too, which is exact only if it zeroed the very same ones.
            partner = paths.get(id(other), type(other).__name__)
            partner_drop = plan[partner][1] if partner in plan else []
            if partner_drop != sorted(indices):
                raise ValueError(
                    f"the outputs of {path!r} and {partner!r} are coupled (summed by a residual, or tied by a depthwise "
                    f"convolution), so a channel removed from one is removed from both, but their masks differ ({path!r} "
                    f"removes {_brief(drop)}, {partner!r} removes {_brief(partner_drop)}); give coupled layers one mask "
                    "(noise on coupled layers forms one group, decided as one: bmrs.models.structures.analyse_structures)"
                )
            removed_with.add(partner)
        group.prune()
    sliced.train(was_training)
    # Pruning replaces parameters by new ones, so the caller's frozen flags are restored by name.
    for name, parameter in sliced.named_parameters():
        parameter.requires_grad_(name not in frozen)

    return _checked_widths(sliced, keep, plan)


def _checked_widths(sliced: nn.Module, keep: Mapping[str, Tensor], plan: dict) -> nn.Module:
    for path, (layer, drop) in plan.items():
        expected = int(keep[path].numel()) - len(drop)
        if structure_count(layer) != expected:
            raise RuntimeError(f"slicing left {path!r} with {structure_count(layer)} outputs instead of {expected}")
    return sliced


def check_sliceable(noisy_model: nn.Module, example_input: Tensor) -> None:
    """Refuse, before any training, noise points whose pruned structures export cannot remove exactly.

    On a copy, every noise starts at a factor of one and loses one structure; the copy's evaluation
    output (masked) is compared with that of its folded, sliced model. The copy's normalisation
    statistics and affine parameters are randomised first: a fresh BatchNorm maps zero to zero,
    which would hide a noise placed before it. A mismatch names the layers at fault, each found by
    trying its group (a coupled group's members lose the structure together) alone. ``noisy_model``
    is untouched.
    """
    trial = _trial_copy(noisy_model)
    _check_groups(trial, example_input)
    groups = [group.members for group in noise_groups(trial) if group.num_structures >= 2]
    noises = {name: noise for members in groups for name, noise in members.items()}
    if not noises:
        return
    gap, bound = _slice_gap(trial, noises, example_input)
    if gap <= bound:
        return
    culprits = [
        noise.source.removesuffix(".inner")
        for members in groups if _slice_gap(trial, members, example_input)[0] > bound
        for noise in members.values()
    ]  # fmt: skip
    raise ValueError(
        f"removing a pruned structure of {culprits or sorted(n.source.removesuffix('.inner') for n in noises.values())} changes the model's output "
        f"(by up to {gap:.3g}) although masking it should not, so the exported model would differ from the evaluated one; "
        "something between that layer and the next one turns a zeroed structure into a non-zero value (a normalisation, "
        "an activation with f(0) != 0, an added constant): put the noise on a layer whose outputs feed the next layer "
        "directly, or list noise points without it"
    )


def _check_groups(noisy_model: nn.Module, example_input: Tensor) -> None:
    """Every layer coupled with a noisy layer must be a noisy layer of the same group: training
    decides a group's channels as one, and separate decisions could never be sliced."""
    groups = {group.name: group for group in noise_groups(noisy_model)}
    plain, _ = fold_noise(noisy_model)
    group_of_source = {noise.source.removesuffix(".inner"): name for name, group in groups.items() for noise in group.members.values()}
    graph = dependency_graph(plain, example_input)
    paths = {id(module): path for path, module in plain.named_modules()}
    for source, group in group_of_source.items():
        if isinstance(plain.get_submodule(source), HeadAttention):
            continue  # a head is no other layer's channel
        partners, problem = coupled_layers(graph, plain.get_submodule(source), lambda m: paths.get(id(m), type(m).__name__))
        if problem is not None:
            raise ValueError(f"the noise of {source!r} cannot be sliced: {problem}; list noise points without it")
        strays = [partner for partner in partners if group_of_source.get(partner) != group]
        if strays:
            raise ValueError(
                f"the output channels of {source!r} are coupled with {strays} (summed by a residual, or tied by a depthwise "
                "convolution), but their noise is not one group, so training would decide their channels apart and "
                "slicing could not remove them; build the noise points with bmrs.models.structures.analyse_structures "
                "(which groups coupled layers) or list every coupled layer as a noise point"
            )


def _trial_copy(noisy_model: nn.Module) -> nn.Module:
    trial = copy.deepcopy(noisy_model).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in trial.modules():
            if isinstance(module, (_NormBase, nn.LayerNorm, nn.GroupNorm)):
                _randomise_norm_(module, generator)
            elif isinstance(module, SLICEABLE_LAYERS) and not bool(module.weight.any()):
                # A zero-initialised layer (torchvision's ViT head) would make every output zero and
                # hide any misplaced noise upstream.
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(module.weight[0].numel()))
        for noise in noise_modules(trial).values():
            noise.make_identity_()
    return trial


def _randomise_norm_(norm: nn.Module, generator: torch.Generator) -> None:
    """Statistics under which a zeroed input channel leaves the norm positive (``beta - gamma *
    mean / std > 0``), so that a misplaced noise shows even behind a ReLU."""
    def magnitude(like: Tensor) -> Tensor:
        return torch.randn(like.shape, generator=generator, dtype=like.dtype).abs()

    if getattr(norm, "running_mean", None) is not None:
        norm.running_mean.copy_(-magnitude(norm.running_mean))
        norm.running_var.copy_(0.5 + magnitude(norm.running_var))
    if getattr(norm, "weight", None) is not None:
        norm.weight.copy_(1.0 + 0.5 * magnitude(norm.weight))
    if getattr(norm, "bias", None) is not None:
        norm.bias.copy_(0.1 + magnitude(norm.bias))


def _slice_gap(trial: nn.Module, noises: Mapping[str, LogNormalNoise], example_input: Tensor) -> tuple[float, float]:
    """Largest |masked - sliced| output with structure 0 of each of ``noises`` pruned, and the
    float32 rounding bound it is judged against."""
    masked = copy.deepcopy(trial)
    by_name = noise_modules(masked)
    for name in noises:
        drop = torch.zeros_like(by_name[name].mask)
        drop[0] = True
        by_name[name].prune_(drop)
    sliced = slice_model(masked, example_input).model.eval()
    with torch.no_grad():
        reference = masked(example_input)
        gap = float((reference - sliced(example_input)).abs().max())
    return gap, 1e-4 * (1.0 + float(reference.abs().max()))


def count_params(model: nn.Module) -> int:
    """Number of parameter elements (buffers such as noise masks are not parameters)."""
    return sum(parameter.numel() for parameter in model.parameters())


def count_flops(model: nn.Module, example_input: Tensor) -> int:
    """Cost of one example in torch-pruning's unit: multiply-accumulates (MACs).

    A Linear/Conv2d costs one MAC per weight use plus one op per bias add; ReLU and pooling cost one
    op per element; other modules count zero. Pruning papers usually call this number "FLOPs"; a
    strict floating-point-operation count is about twice it. Only the first example of
    ``example_input`` is run: torch-pruning counts a Linear's bias once per batch, not per example,
    so a larger batch would make the per-example figure depend on the batch size.
    """
    if not isinstance(example_input, Tensor) or example_input.dim() < 1 or example_input.shape[0] < 1:
        raise ValueError(f"example_input must be a non-empty batch tensor, got {example_input!r:.80}")
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(model, example_input[:1])
    return int(macs)


def parameter_compression(noisy_model: nn.Module, example_input: Tensor) -> float:
    """``1 - params(sliced) / params(dense)``, dense being the folded model before slicing.

    Noise parameters (mu, log sigma) count in neither: they do not exist after folding.
    """
    return slice_model(noisy_model, example_input.to(module_device(noisy_model))).compression


def surviving_widths(model: nn.Module) -> dict[str, int]:
    """Output features of every Linear, output channels of every Conv2d and heads of every
    ``HeadAttention``, by module path."""
    return {path: structure_count(module) for path, module in model.named_modules() if isinstance(module, SLICEABLE_MODULES)}


def structure_count(layer: nn.Module) -> int:
    """How many output structures ``layer`` has now: features, channels or heads."""
    if isinstance(layer, HeadAttention):
        return layer.num_heads
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _check_mask(model: nn.Module, path: str, mask: Tensor) -> nn.Module:
    try:
        layer = model.get_submodule(path)
    except AttributeError as error:
        known = sorted(surviving_widths(model))
        raise ValueError(f"keep names {path!r}, which is not a module of the model; layers are {known}") from error
    if not isinstance(layer, SLICEABLE_MODULES):
        raise TypeError(f"keep names {path!r}, a {type(layer).__name__}; only Linear and Conv2d outputs and attention heads can be sliced")
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(f"keep[{path!r}] must be a bool tensor (True = keep), got {getattr(mask, 'dtype', type(mask))}")
    if tuple(mask.shape) != (structure_count(layer),):
        raise ValueError(
            f"keep[{path!r}] has shape {tuple(mask.shape)} but the layer has {structure_count(layer)} outputs; "
            "pass one bool per output structure"
        )
    if not bool(mask.any()):
        raise ValueError(
            f"keep[{path!r}] removes every output of the layer; keep at least one (slice_model keeps an "
            "all-zero structure for a fully pruned layer)"
        )
    return layer


def _brief(indices: list[int]) -> str:
    return f"channels {indices[:8]}{' ...' if len(indices) > 8 else ''}" if indices else "none"


def _drop_indices(mask: Tensor) -> list[int]:
    return torch.nonzero(~mask.cpu(), as_tuple=False).flatten().tolist()
