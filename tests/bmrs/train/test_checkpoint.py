"""Checkpoints: exact round trip of weights, noise, masks and training state; damaged or foreign files are refused by name."""
from __future__ import annotations

import os

import pytest
import torch

from bmrs.train.checkpoint import CheckpointError, first_difference, load_checkpoint, read_checkpoint, save_checkpoint
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.nn.noise import noise_modules


def noisy_lenet(seed: int):
    torch.manual_seed(seed)
    model = build_model("lenet5", (1, 28, 28), 10)
    insert_noise(model, noise_points_for("lenet5", model))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for noise in noise_modules(model).values():
            noise.mu.copy_(torch.randn(noise.num_structures, generator=generator))
            noise.prune_(torch.rand(noise.num_structures, generator=generator) < 0.3)
    return model


META = {"epoch": 3, "history": [{"loss": 0.5, "phase": "train"}], "name": "ü"}


def test_round_trip(tmp_path):
    source = noisy_lenet(0)
    path = tmp_path / "nested" / "dir" / "model.pt"
    save_checkpoint(path, source, META)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"], "no temporary file left behind"
    target = noisy_lenet(1)
    assert not torch.equal(target.features[0].weight, source.features[0].weight)
    meta = load_checkpoint(path, target)
    assert meta == META
    target_state = target.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(target_state[key], value), key
    masks = [n.mask for n in noise_modules(target).values()]
    assert any(not m.all() for m in masks) and all(m.dtype == torch.bool for m in masks)
    x = torch.rand(3, 1, 28, 28)
    source.eval(), target.eval()
    assert torch.equal(source(x), target(x))


def test_overwrite_replaces(tmp_path):
    path = tmp_path / "model.pt"
    save_checkpoint(path, noisy_lenet(0), {"epoch": 1})
    save_checkpoint(path, noisy_lenet(2), {"epoch": 2})
    target = noisy_lenet(1)
    assert load_checkpoint(path, target) == {"epoch": 2}
    assert torch.equal(target.features[0].weight, noisy_lenet(2).features[0].weight)


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pt"
    with pytest.raises(CheckpointError, match="absent.pt"):
        load_checkpoint(path, noisy_lenet(0))


@pytest.mark.parametrize("damage", ["random", "truncated", "empty", "not_a_checkpoint"])
def test_corrupt_file(tmp_path, damage):
    path = tmp_path / f"{damage}.pt"
    if damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        save_checkpoint(path, noisy_lenet(0), META)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    model = noisy_lenet(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, model)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a failed load must not change the model"


def test_mismatched_model(tmp_path):
    path = tmp_path / "lenet.pt"
    save_checkpoint(path, noisy_lenet(0), META)
    mlp = build_model("mlp", (1, 28, 28), 10)
    with pytest.raises(CheckpointError, match="lenet.pt"):
        load_checkpoint(path, mlp)
    # same family without noise layers: keys differ too
    with pytest.raises(CheckpointError):
        load_checkpoint(path, build_model("lenet5", (1, 28, 28), 10))
    # same structure, different shapes
    with pytest.raises(CheckpointError):
        wide = build_model("mlp", (1, 28, 28), 10, hidden_width=10)
        save_checkpoint(tmp_path / "wide.pt", wide, {})
        load_checkpoint(tmp_path / "wide.pt", build_model("mlp", (1, 28, 28), 10, hidden_width=11))


def test_metadata_must_be_json(tmp_path):
    with pytest.raises(ValueError):
        save_checkpoint(tmp_path / "bad.pt", build_model("mlp", (1, 4, 4), 2), {"loss": float("nan")})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "bad.pt", build_model("mlp", (1, 4, 4), 2), {"tensor": torch.zeros(1)})
    assert not (tmp_path / "bad.pt").exists()


def test_failed_load_leaves_model_unchanged(tmp_path):
    """A checkpoint that does not fit is refused as a whole: no tensor of the model is overwritten
    (load_state_dict copies every matching key before it reports the missing ones)."""
    path = tmp_path / "noisy.pt"
    save_checkpoint(path, noisy_lenet(0), META)
    torch.manual_seed(5)
    plain = build_model("lenet5", (1, 28, 28), 10)  # same conv keys, no noise layers
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    with pytest.raises(CheckpointError):
        load_checkpoint(path, plain)
    changed = [k for k, v in plain.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == []


def test_training_state_round_trip(tmp_path):
    """Adam's fused state, both random streams and gradient statistics come back exactly, through
    weights_only loading."""
    model = noisy_lenet(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    model(torch.rand(4, 1, 28, 28)).sum().backward()
    optimizer.step()
    generator = torch.Generator().manual_seed(9)
    torch.rand(3, generator=generator)
    training = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(), "shuffle": generator.get_state(),
                "grad_sq": {"features.2.noise": torch.rand(6, dtype=torch.float64)}}  # fmt: skip
    path = tmp_path / "train.pt"
    save_checkpoint(path, model, META, training=training)
    checkpoint = read_checkpoint(path)
    assert checkpoint.meta == META
    found = checkpoint.training
    assert torch.equal(found["rng"], training["rng"]) and torch.equal(found["shuffle"], training["shuffle"])
    assert torch.equal(found["grad_sq"]["features.2.noise"], training["grad_sq"]["features.2.noise"])
    assert found["optimizer"]["param_groups"] == training["optimizer"]["param_groups"]
    for index, state in training["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(found["optimizer"]["state"][index][key], tensor), (index, key)
    fresh = torch.optim.Adam(noisy_lenet(1).parameters(), lr=1e-3, fused=True)
    fresh.load_state_dict(found["optimizer"])
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    assert checkpoint.state_dict.keys() == model.state_dict().keys()


def test_weights_only_checkpoint_has_no_training_state(tmp_path):
    save_checkpoint(tmp_path / "w.pt", noisy_lenet(0), META)
    assert read_checkpoint(tmp_path / "w.pt").training is None


@pytest.mark.parametrize("value, where", [({"x": object()}, "training['x']"), ({"a": [1, {"b": {1.5}}]}, "training['a'][1]['b']"),
                                           ({"a": {(1, 2): 3}}, "key (1, 2)")])  # fmt: skip
def test_training_state_must_load_without_unpickling(tmp_path, value, where):
    with pytest.raises(TypeError) as info:
        save_checkpoint(tmp_path / "bad.pt", noisy_lenet(0), META, training=value)
    assert where in str(info.value)
    assert not any(tmp_path.iterdir()), "nothing written"


def test_first_difference_names_the_setting():
    checkpoint = {"train": {"lr": 0.1, "settings": {"ratio": 0.5}}, "data": "a"}
    assert first_difference(checkpoint, checkpoint) is None
    assert first_difference(checkpoint, {**checkpoint, "data": "b"}) == "data: 'a' in the checkpoint, 'b' now"
    changed = {"train": {"lr": 0.1, "settings": {"ratio": 0.25}}, "data": "a"}
    assert first_difference(checkpoint, changed) == "train.settings.ratio: 0.5 in the checkpoint, 0.25 now"
    assert first_difference(checkpoint, {"train": {"lr": 0.1}, "data": "a"}).startswith("train.settings: ")
    assert first_difference({"epochs": 1}, {"epochs": 1.0}) == "epochs: 1 in the checkpoint, 1.0 now"
    assert first_difference(None, {"a": 1}) == "value: None in the checkpoint, {'a': 1} now"


def test_first_difference_shortens_long_values():
    message = first_difference({"a": "x" * 1000}, {"a": "y"})
    assert len(message) < 200 and message.endswith("in the checkpoint, 'y' now")
