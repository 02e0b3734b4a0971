"""export.saved: a sliced model saved as a state dict plus an architecture description reloads,
for every registered family and for a user's ``module:factory`` model, without its noisy model and
without unpickling; broken or mismatched files are refused by name."""
from __future__ import annotations

import json
import sys

import pytest
import torch
from torch import nn

from bmrs.models import MODELS, ModelConfig, NoiseInit, Noised, build_network
from bmrs.nn.groups import noise_groups, prune_at_random_
from bmrs.nn.noise import LogNormalNoise
from export.saved import DESCRIPTION_FILE, FORMAT_VERSION, STATE_DICT_FILE, load_sliced, save_sliced
from export.slicing import slice_model, surviving_widths

# As in test_family_slicing: small inputs keep the suite fast; LeNet5 takes 28 or 32 pixels only.
SHAPES = {"lenet5": (1, 28, 28), "mlp": (1, 6, 6)}
DEFAULT_SHAPE = (3, 16, 16)
# ViT-B/16 is vit_tiny's architecture at 86M parameters (25-40 s here for three builds of it):
# vit_tiny covers the family, and benchmarks/large_models.py slices and exports ViT-B/16 itself.
FAMILIES = sorted(set(MODELS) - {"vit_b_16"})
CLASSES = 10


def masked_family(config: ModelConfig, shape: tuple[int, ...], seed: int = 0, drop_rate: float = 0.4):
    """``config``'s model with noise, trained-looking posteriors and random masks over its groups.

    ``check_sliceable`` is left to test_family_slicing: here only a group-masked model is needed.
    """
    model = build_network(config, shape, CLASSES, noise=NoiseInit(), seed=seed)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    with torch.no_grad():
        model(torch.randn(16, *shape, generator=generator))  # BatchNorm statistics away from their fresh values
    model.eval()
    prune_at_random_(model, drop_rate, seed=seed)
    return model, torch.randn(4, *shape, generator=generator)


def sliced_and_saved(config: ModelConfig, shape: tuple[int, ...], directory, round_to=None, **mask_options):
    model, x = masked_family(config, shape, **mask_options)
    result = slice_model(model, x, round_to=round_to)
    keep = result.keep
    save_sliced(directory, result.model, model_config=config, input_shape=shape, num_classes=CLASSES, keep=keep)
    return result


def assert_same_function(loaded: nn.Module, sliced: nn.Module, shape: tuple[int, ...]) -> None:
    assert not [m for m in loaded.modules() if isinstance(m, (LogNormalNoise, Noised))]
    assert surviving_widths(loaded) == surviving_widths(sliced)
    assert not loaded.training
    x = torch.randn(5, *shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float((loaded(x) - sliced.eval()(x)).abs().max()) <= 1e-6


@pytest.fixture
def tensors_only(monkeypatch):
    """Fails any torch.load that could unpickle objects: reload must read tensors only."""
    real_load = torch.load
    calls = []

    def guarded_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "load_sliced must read the state dict with weights_only=True"
        calls.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    return calls


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_reloads_from_state_dict_and_description(name, tmp_path, tensors_only):
    shape = SHAPES.get(name, DEFAULT_SHAPE)
    result = sliced_and_saved(ModelConfig(name), shape, tmp_path)
    assert result.pruned_params < result.dense_params
    assert sorted(p.name for p in tmp_path.iterdir()) == [DESCRIPTION_FILE, STATE_DICT_FILE]  # no partial files left
    description = json.loads((tmp_path / DESCRIPTION_FILE).read_text())
    assert description["format_version"] == FORMAT_VERSION and description["widths"] == result.widths
    assert description["model_config"]["name"] == name and description["input_shape"] == list(shape)
    for path, entry in description["sliced_layers"].items():
        assert len(entry["kept"]) == result.widths[path] <= entry["dense_width"]

    loaded = load_sliced(tmp_path)
    assert tensors_only == [tmp_path / STATE_DICT_FILE]
    assert_same_function(loaded, result.model, shape)
    assert sum(p.numel() for p in loaded.parameters()) == result.pruned_params


@pytest.mark.parametrize("config, shape", [
    (ModelConfig("mlp", hidden_width=12, hidden_layers=2), (1, 5, 5)),
    (ModelConfig("lenet5", widths=(4, 8, 20, 10), noise_on_first_layer=False), (1, 32, 32)),
    (ModelConfig("resnet20", depth=8), (3, 8, 8)),
])  # fmt: skip
def test_family_settings_travel_in_the_description(config, shape, tmp_path):
    result = sliced_and_saved(config, shape, tmp_path / "model.json")
    assert (tmp_path / "model.pt").is_file()
    assert_same_function(load_sliced(tmp_path / "model.pt"), result.model, shape)


def test_widths_rounded_by_slice_model_reload(tmp_path):
    config, shape = ModelConfig("resnet20", depth=8), (3, 8, 8)
    result = sliced_and_saved(config, shape, tmp_path, round_to=4, drop_rate=0.5)
    assert result.pruned_params > result.pruned_params_unrounded  # rounding kept some pruned channels
    kept = json.loads((tmp_path / DESCRIPTION_FILE).read_text())["sliced_layers"]
    assert all(len(entry["kept"]) % 4 == 0 or len(entry["kept"]) == entry["dense_width"] for entry in kept.values())
    assert_same_function(load_sliced(tmp_path), result.model, shape)


def test_config_weights_are_recorded_but_never_loaded(tmp_path):
    """The saved tensors replace every parameter, so the starting weights need not exist any more."""
    weights = tmp_path / "start.pt"
    config = ModelConfig("mlp", hidden_width=8)
    torch.save(build_network(config, (1, 6, 6), CLASSES).state_dict(), weights)
    with_weights = ModelConfig("mlp", hidden_width=8, weights=str(weights))
    result = sliced_and_saved(with_weights, (1, 6, 6), tmp_path / "saved")
    weights.unlink()
    assert json.loads((tmp_path / "saved" / DESCRIPTION_FILE).read_text())["model_config"]["weights"] == str(weights)
    assert_same_function(load_sliced(tmp_path / "saved"), result.model, (1, 6, 6))


def test_a_fully_pruned_layer_keeps_structure_zero_as_slice_model_does(tmp_path):
    config, shape = ModelConfig("mlp", hidden_width=6, hidden_layers=2), (1, 4, 4)
    model, x = masked_family(config, shape)
    first = noise_groups(model)[0]
    first.prune_(torch.ones(first.num_structures, dtype=torch.bool))
    with pytest.warns(UserWarning, match="every structure of"):
        result = slice_model(model, x)
    keep = result.keep
    assert {path: int(mask.sum()) for path, mask in keep.items()} == {path: result.widths[path] for path in keep}
    assert 1 in result.widths.values()
    save_sliced(tmp_path, result.model, model_config=config, input_shape=shape, num_classes=CLASSES, keep=keep)
    assert_same_function(load_sliced(tmp_path), result.model, shape)


USER_FACTORIES = '''
import torch
from torch import nn

def make(input_shape, num_classes):
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(5 * input_shape[1] * input_shape[2], 7), nn.ReLU(), nn.Linear(7, num_classes),
    )
'''


@pytest.fixture
def user_module(importable_module) -> str:
    """A module of factories, importable under a name unique to the test."""
    return importable_module(USER_FACTORIES, "saved_factories")


def test_user_model_reloads_by_its_factory_name(user_module, tmp_path):
    config, shape = ModelConfig(f"{user_module}:make"), (2, 4, 4)
    result = sliced_and_saved(config, shape, tmp_path / "saved", drop_rate=0.5)
    assert result.pruned_params < result.dense_params
    assert json.loads((tmp_path / "saved" / DESCRIPTION_FILE).read_text())["model_config"]["name"] == f"{user_module}:make"
    sys.modules.pop(user_module)  # reload imports the factory afresh, by name
    assert_same_function(load_sliced(tmp_path / "saved"), result.model, shape)

    (tmp_path / f"{user_module}.py").unlink()
    sys.modules.pop(user_module)
    with pytest.raises(ValueError, match=rf"rebuilding model '{user_module}:make' failed: .*no module '{user_module}'"):
        load_sliced(tmp_path / "saved")


@pytest.fixture
def saved_mlp(tmp_path):
    config, shape = ModelConfig("mlp", hidden_width=10, hidden_layers=2), (1, 4, 4)
    sliced_and_saved(config, shape, tmp_path)
    return tmp_path


def rewrite_description(folder, change) -> None:
    path = folder / DESCRIPTION_FILE
    description = json.loads(path.read_text())
    change(description)
    path.write_text(json.dumps(description))


def test_missing_or_corrupt_files_are_named_with_the_fix(saved_mlp, tmp_path):
    with pytest.raises(ValueError, match=r"sliced model description .*nowhere/sliced.json': no such file; give the folder"):
        load_sliced(tmp_path / "nowhere")
    (saved_mlp / STATE_DICT_FILE).rename(saved_mlp / "moved.pt")
    with pytest.raises(ValueError, match=r"state dict .*sliced.pt' .*: no such file; the two files belong together"):
        load_sliced(saved_mlp)
    (saved_mlp / "moved.pt").rename(saved_mlp / STATE_DICT_FILE)

    text = (saved_mlp / DESCRIPTION_FILE).read_text()
    (saved_mlp / DESCRIPTION_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"sliced.json' is not valid JSON .*save_sliced"):
        load_sliced(saved_mlp)
    (saved_mlp / DESCRIPTION_FILE).write_text(text)
    rewrite_description(saved_mlp, lambda d: d.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=rf"has format version {FORMAT_VERSION + 1}, but this code reads version {FORMAT_VERSION}"):
        load_sliced(saved_mlp)
    (saved_mlp / DESCRIPTION_FILE).write_text(json.dumps({"weights": [1, 2]}))
    with pytest.raises(ValueError, match="is not a bmrs-sliced-model description"):
        load_sliced(saved_mlp)
    (saved_mlp / DESCRIPTION_FILE).write_text(text)
    rewrite_description(saved_mlp, lambda d: d["model_config"].update(colour="red"))
    with pytest.raises(ValueError, match=r"model_config with unknown fields \['colour'\]"):
        load_sliced(saved_mlp)
    (saved_mlp / DESCRIPTION_FILE).write_text(text)
    rewrite_description(saved_mlp, lambda d: d.update(state_dict="../elsewhere.pt"))
    with pytest.raises(ValueError, match="must be a file name next to the description"):
        load_sliced(saved_mlp)


def test_tampered_tensors_are_refused_by_key(saved_mlp):
    state = torch.load(saved_mlp / STATE_DICT_FILE, weights_only=True)
    key = next(k for k in state if k.endswith("weight"))
    bad = dict(state, **{key: torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])})
    torch.save(bad, saved_mlp / STATE_DICT_FILE)
    with pytest.raises(ValueError, match=rf"does not fit the architecture .*1 shapes differ, file vs model \({key} .*belong together"):
        load_sliced(saved_mlp)
    torch.save({k: v for k, v in state.items() if k != key}, saved_mlp / STATE_DICT_FILE)
    with pytest.raises(ValueError, match=rf"1 missing keys \({key}\)"):
        load_sliced(saved_mlp)
    torch.save(nn.Linear(2, 2), saved_mlp / STATE_DICT_FILE)  # a pickled module: never unpickled
    with pytest.raises(ValueError, match=r"is not a readable tensors-only state dict \(it pickles a torch.nn.modules.linear.Linear"):
        load_sliced(saved_mlp)
    (saved_mlp / STATE_DICT_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not a readable tensors-only state dict \(the file is empty or cut short\)"):
        load_sliced(saved_mlp)


def test_a_description_that_no_longer_rebuilds_is_refused(saved_mlp):
    text = (saved_mlp / DESCRIPTION_FILE).read_text()
    path = next(iter(json.loads(text)["widths"]))
    rewrite_description(saved_mlp, lambda d: d["widths"].update({path: d["widths"][path] + 1}))
    with pytest.raises(ValueError, match=rf"rebuilt widths differ from the saved ones \(1 layers: {path} \d+ saved vs \d+ rebuilt\)"):
        load_sliced(saved_mlp)
    (saved_mlp / DESCRIPTION_FILE).write_text(text)
    layer = next(iter(json.loads(text)["sliced_layers"]))
    rewrite_description(saved_mlp, lambda d: d["model_config"].update(hidden_width=11))  # the code's settings changed
    with pytest.raises(ValueError, match=rf"layer '{layer}' has 11 outputs when rebuilt but was saved with 10"):
        load_sliced(saved_mlp)


def test_save_refuses_what_would_not_reload(tmp_path):
    config, shape = ModelConfig("mlp", hidden_width=10, hidden_layers=2), (1, 4, 4)
    model, x = masked_family(config, shape)
    result = slice_model(model, x)
    sliced, keep = result.model, result.keep
    common = {"input_shape": shape, "num_classes": CLASSES}
    with pytest.raises(ValueError, match="still has noise modules"):
        save_sliced(tmp_path, model, model_config=config, keep=keep, **common)
    path = next(iter(keep))
    with pytest.raises(ValueError, match=rf"keep\['{path}'\] keeps 10 outputs but the sliced layer has \d+; pass the masks"):
        save_sliced(tmp_path, sliced, model_config=config, keep={path: torch.ones(10, dtype=torch.bool)}, **common)
    other = ModelConfig("mlp", hidden_width=12, hidden_layers=2)
    with pytest.raises(ValueError, match=r"cannot be rebuilt from what would be saved: .*has 12 outputs when rebuilt"):
        save_sliced(tmp_path, sliced, model_config=other, keep=keep, **common)
    with pytest.raises(ValueError, match="input_shape must be one example's shape"):
        save_sliced(tmp_path, sliced, model_config=config, keep=keep, input_shape=(0, 4), num_classes=CLASSES)
    assert not any(tmp_path.iterdir())  # nothing is written before every check passed
