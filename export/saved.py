"""Save a sliced model so that it reloads without the noisy model, the training code path, or pickle.

A pair of files: ``sliced.pt``, the sliced model's state dict (tensors only, read back with
``torch.load(weights_only=True)``), and ``sliced.json``, what rebuilds the architecture those
tensors fit: the ``ModelConfig``, the data's input shape and class count, and for every sliced
layer the output indices that survived. ``load_sliced`` builds the dense family with
``bmrs.models.build_model`` (no noise, no ``ModelConfig.weights``: the saved tensors replace every
parameter), slices it with ``export.slicing.slice_`` by those indices and loads the tensors
strictly. Nothing of the noisy model is needed, and no file content is ever unpickled into objects.

A user model (``package.module:factory``) is recorded by name: its module must be importable
where the pair is loaded, as it was where the model was built.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from bmrs.artifacts import write_json
from bmrs.models.config import ModelConfig
from bmrs.models.network import state_dict_mismatch
from bmrs.models.registry import build_model
from bmrs.nn.insert import Noised
from bmrs.nn.noise import LogNormalNoise
from export.slicing import SLICEABLE_MODULES, slice_, structure_count, surviving_widths

FORMAT = "bmrs-sliced-model"
FORMAT_VERSION = 1
DESCRIPTION_FILE = "sliced.json"
STATE_DICT_FILE = "sliced.pt"
SAVE_HINT = "save the model again with export.saved.save_sliced"
# Gap allowed between the sliced model and its reloaded copy on one batch: the same weights through
# the same modules give identical floats, so anything above rounding means another function.
RELOAD_TOLERANCE = 1e-6


class SavedFiles(NamedTuple):
    description: Path  # sliced.json: the architecture
    state_dict: Path  # sliced.pt: the tensors


def save_sliced(
    directory_or_path: str | os.PathLike,
    sliced_model: nn.Module,
    *,
    model_config: ModelConfig,
    input_shape: tuple[int, ...],
    num_classes: int,
    keep: Mapping[str, Tensor],
    verify: bool = True,
) -> SavedFiles:
    """Write ``sliced.json`` and ``sliced.pt`` for ``sliced_model``, each atomically.

    ``directory_or_path`` is a folder (created if needed; the files get their default names) or a
    ``.json``/``.pt`` path naming the pair (``name.json`` + ``name.pt``). ``model_config``,
    ``input_shape`` (one example's) and ``num_classes`` are those the dense model was built with;
    ``keep`` the masks it was sliced by (``SliceResult.keep``, or those given to ``slice_``).
    ``verify`` rebuilds the model from the description before anything is written and refuses to
    save a pair that would not reload to the same function (it costs one build and one slice).
    """
    if not isinstance(sliced_model, nn.Module):
        raise TypeError(f"save_sliced takes the sliced nn.Module, got {type(sliced_model).__name__}")
    if not isinstance(model_config, ModelConfig):
        raise TypeError(f"model_config must be the ModelConfig the model was built from, got {model_config!r:.80}")
    noisy = [path for path, module in sliced_model.named_modules() if isinstance(module, (LogNormalNoise, Noised))]
    if noisy:
        raise ValueError(
            f"the model still has noise modules {noisy[:3]}; save the sliced plain model "
            "(export.slicing.slice_model(noisy_model, x).model)"
        )
    input_shape = _checked_shape(input_shape, "input_shape")
    num_classes = _checked_classes(num_classes, "num_classes")
    sliced_layers = _sliced_layers(sliced_model, keep)
    state = {}
    for key, value in sliced_model.state_dict().items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"state dict entry {key!r} is a {type(value).__name__}, not a tensor; a module's extra state "
                "cannot be saved without pickling it"
            )
        state[key] = value.detach().cpu().clone()  # a compact copy: torch.save would store a view's whole storage

    files = _files(directory_or_path)
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": _config_fields(model_config),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "sliced_layers": sliced_layers,
        "widths": surviving_widths(sliced_model),
        "state_dict": files.state_dict.name,
        "saved_with": {"torch": torch.__version__},
    }
    if verify:
        _verify(sliced_model, state, description)

    files.description.parent.mkdir(parents=True, exist_ok=True)
    # Tensors first: the description is the entry point, so it only appears once its tensors are complete.
    partial = files.state_dict.with_name(f".{files.state_dict.name}.partial")
    try:
        torch.save(state, partial)
        os.replace(partial, files.state_dict)
    finally:
        partial.unlink(missing_ok=True)
    write_json(files.description, description)
    return files


def load_sliced(path: str | os.PathLike) -> nn.Module:
    """The sliced model saved by ``save_sliced`` at ``path`` (its folder, ``.json`` or ``.pt``), in
    evaluation mode on the CPU.

    Raises ``ValueError`` naming the file and the fix for a missing file, a description that is not
    valid JSON or of an unknown format version, an architecture that no longer rebuilds to the
    recorded widths, and tensors whose keys or shapes do not fit it.
    """
    files = _files(path)
    source = files.description
    if not source.is_file():
        raise ValueError(
            f"sliced model description {str(source)!r}: no such file; give the folder holding {DESCRIPTION_FILE} "
            f"and {STATE_DICT_FILE}, or the .json path save_sliced wrote"
        )
    description = _read_description(source)
    state_path = source.with_name(description["state_dict"])
    if not state_path.is_file():
        raise ValueError(
            f"sliced model state dict {str(state_path)!r} (named by {str(source)!r}): no such file; the two files "
            f"belong together: copy both, or {SAVE_HINT}"
        )
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many kinds for a file that is not a tensors-only state dict
        reason = _unreadable(error)
        raise ValueError(
            f"sliced model state dict {str(state_path)!r} is not a readable tensors-only state dict ({reason}); {SAVE_HINT}"
        ) from error
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise ValueError(f"sliced model state dict {str(state_path)!r} is not a mapping of names to tensors; {SAVE_HINT}")

    model = _rebuild(description, f"sliced model description {str(source)!r}")
    floating = {value.dtype for value in state.values() if value.is_floating_point()}
    if len(floating) == 1:  # a float64 model reloads as float64, not silently rounded to the default dtype
        model.to(floating.pop())
    problems = state_dict_mismatch(model, state)
    if problems:
        raise ValueError(
            f"sliced model state dict {str(state_path)!r} does not fit the architecture {str(source)!r} describes: "
            f"{problems}; the two files belong together: {SAVE_HINT}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval()


def _unreadable(error: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words: torch's own message runs to
    a paragraph suggesting ``weights_only=False``, which would run whatever code the file holds."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return f"it pickles a {refused.group(1)}: an object, not tensors only"
    if isinstance(error, EOFError):
        return "the file is empty or cut short"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0][:160]}" if lines else type(error).__name__


def _files(directory_or_path: str | os.PathLike) -> SavedFiles:
    if not isinstance(directory_or_path, (str, os.PathLike)):
        raise TypeError(f"give a folder or a .json/.pt path, got {type(directory_or_path).__name__}")
    path = Path(directory_or_path)
    if path.suffix in (".json", ".pt"):
        return SavedFiles(path.with_suffix(".json"), path.with_suffix(".pt"))
    return SavedFiles(path / DESCRIPTION_FILE, path / STATE_DICT_FILE)


def _checked_shape(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not value or not all(
        isinstance(side, int) and not isinstance(side, bool) and side >= 1 for side in value
    ):
        raise ValueError(f"{what} must be one example's shape, positive integers such as (3, 32, 32), got {value!r}")
    return tuple(value)


def _checked_classes(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{what} must be a positive integer (the dataset's class count), got {value!r}")
    return value


def _sliced_layers(sliced_model: nn.Module, keep: Mapping[str, Tensor]) -> dict[str, dict[str, Any]]:
    """``{path: {"dense_width": n, "kept": [indices]}}``, each mask checked against the sliced layer."""
    if not isinstance(keep, Mapping):
        raise TypeError(f"keep must map layer paths to bool masks, got {type(keep).__name__}")
    hint = "pass the masks the model was sliced by (slice_model(...).keep)"
    layers = {}
    for path, mask in keep.items():
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.dim() != 1:
            raise TypeError(f"keep[{path!r}] must be a 1-d bool tensor (True = kept), got {getattr(mask, 'dtype', type(mask))}")
        try:
            layer = sliced_model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"keep names {path!r}, which is not a module of the sliced model; {hint}") from error
        if not isinstance(layer, SLICEABLE_MODULES):
            raise ValueError(f"keep names {path!r}, a {type(layer).__name__}; only Linear and Conv2d outputs and attention heads are sliced; {hint}")
        kept = torch.nonzero(mask.cpu()).flatten().tolist()
        width = structure_count(layer)
        if len(kept) != width:
            raise ValueError(f"keep[{path!r}] keeps {len(kept)} outputs but the sliced layer has {width}; {hint}")
        layers[path] = {"dense_width": int(mask.numel()), "kept": kept}
    return layers


def _config_fields(config: ModelConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    return {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()}


def _read_description(source: Path) -> dict[str, Any]:
    where = f"sliced model description {str(source)!r}"
    try:
        description = json.loads(source.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{where} is not valid JSON ({error}); {SAVE_HINT}") from error
    return _parse_description(description, where)


def _parse_description(description: object, where: str) -> dict[str, Any]:
    """``description`` (as read from JSON), every field checked, the config as a ``ModelConfig``; a
    config field it lacks takes its default."""
    def bad(problem: str) -> ValueError:
        return ValueError(f"{where} {problem}; {SAVE_HINT}")

    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise bad(f"is not a {FORMAT} description (no \"format\": \"{FORMAT}\")")
    version = description.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{where} has format version {version!r}, but this code reads version "
            f"{FORMAT_VERSION}; load it with the version that saved it, or {SAVE_HINT}"
        )
    missing = [key for key in ("model_config", "input_shape", "num_classes", "sliced_layers", "widths", "state_dict") if key not in description]
    if missing:
        raise bad(f"lacks {missing}")
    try:
        description["input_shape"] = _checked_shape(description["input_shape"], "input_shape")
        description["num_classes"] = _checked_classes(description["num_classes"], "num_classes")
    except ValueError as error:
        raise bad(f"has a bad field: {error}") from error
    state_name = description["state_dict"]
    if not isinstance(state_name, str) or not state_name or Path(state_name).name != state_name:
        raise bad(f"names the state dict {state_name!r}; it must be a file name next to the description")
    config = description["model_config"]
    known = {field.name for field in dataclasses.fields(ModelConfig)}
    if not isinstance(config, dict):
        raise bad(f"has a model_config that is not an object of ModelConfig fields: {config!r:.80}")
    if not set(config) <= known:
        raise bad(f"has a model_config with unknown fields {sorted(set(config) - known)}")
    try:
        description["model_config"] = ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    except (TypeError, ValueError) as error:
        raise bad(f"has a model_config that is no longer valid ({error})") from error
    layers, widths = description["sliced_layers"], description["widths"]
    if not isinstance(widths, dict) or not all(isinstance(w, int) and not isinstance(w, bool) for w in widths.values()):
        raise bad("has widths that are not a mapping of layer paths to integers")
    if not isinstance(layers, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("dense_width"), int) and isinstance(entry.get("kept"), list)
        and all(isinstance(i, int) and not isinstance(i, bool) for i in entry["kept"])
        for entry in layers.values()
    ):  # fmt: skip
        raise bad("has sliced_layers that are not {path: {\"dense_width\": n, \"kept\": [indices]}}")
    return description


def _rebuild(description: Mapping[str, Any], where: str) -> nn.Module:
    """The dense model the description names (without ``ModelConfig.weights``: the saved tensors
    replace them), sliced by its kept indices; its widths checked against the recorded ones."""
    config: ModelConfig = description["model_config"]
    input_shape = description["input_shape"]
    # Random initialisation is overwritten by the saved tensors; forking keeps the caller's RNG stream as it was.
    with torch.random.fork_rng(devices=[]):
        try:
            dense = build_model(config.name, input_shape, description["num_classes"], **config.options())
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: rebuilding model {config.name!r} failed: {error}") from error
    masks = {}
    for path, entry in description["sliced_layers"].items():
        try:
            layer = dense.get_submodule(path)
        except AttributeError:
            layer = None
        if not isinstance(layer, SLICEABLE_MODULES):
            raise ValueError(
                f"{where}: layer {path!r} is no Linear/Conv2d of the rebuilt {config.name!r}; the model's code "
                f"changed since it was saved: load it with that code, or {SAVE_HINT}"
            )
        width = structure_count(layer)
        kept = entry["kept"]
        if width != entry["dense_width"] or not kept or any(not 0 <= index < width for index in kept):
            raise ValueError(
                f"{where}: layer {path!r} has {width} outputs when rebuilt but was saved with {entry['dense_width']} "
                f"(kept indices {kept[:8]}); the model's code or settings changed: load it with those, or {SAVE_HINT}"
            )
        mask = torch.zeros(width, dtype=torch.bool)
        mask[kept] = True
        masks[path] = mask
    try:
        sliced = slice_(dense, masks, torch.zeros(2, *input_shape))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: slicing the rebuilt {config.name!r} by its kept indices failed: {error}") from error
    recorded, rebuilt = description["widths"], surviving_widths(sliced)
    if rebuilt != recorded:
        differ = sorted(path for path in set(recorded) | set(rebuilt) if recorded.get(path) != rebuilt.get(path))
        shown = ", ".join(f"{path} {recorded.get(path)} saved vs {rebuilt.get(path)} rebuilt" for path in differ[:3])
        raise ValueError(f"{where}: the rebuilt widths differ from the saved ones ({len(differ)} layers: {shown}); {SAVE_HINT}")
    return sliced


def _verify(sliced_model: nn.Module, state: Mapping[str, Tensor], description: Mapping[str, Any]) -> None:
    """Refuse to write a pair that would not reload to ``sliced_model``'s function."""
    rebuild_hint = (
        "pass the model_config, input_shape, num_classes and keep masks the model was built and sliced with"
    )
    try:
        # Through JSON and back, so that the check sees exactly what load_sliced will read.
        parsed = _parse_description(json.loads(json.dumps(description)), "the description to save")
        model = _rebuild(parsed, "the description to save")
    except ValueError as error:
        raise ValueError(f"the sliced model cannot be rebuilt from what would be saved: {error}; {rebuild_hint}") from error
    floating = {value.dtype for value in state.values() if value.is_floating_point()}
    if len(floating) == 1:
        model.to(floating.pop())
    problems = state_dict_mismatch(model, state)
    if problems:
        raise ValueError(f"the sliced model does not fit the architecture its description rebuilds: {problems}; {rebuild_hint}")
    model.load_state_dict(state, strict=True)
    parameter = next(sliced_model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None and parameter.is_floating_point() else torch.get_default_dtype()
    example = torch.randn(2, *parsed["input_shape"], generator=torch.Generator().manual_seed(0), dtype=dtype)
    was_training = sliced_model.training
    sliced_model.eval()
    model.eval()
    try:
        with torch.no_grad():
            expected = sliced_model(example.to(device))
            reloaded = model(example)
    finally:
        sliced_model.train(was_training)
    gap = float((expected.detach().cpu() - reloaded).abs().max())
    if not gap <= RELOAD_TOLERANCE * (1.0 + float(expected.abs().max())):
        raise ValueError(
            f"the reloaded model would compute another function than the sliced one (outputs differ by up to {gap:.3g}): "
            f"its forward depends on something the state dict does not hold (a non-persistent buffer, code "
            f"changed after building); {rebuild_hint}"
        )
