"""``ModelConfig``: which model to build, its family's shape settings and where its noise goes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bmrs.models.families import lenet5_widths, mlp_settings


@dataclass(frozen=True)
class ModelConfig:
    """``name``: a registered family or ``package.module:factory``; ``preset``/``hidden_*`` shape the mlp.

    ``noise_points`` replaces the family's noise rule by an explicit list of Linear/Conv2d paths;
    the paths are checked against the model when it is built (the data's shape is needed for that).
    ``noise_on_first_layer`` false leaves the first of those points (the rule's or the list's)
    without noise, whatever the architecture (unless it is the only one), so a recipe can spare the
    input layer without naming it.
    """

    name: str = "lenet5"
    preset: str | None = None  # mlp only: the paper's per-dataset MLP (mnist, fashion_mnist, cifar10)
    hidden_width: int | None = None  # mlp only; None: the preset's, else 150
    hidden_layers: int | None = None  # mlp only; None: the preset's, else 1
    widths: tuple[int, ...] | None = None  # lenet5 only: conv1, conv2, fc1, fc2; None: the paper's 6, 16, 120, 84
    # None: the family's rule (user models: every hidden layer). Integers are accepted because YAML
    # reads nn.Sequential's child names (`[0, 2]`) as numbers; they are stored as the paths they name.
    noise_points: tuple[str | int, ...] | None = None
    # False: the first noise point in module order (the input layer in a feed-forward net) gets no
    # noise, so it is never pruned. It holds few parameters, and every filter removed there is
    # information no later layer can recover: on short budgets pruning it costs the most accuracy.
    # A model with a single noise point (a one-hidden-layer MLP) keeps it: nothing else could be pruned.
    noise_on_first_layer: bool = True

    def __post_init__(self) -> None:
        if self.name == "mlp":
            mlp_settings(self.preset, self.hidden_width, self.hidden_layers)  # a conflict fails at load time
        if self.name == "lenet5" and self.widths is not None:
            object.__setattr__(self, "widths", lenet5_widths(self.widths))
        for family, keys in (("mlp", ("preset", "hidden_width", "hidden_layers")), ("lenet5", ("widths",))):
            if self.name == family:
                continue
            for key in keys:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} applies to the {family} only, not to {self.name!r}; remove it (--set model.{key}=null)"
                    )
        if not isinstance(self.noise_on_first_layer, bool):
            raise TypeError(f"noise_on_first_layer must be true or false, got {self.noise_on_first_layer!r}")
        if self.noise_points is None:
            return
        paths = tuple(str(path) for path in self.noise_points)
        object.__setattr__(self, "noise_points", paths)
        if not paths:
            raise ValueError("noise_points is empty; list Linear/Conv2d layer paths, or null for the model's own rule")
        if len(set(paths)) != len(paths) or not all(paths):
            raise ValueError(f"noise_points {list(paths)} must be distinct, non-empty layer paths")

    def options(self) -> dict[str, Any]:
        """What ``build_model`` takes besides the data's shape: the mlp's resolved width and depth,
        LeNet5's widths when given."""
        if self.name == "mlp":
            return mlp_settings(self.preset, self.hidden_width, self.hidden_layers)
        return {"widths": self.widths} if self.widths is not None else {}
