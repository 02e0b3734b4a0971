"""``flows.yaml`` -> one frozen, typed ``FlowConfig`` per named flow.

Sections reuse the libraries' own config types where they exist (``TrainConfig``, ``OnnxConfig``,
``LatencyConfig``), so a setting is declared once. Every field, at any depth, is reachable from the
command line as ``--set section.field=value`` (values are YAML: ``--set train.epochs=3``,
``--set latency.batch_sizes=[1,64]``). Every bad input raises ``ConfigError`` naming the key and the fix,
before anything is written: criterion settings are checked by building the criterion, the output
folder by looking at the file system, and a flow's name (a folder under ``runs_dir``) must be one
plain path component.
"""
from __future__ import annotations

import dataclasses
import enum
import os
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from benchmarks.energy_pair import EnergyRunConfig
from benchmarks.latency import LatencyConfig
from bmrs.criteria import CRITERIA, Criterion, check_criterion, criterion_from, criterion_name, ranking_criteria, settings_of
from bmrs.data import DATASETS, DEFAULT_ROOTS, DataConfig, root_hint
from bmrs.models import MODELS, ModelConfig, NoiseInit
from bmrs.train.post_training import PostTrainingConfig
from bmrs.train import TrainConfig
from bmrs.models.user import is_user_model, resolve_factory
from bmrs.sparsify import SparsifyConfig, SparsifyOptimizer
from export.onnx_export import OnnxConfig
from pipeline.stages.checks import ChecksConfig
from pipeline.config.flows_file import ConfigError, check_flow_name, copy_tree, parse_overrides, read_flows, set_dotted
from pipeline.config.schedule import ScheduleConfig

# ConfigError, parse_overrides and read_flows live in pipeline.config.flows_file; they are this module's API too.
__all__ = ["ConfigError", "FlowConfig", "flow_config_from_dict", "load_flow", "parse_overrides", "read_flows"]

# The method of a flow whose train.criterion is null: the paper's "None", a dense model (no noise, no pruning).
DENSE_METHOD = "none"
# BMR on individual weights (the ``sparsify`` section): the method's name alone, or after a criterion's
# name with "+" when structured pruning runs first (``bmrs_u+bmr_weights``).
WEIGHT_METHOD = "bmr_weights"


NoiseConfig = NoiseInit  # the flow's ``noise`` section is the library's noise initialisation


@dataclass(frozen=True)
class BaselineConfig:
    """The paper's "None" model (no noise, no pruning) trained on the same budget, as the dense reference."""

    enabled: bool = True


def _every_criterion() -> tuple[Criterion, ...]:
    return tuple(cls() for cls in ranking_criteria().values())


@dataclass(frozen=True)
class PostTrainingSection:
    """Post-training pruning curves (paper section 5): one noisy model trained without pruning, then
    pruned progressively by each criterion's ranking. ``criteria`` lists criteria as ``train.criterion``
    takes them (``[bmrs_n, {name: bmrs_u, p1: 4}, l2]``); default: every registered one with a
    ranking of its own (``ranking_criteria``: not snr_ratio, whose curve is snr's) at its defaults. ``epochs`` None: ``train.epochs``; like it, ``epochs`` counts in ``train.schedule_unit``
    (it becomes that training's ``epochs``); the learning rate, batch size and seed are the ``train``
    section's."""

    enabled: bool = False
    criteria: tuple[Criterion, ...] = field(default_factory=_every_criterion)
    steps: int = 10
    finetune_epochs: int = 1
    epochs: int | None = None

    def __post_init__(self) -> None:
        if not self.criteria:
            raise ValueError(f"criteria is empty; list some of {sorted(CRITERIA)} (or leave it out for all of them)")
        object.__setattr__(self, "criteria", tuple(criterion_from(c) for c in self.criteria))
        names = [criterion_name(c) for c in self.criteria]
        if len(set(names)) != len(names):
            raise ValueError(f"criteria {names} names a criterion twice; list each once")
        if self.epochs is not None and (isinstance(self.epochs, bool) or self.epochs < 1):
            raise ValueError(f"epochs must be >= 1, or null for train.epochs; got {self.epochs!r}")
        for criterion in self.criteria:
            self.for_criterion(criterion, TrainConfig())  # PostTrainingConfig checks steps and epochs

    def for_criterion(self, criterion: Criterion, train: TrainConfig) -> PostTrainingConfig:
        return PostTrainingConfig(
            criterion=criterion,
            steps=self.steps,
            finetune_epochs=self.finetune_epochs,
            lr=train.lr,
            batch_size=train.batch_size,
            seed=train.seed,
        )

    def train_config(self, train: TrainConfig) -> TrainConfig:
        """Training of the model the curves start from: the flow's, without pruning or fine-tuning."""
        epochs = self.epochs if self.epochs is not None else train.epochs
        return replace(train, criterion=None, epochs=epochs, finetune_epochs=0, prune_start=1)


@dataclass(frozen=True)
class SparsifySection:
    """BMR on individual weights (Markovic et al. 2023, ``bmrs.sparsify``) after the method's training:
    on the dense model when ``train.criterion`` is null (the ``bmr_weights`` method), else on the
    model the structured method sliced (combined). ``enabled`` turns the stage on; the other fields
    are ``SparsifyConfig``'s settings with its defaults, bar three the flow decides: ``seed``
    (``train.seed``), ``progress`` (``train.progress``) and ``device`` (``train.device``)."""

    enabled: bool = False
    epochs: int = SparsifyConfig.epochs
    finetune_epochs: int = SparsifyConfig.finetune_epochs
    max_rounds: int = SparsifyConfig.max_rounds
    spike_ratio: float = SparsifyConfig.spike_ratio
    prior_std: float = SparsifyConfig.prior_std
    output_prior_std: float = SparsifyConfig.output_prior_std
    prune_output_layer: bool = SparsifyConfig.prune_output_layer
    init_std: float = SparsifyConfig.init_std
    lr: float = SparsifyConfig.lr
    batch_size: int = SparsifyConfig.batch_size
    optimizer: SparsifyOptimizer = SparsifyConfig.optimizer
    kl_scale: float = SparsifyConfig.kl_scale
    eval_batch_size: int = SparsifyConfig.eval_batch_size

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise TypeError(f"sparsify.enabled must be true or false, got {self.enabled!r}")
        self.library_config(seed=0, progress=False, device="cpu")  # SparsifyConfig checks every setting, naming it

    def library_config(self, *, seed: int, progress: bool, device: str) -> SparsifyConfig:
        settings = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "enabled"}
        return SparsifyConfig(**settings, seed=seed, progress=progress, device=device)


@dataclass(frozen=True)
class OutputConfig:
    runs_dir: str = "runs"


@dataclass(frozen=True)
class FlowConfig:
    # Not a setting: the flow's key in flows.yaml, chosen with --flow.
    name: str = field(metadata={"setting": False})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    export: OnnxConfig = field(default_factory=OnnxConfig)
    latency: LatencyConfig = field(default_factory=LatencyConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    post_training: PostTrainingSection = field(default_factory=PostTrainingSection)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    energy: EnergyRunConfig = field(default_factory=EnergyRunConfig)
    sparsify: SparsifySection = field(default_factory=SparsifySection)
    # When `bmrs serve` runs the flow (pipeline.config.schedule); `bmrs run` ignores it.
    schedule: ScheduleConfig | None = None

    def __post_init__(self) -> None:
        check_flow_name(self.name)

    @property
    def method(self) -> str:
        """``none``, the criterion's name, ``bmr_weights`` (weights of the dense model), or
        ``<criterion>+bmr_weights`` (structured pruning, then the surviving weights)."""
        structured = None if self.train.criterion is None else criterion_name(self.train.criterion)
        if not self.sparsify.enabled:
            return DENSE_METHOD if structured is None else structured
        return WEIGHT_METHOD if structured is None else f"{structured}+{WEIGHT_METHOD}"

    def sparsify_config(self) -> SparsifyConfig:
        """The library's settings of the ``sparsify`` stage: the section's, seeded by ``train.seed``."""
        return self.sparsify.library_config(seed=self.train.seed, progress=self.train.progress, device=self.train.device)

    def to_dict(self) -> dict[str, Any]:
        return _plain(self)


def _plain(value: Any) -> Any:
    if type(value) in CRITERIA.values():
        return {"name": criterion_name(value), **_plain(settings_of(value))}
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(value, option, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0])
    if hint is Criterion:
        try:
            return criterion_from(value)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{path}: {error}") from None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        for member in hint:
            if value == member.value or (isinstance(value, str) and value.lower() == member.name.lower()):
                return member
        raise ConfigError(f"{path}: {value!r} is not one of {[m.value for m in hint]}")
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; users write it that way all the time.
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a finite number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        (item_hint, *_rest) = typing.get_args(hint)
        return tuple(_convert(v, item_hint, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict or hint is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _build(cls: type, mapping: Any, path: str) -> Any:
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"{path}: expected a mapping of settings, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(mapping) - set(fields), key=str)
    if unknown:
        settings = sorted(name for name, f in fields.items() if f.metadata.get("setting", True))
        raise ConfigError(f"{path}.{unknown[0]}: unknown setting; valid settings of {path} are {settings}")
    values = {name: _convert(value, hints[name], f"{path}.{name}") for name, value in mapping.items()}
    try:
        return cls(**values)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path}: {error}") from error


def load_flow(path: str | Path, name: str, overrides: list[str] | None = None) -> FlowConfig:
    flows = read_flows(path)
    if name not in flows:
        raise ConfigError(f"unknown flow {name!r} in {path}; choose one of {sorted(flows)}")
    tree = copy_tree(flows[name] or {})
    if not isinstance(tree, dict):
        raise ConfigError(f"flow {name!r} in {path}: expected a mapping of sections, got {tree!r}")
    for key, value in parse_overrides(overrides or []):
        set_dotted(tree, key, value)
    if "name" in tree:
        raise ConfigError(
            f"{name}.name is not a setting: a flow's name is its key in {path}, chosen with --flow; remove "
            "name (from --set or the flow), or copy the flow under a new key to run it under another name"
        )
    for section, key in (("train", "criterion_settings"), ("post_training", "criterion_settings")):
        if isinstance(tree.get(section), dict) and key in tree[section]:
            raise ConfigError(
                f"{name}.{section}.{key}: a criterion now carries its own settings; write them into the criterion, "
                f"e.g. {'train.criterion' if section == 'train' else 'post_training.criteria'}: "
                f"{'{name: bmrs_u, p1: 4}' if section == 'train' else '[bmrs_n, {name: bmrs_u, p1: 4}]'}, and remove {key}"
            )
    tree["name"] = name
    config = _build(FlowConfig, tree, name)
    _validate_names(config)
    _check_writable_folder(config.output.runs_dir, name, "output.runs_dir")
    return config


def flow_config_from_dict(tree: Mapping[str, Any]) -> FlowConfig:
    """The ``FlowConfig`` whose ``to_dict()`` is ``tree`` (the inverse of ``FlowConfig.to_dict``)."""
    if not isinstance(tree, Mapping) or not isinstance(tree.get("name"), str):
        raise ConfigError(f"expected a mapping of sections with a string 'name' (FlowConfig.to_dict()), got {tree!r:.80}")
    config = _build(FlowConfig, _typed_criteria(tree), tree["name"])
    _validate_names(config)
    return config


def _typed_criteria(tree: Mapping[str, Any]) -> dict[str, Any]:
    """``tree`` with criteria as one value each: run directories written while a criterion was a
    name beside a separate ``criterion_settings`` mapping still resume."""
    tree = copy_tree(dict(tree))
    train = tree.get("train")
    if isinstance(train, dict) and "criterion_settings" in train:
        settings = train.pop("criterion_settings") or {}
        if isinstance(train.get("criterion"), str):
            train["criterion"] = {"name": train["criterion"], **settings}
    section = tree.get("post_training")
    if isinstance(section, dict) and "criterion_settings" in section:
        settings = section.pop("criterion_settings") or {}
        names = section.get("criteria") or []
        section["criteria"] = [{"name": n, **settings.get(n, {})} if isinstance(n, str) else n for n in names]
    return tree


def _check_writable_folder(folder: str, flow: str, setting: str) -> None:
    """Refuse ``folder`` unless it is, or can be created as, a folder this process can write in.
    Nothing is created: the first existing path on the way up is looked at."""
    path = Path(folder)
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    fix = f"choose a folder you can write in (--set {setting}=PATH)"
    if not existing.is_dir():
        below = "" if existing == path else f", so {str(path)!r} cannot be created below it"
        raise ConfigError(f"{flow}.{setting}: {str(existing)!r} is a file, not a directory{below}; {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flow}.{setting}: cannot create or write in {str(existing)!r} (no permission); {fix}")


def _validate_names(config: FlowConfig) -> None:
    if config.data.dataset not in DATASETS:
        raise ConfigError(f"{config.name}.data.dataset: unknown dataset {config.data.dataset!r}; choose one of {sorted(DATASETS)}")
    if config.data.root is None and DEFAULT_ROOTS[config.data.dataset] is None:
        raise ConfigError(
            f"{config.name}.data.root: {config.data.dataset} has no default location; set data.root "
            f"(--set data.root=PATH) to {root_hint(config.data.dataset)}"
        )
    if is_user_model(config.model.name):
        try:
            resolve_factory(config.model.name)  # import now: a typo fails before any data is loaded
        except (ValueError, TypeError) as error:
            raise ConfigError(f"{config.name}.model.name: {error}") from error
    elif config.model.name not in MODELS:
        raise ConfigError(
            f"{config.name}.model.name: unknown model {config.model.name!r}; choose one of {sorted(MODELS)} "
            "or name your own as package.module:factory"
        )
    criteria = [("train.criterion", config.train.criterion)]
    if config.post_training.enabled:  # the default list holds every criterion; it matters only when it runs
        criteria += [(f"post_training.criteria[{i}]", c) for i, c in enumerate(config.post_training.criteria)]
    for where, criterion in criteria:
        if criterion is not None:
            _check_criterion(config, criterion, where)


def _check_criterion(config: FlowConfig, criterion: Criterion, where: str) -> None:
    """Check the criterion's settings against the noise prior as training will, so that a bad
    setting fails now, not at the first pruning."""
    try:
        check_criterion(criterion, log_a=config.noise.log_a, log_b=config.noise.log_b)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{config.name}.{where}: {error}") from None
