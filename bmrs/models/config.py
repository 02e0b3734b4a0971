"""``ModelConfig``: which model to build, its family's shape settings and where its noise goes."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bmrs.models.cnn_families import resnet_blocks_per_stage
from bmrs.models.families import lenet5_widths, mlp_settings

# The settings that shape one family only; given with another model they would be silently ignored.
FAMILY_SETTINGS = (("mlp", ("preset", "hidden_width", "hidden_layers")), ("lenet5", ("widths",)), ("resnet20", ("depth",)))


@dataclass(frozen=True)
class ModelConfig:
    """``name``: a registered family or ``package.module:factory``; ``preset``/``hidden_*`` shape the
    mlp, ``widths`` LeNet5, ``depth`` the CIFAR ResNet (``resnet20``).

    ``weights`` is the path of a state dict (``torch.save(model.state_dict(), path)``) of the same
    model, family, input shape and classes; ``build_network`` loads it strictly before any noise.

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
    depth: int | None = None  # resnet20 only: 6n+2 layers (20, 32, 44, 56, 110); None: 20
    weights: str | None = None  # any model: a state dict file to start from; None: random initialisation
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
        if self.name == "resnet20" and self.depth is not None:
            resnet_blocks_per_stage(self.depth)
        for family, keys in FAMILY_SETTINGS:
            if self.name == family:
                continue
            for key in keys:
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} applies to the {family} only, not to {self.name!r}; remove it (--set model.{key}=null)"
                    )
        if isinstance(self.weights, Path):
            object.__setattr__(self, "weights", str(self.weights))
        if self.weights is not None and not isinstance(self.weights, str):
            raise TypeError(f"weights must be the path of a state dict file (a string) or null, got {self.weights!r}")
        if self.weights == "":
            raise ValueError("weights is an empty path; name a state dict file, or null for random initialisation")
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
        LeNet5's widths and the CIFAR ResNet's depth when given."""
        if self.name == "mlp":
            return mlp_settings(self.preset, self.hidden_width, self.hidden_layers)
        if self.name == "resnet20":
            return {"depth": self.depth} if self.depth is not None else {}
        return {"widths": self.widths} if self.widths is not None else {}
