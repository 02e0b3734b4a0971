"""Which Linear/Conv2d layers of a model can carry noise, where the noise goes, and why not.

A noise variable scales one output structure of a layer (a Conv2d filter, a Linear feature). Export
removes a pruned structure from the network, so a layer can carry noise only when *removing* the
structure computes exactly what *masking* it (multiplying it by zero) computed. That fails when:

- a BatchNorm follows the layer and the noise sits before it: in evaluation the BatchNorm turns a
  zeroed channel into the constant ``beta - gamma * mean / sqrt(var + eps)``, which slicing would
  delete. So the noise goes on the BatchNorm's output (as the BMRS paper places it for ResNet): a
  zero there stays zero, and ``E[theta]`` folds into the BatchNorm's ``gamma`` and ``beta``;
- an activation with ``f(0) != 0`` (sigmoid, softplus) follows: a pruned structure still feeds
  ``f(0)`` into the next layer;
- a normalisation over features (LayerNorm, GroupNorm) follows: its statistics mix every feature,
  so removing one changes the others;
- the layer is called twice: its outputs at every call would go together;
- the layer is never called as a module (``nn.MultiheadAttention`` uses its ``out_proj`` weights
  directly), so noise wrapped around it would never run. ``bmrs.nn.attention.HeadAttention`` (the
  ViT families use it) computes the same attention with its heads as structures: each head carries
  one noise variable, on the per-head outputs, and its projections carry none of their own.

Layers whose outputs are coupled (summed by a residual connection, tied one to one by a depthwise
convolution) form a group: removing channel ``i`` of one removes it from all, so each member carries
its own noise (placed by the rules above) and the points share a ``group`` name; training decides
and removes a group's channel as one (``bmrs.nn.groups``). If any member cannot carry noise, none
of the group does: masking the others would not zero the channel, so slicing could not remove it.

``analyse_structures`` traces the model once with torch-pruning's dependency graph (autograd-based,
so any ``forward`` works) and gives a verdict per layer. ``export.slicing.check_sliceable`` then
verifies the chosen points numerically: the static rules name the usual causes, the check catches
the rest.
"""
from __future__ import annotations

import copy
import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from bmrs.nn.attention import HeadAttention
from bmrs.nn.insert import SLICEABLE_LAYERS, NoisePoint, out_width, sliceable_layers, structure_dim

FEATURE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)
# Elementwise ops (as autograd names them) with f(0) != 0: a pruned structure would still feed f(0).
NONZERO_AT_ZERO = {"Sigmoid": "sigmoid(0) = 0.5", "Softplus": "softplus(0) = log 2", "Hardsigmoid": "hardsigmoid(0) = 0.5",
                   "Exp": "exp(0) = 1", "Cos": "cos(0) = 1", "LogSigmoid": "logsigmoid(0) = -log 2"}  # fmt: skip


@dataclass(frozen=True)
class LayerVerdict:
    """``point`` where the layer can carry noise, else ``reason`` (and the coupled layers, if any)."""

    path: str
    point: NoisePoint | None
    reason: str | None = None
    coupled: tuple[str, ...] = ()


@dataclass(frozen=True)
class StructureMap:
    """A verdict for every Linear/Conv2d layer and every ``HeadAttention`` (its heads) of a model,
    in the model's module order."""

    verdicts: dict[str, LayerVerdict]

    def carriers(self) -> list[str]:
        """The layers that can carry noise."""
        return [path for path, verdict in self.verdicts.items() if verdict.point is not None]

    def default_points(self) -> list[NoisePoint]:
        """Noise on every layer that can carry it; ``ValueError`` when none can."""
        points = [verdict.point for verdict in self.verdicts.values() if verdict.point is not None]
        if not points:
            reasons = "; ".join(f"{path}: {verdict.reason}" for path, verdict in self.verdicts.items())
            raise ValueError(f"no layer of this model can carry noise ({reasons}); train it without a criterion")
        return points

    def skipped(self) -> dict[str, str]:
        """The layers left without noise by ``default_points`` and why."""
        return {path: verdict.reason for path, verdict in self.verdicts.items() if verdict.point is None}

    def points_for(self, paths: tuple[str, ...] | list[str], setting: str = "noise point") -> list[NoisePoint]:
        """The noise points of the named layers, in module order; one ``ValueError`` listing every
        layer that cannot carry noise (with its coupled group and why) and the layers that can."""
        if isinstance(paths, str) or not isinstance(paths, (list, tuple)):
            raise TypeError(f"{setting}s must be a list of layer paths, got {paths!r}")
        if not paths:
            raise ValueError(f"the {setting} list is empty; name at least one of {self.carriers()}, or train without noise")
        counts = Counter(paths)
        twice = sorted(path for path, count in counts.items() if count > 1)
        if twice:
            raise ValueError(f"{setting}s {twice} are listed twice; list each layer once")
        problems = [f"{path!r} {self._why_not(path)}" for path in paths if self._why_not(path)]
        if problems:
            raise ValueError(
                f"{'; '.join(problems)}. Layers of this model that can carry noise: {self.carriers()}"
            )
        for path in paths:
            members = self.verdicts[path].coupled
            missing = [member for member in members if member not in counts]
            if missing:
                raise ValueError(
                    f"{setting} {path!r} is coupled with {list(members)} (a channel of one is a channel of all), so "
                    f"they carry noise together; add {missing} to the list, or remove {path!r}"
                )
        return [self.verdicts[path].point for path in self.verdicts if path in counts]

    def groups(self) -> dict[str, tuple[str, ...]]:
        """Each coupled group that can carry noise: its name and its member layers, in module order."""
        found: dict[str, tuple[str, ...]] = {}
        for verdict in self.verdicts.values():
            if verdict.point is not None and verdict.point.group is not None:
                found[verdict.point.group] = verdict.coupled
        return found

    def _why_not(self, path: str) -> str | None:
        verdict = self.verdicts.get(path)
        if verdict is None:
            return f"is not a Linear/Conv2d layer of the model (layers: {list(self.verdicts)})"
        if verdict.point is not None:
            return None
        return f"cannot carry noise: {verdict.reason}"


def analyse_structures(model: nn.Module, example_input: Tensor) -> StructureMap:
    """Trace ``model`` (a copy, in evaluation mode) on ``example_input`` and judge every Linear/Conv2d."""
    if not isinstance(example_input, Tensor):
        raise TypeError(f"example_input must be a Tensor batch, got {type(example_input).__name__}")
    probe = copy.deepcopy(model).eval()
    paths = {id(module): name for name, module in probe.named_modules()}
    calls = _call_counts(probe, example_input)
    graph = dependency_graph(probe, example_input)
    layers = sliceable_layers(probe)
    order = {path: index for index, (path, _) in enumerate(layers)}
    attentions = [path for path, module in probe.named_modules() if isinstance(module, HeadAttention)]
    verdicts = {}
    for path, module in probe.named_modules():
        owner = next((a for a in attentions if path.startswith(a + ".")), None)
        if isinstance(module, HeadAttention):
            verdicts[path] = _judge_heads(calls, path, module)
        elif not isinstance(module, SLICEABLE_LAYERS):
            continue
        elif owner is not None:
            verdicts[path] = LayerVerdict(path, None, f"it is a projection of the attention {owner!r}, whose heads carry the noise (one structure per head)")
        else:
            verdicts[path] = LayerVerdict(path, *_judge(graph, paths, calls, path, module, order))
    return StructureMap(_resolve_groups(verdicts))


def _judge_heads(calls: Counter, path: str, attention: HeadAttention) -> LayerVerdict:
    """Noise on the heads of a ``HeadAttention`` (exact: a removed head is its rows of q, k, v and its
    columns of the output projection, which nothing else shares)."""
    if calls[id(attention.v)] != 1:
        return LayerVerdict(path, None, f"it is called {calls[id(attention.v)]} times in forward, so its heads at every call would go together")
    return LayerVerdict(path, NoisePoint(f"{path}.heads", path, attention.num_heads, dim=1))


def _resolve_groups(verdicts: dict[str, LayerVerdict]) -> dict[str, LayerVerdict]:
    """Coupled layers carry noise as one group when every member can carry it alone, else none does."""
    resolved = dict(verdicts)
    for path, verdict in verdicts.items():
        members = verdict.coupled
        if len(members) < 2 or members[0] != path:
            continue  # a group is resolved once, at its first member
        unknown = [member for member in members if member not in verdicts]
        blocked = [member for member in members if member in verdicts and verdicts[member].point is None]
        if not unknown and not blocked:
            for member in members:
                point = dataclasses.replace(verdicts[member].point, group=members[0])
                resolved[member] = dataclasses.replace(verdicts[member], point=point)
            continue
        why = (f"{blocked[0]!r} cannot carry noise ({verdicts[blocked[0]].reason})" if blocked
               else f"{unknown[0]!r} is not a Linear/Conv2d module of the model")  # fmt: skip
        for member in (m for m in members if m in verdicts):
            resolved[member] = LayerVerdict(
                member, None,
                f"its output channels are coupled with {list(members)} (a channel of one is a channel of all) and {why}, "
                "so masking the others would not zero the channel",
                members,
            )  # fmt: skip
    return resolved


def dependency_graph(model: nn.Module, example_input: Tensor):
    """torch-pruning's ``DependencyGraph`` of ``model``. It is traced through autograd, so every
    parameter of ``model`` is set to require grad (callers that care restore the flags)."""
    # Imported here, not at module level: importing bmrs.models (e.g. for the families alone, as
    # benchmarks.latency_demo does on a bare GPU machine) must not need torch-pruning.
    import torch_pruning as tp

    for parameter in model.parameters():
        parameter.requires_grad_(True)
    with torch.enable_grad():
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)


def _call_counts(model: nn.Module, example_input: Tensor) -> Counter:
    counts: Counter = Counter()
    hooks = [m.register_forward_hook(lambda m, i, o: counts.update([id(m)])) for _, m in sliceable_layers(model)]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def _judge(graph, paths: dict[int, str], calls: Counter, path: str, layer: nn.Module, order: dict[str, int]):
    """``(point, reason, coupled)`` for one layer judged alone; ``coupled`` lists its group (itself
    included, in module order) when its output channels are tied to other layers'."""
    name = lambda module: paths.get(id(module), type(module).__name__)  # noqa: E731
    count = calls[id(layer)]
    if count == 0 or layer not in graph.module2node:
        return None, ("it is never called as a module in forward (e.g. nn.MultiheadAttention's out_proj, whose "
                      "weights the attention uses directly), so noise around it would never run"), ()  # fmt: skip
    if count > 1:
        return None, f"it is called {count} times in forward (a shared layer), so its outputs at every call would go together", ()
    node = graph.module2node[layer]
    if _feeds_output(node):
        return None, "its outputs are the model's outputs (the classes); pruning it would remove classes", ()
    coupled, problem = coupled_layers(graph, layer, name)
    members = tuple(sorted({path, *coupled}, key=lambda member: order.get(member, len(order))))
    if problem is not None:
        return None, problem, members
    if len(members) == 1 and _is_depthwise(layer):
        return None, ("it is a depthwise convolution whose channels are tied one to one to its input's, and no "
                      "Linear/Conv2d produces that input, so its channels cannot be removed"), ()  # fmt: skip
    coupled_paths = members if len(members) > 1 else ()
    after_node, after_path = node, path
    successors = [n for n in node.outputs]
    if len(successors) == 1 and isinstance(successors[0].module, nn.modules.batchnorm._BatchNorm):
        norm = successors[0].module
        if norm.num_features == out_width(layer):
            if not norm.affine:
                return None, f"it feeds the BatchNorm {name(norm)!r} with affine=False, which has no gamma/beta to fold E[theta] into", coupled_paths
            after_node, after_path = successors[0], name(norm)
    blocker = _inexact_successor(after_node)
    if blocker is not None:
        return None, blocker, coupled_paths
    return NoisePoint(after_path, path, out_width(layer), structure_dim(layer)), None, coupled_paths


def coupled_layers(graph, layer: nn.Module, name: Callable[[nn.Module], str]) -> tuple[list[str], str | None]:
    """The other Linear/Conv2d layers (named by ``name``) whose output channels go with ``layer``'s
    in ``graph``, and why they cannot form a group (``None`` when they can): channel ``i`` must be
    channel ``i`` of every member."""
    import torch_pruning as tp  # lazily, as in dependency_graph

    prune_fn = tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels
    width = out_width(layer)
    coupled: set[str] = set()
    for channel in sorted({0, width - 1}):
        for dep, indices in graph.get_pruning_group(layer, prune_fn, [channel]):
            other = dep.target.module
            if other is layer or not isinstance(other, SLICEABLE_LAYERS) or not graph.is_out_channel_pruning_fn(dep.handler):
                continue
            coupled.add(name(other))
            if list(indices) != [channel] or out_width(other) != width:
                return sorted(coupled), (
                    f"its output channels are coupled with {name(other)!r} through a reshuffle (a concatenation, split "
                    "or view), not one to one, so they cannot be decided as one group"
                )
    return sorted(coupled), None


def _is_depthwise(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels


def _feeds_output(node) -> bool:
    """Whether the layer's outputs reach the model's output without passing another Linear/Conv2d."""
    stack, seen = [node], set()
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if not current.outputs:
            return True
        stack.extend(n for n in current.outputs if not isinstance(n.module, SLICEABLE_LAYERS))
    return False


def _inexact_successor(node) -> str | None:
    """Why a zeroed structure at ``node``'s output would not stay zero up to the next Linear/Conv2d."""
    stack, seen = list(node.outputs), set()
    while stack:
        current = stack.pop()
        if id(current) in seen or isinstance(current.module, SLICEABLE_LAYERS):
            continue
        seen.add(id(current))
        module = current.module
        if isinstance(module, FEATURE_NORMS):
            return (f"its outputs are normalised together by the {type(module).__name__} that follows, whose statistics "
                    "mix every feature, so removing one feature changes the others")  # fmt: skip
        op = getattr(module, "_grad_fn", "") or ""
        for fn, value in NONZERO_AT_ZERO.items():
            if op.startswith(fn + "Backward"):
                return f"an activation with f(0) != 0 follows it ({value}), so a pruned structure would still feed a constant onward"
        stack.extend(current.outputs)
    return None
