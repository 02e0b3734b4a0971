"""The flow's energy figures: train_'s phase hook, stages measured apart and summed over a resume,
the report's ``energy`` section of a real run, and a failing tracker that never fails the run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from prefect_env import prefect_environment

from benchmarks.energy_pair import EnergyRunConfig
from bmrs.criteria import build_criterion
from bmrs.data import DataBundle, Split
from bmrs.models import build_model, insert_noise, noise_points_for
from bmrs.train import TrainConfig, train_
from pipeline.cli import main
from pipeline.stages.energy import STAGES_FILE, RunEnergy

REPO = Path(__file__).resolve().parents[3]
STAGE_KEYS = {"available", "energy_kwh", "emissions_kg_co2", "duration_s", "attempts"}
ROW_KEYS = {"j_per_1k", "g_co2_per_1k", "seconds", "examples"}


def blobs(n: int = 96, classes: int = 3) -> DataBundle:
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(classes, 1, 4, 4, generator=generator)

    def split(count):
        labels = torch.arange(count) % classes
        return Split((centres[labels] + 0.2 * torch.randn(count, 1, 4, 4, generator=generator)).float(), labels)

    return DataBundle("blobs", split(n), split(48), split(24), classes)


def noisy_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", (1, 4, 4), 3, hidden_width=12, hidden_layers=1)
    return insert_noise(model, noise_points_for("mlp", model))


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    """A tiny model: compiling the noise kernels costs more than it saves."""
    monkeypatch.setenv("BMRS_COMPILE", "0")


CONFIG = TrainConfig(epochs=2, finetune_epochs=1, batch_size=16, lr=1e-2, progress=False,
                     criterion=build_criterion("l2", ratio=0.2))


class Killed(Exception):
    """Stands for the process dying during the first fine-tuning epoch."""


def die_at_epoch(epoch: int):
    seen = []

    def compression(model):
        seen.append(1)
        if len(seen) == epoch:
            raise Killed
        return 0.0

    return compression


def test_on_phase_is_told_each_phase_as_it_starts_and_changes_nothing(tmp_path):
    data = blobs()
    calls: list[str] = []
    hooked = train_(noisy_mlp(), data, CONFIG, on_phase=calls.append)
    plain = train_(noisy_mlp(), data, CONFIG)
    assert calls == ["train", "finetune"]
    for a, b in zip(hooked.model.state_dict().values(), plain.model.state_dict().values()):
        assert torch.equal(a, b)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in hooked.as_dict()]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in plain.as_dict()]

    # Resumed after the training epochs: only fine-tuning starts; a finished checkpoint starts nothing.
    checkpoint = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        train_(noisy_mlp(), data, CONFIG, checkpoint_path=checkpoint, compression=die_at_epoch(3))
    resumed: list[str] = []
    train_(noisy_mlp(), data, CONFIG, checkpoint_path=checkpoint, resume_from=checkpoint, on_phase=resumed.append)
    finished: list[str] = []
    train_(noisy_mlp(), data, CONFIG, checkpoint_path=checkpoint, resume_from=checkpoint, on_phase=finished.append)
    assert resumed == ["finetune"] and finished == []


def test_phases_are_measured_apart_and_a_resume_adds_its_part(tmp_path):
    data, checkpoint = blobs(), tmp_path / "train" / "checkpoint.pt"
    first = RunEnergy(EnergyRunConfig(), tmp_path, resume=False)
    with pytest.raises(Killed):
        with first.training_phases(baseline=False) as on_phase:
            train_(noisy_mlp(), data, CONFIG, checkpoint_path=checkpoint, compression=die_at_epoch(3), on_phase=on_phase)
    first.close()
    interrupted = json.loads((tmp_path / STAGES_FILE).read_text())["stages"]
    assert [len(interrupted[s]["attempts"]) for s in ("training", "fine_tuning")] == [1, 1]

    second = RunEnergy(EnergyRunConfig(), tmp_path, resume=True)
    with second.training_phases(baseline=False) as on_phase:
        train_(noisy_mlp(), data, CONFIG, checkpoint_path=checkpoint, resume_from=checkpoint, on_phase=on_phase)
    with second.training_phases(baseline=True) as on_phase:  # the dense reference: one stage for both phases
        train_(noisy_mlp(), data, CONFIG, on_phase=on_phase)
    section = second.report(None)
    second.close()
    stages = section["stages"]
    assert list(stages) == ["training", "fine_tuning", "baseline_training"]
    assert [stages[s]["attempts"] for s in stages] == [1, 2, 1]
    for figure in stages.values():
        assert set(figure) == STAGE_KEYS and figure["energy_kwh"] > 0 and figure["emissions_kg_co2"] > 0
    on_disk = json.loads((tmp_path / STAGES_FILE).read_text())["stages"]["fine_tuning"]["attempts"]
    assert stages["fine_tuning"]["energy_kwh"] == pytest.approx(sum(a["energy_kwh"] for a in on_disk))
    assert section["available"] and section["reason"] is None and section["country_iso_code"] == "DNK"
    assert section["mode"]["estimated"] == (not section["mode"]["cpu_measured"]) and section["mode"]["summary"]
    assert section["note"].startswith("estimated: " if section["mode"]["estimated"] else "measured: ")
    assert section["inference"] == {"available": False, "reason": "the inference energy stage did not run"}


def test_a_tracker_that_raises_leaves_the_work_done_and_says_why(tmp_path):
    def refuse():
        raise PermissionError("/sys/class/powercap/intel-rapl: permission denied")

    energy = RunEnergy(EnergyRunConfig(), tmp_path, resume=False, tracker_factory=refuse)
    with energy.training_phases(baseline=False) as on_phase:
        result = train_(noisy_mlp(), blobs(), CONFIG, on_phase=on_phase)
    with energy.stage("slicing_export"):
        pass
    section = energy.report({"available": False, "reason": "not measured: tracker"})
    energy.close()
    assert len(result.history) == 3  # trained in full
    assert section["available"] is False and "permission denied" in section["reason"]
    assert section["mode"] is None and "no energy was measured" in section["note"]
    assert set(section["stages"]) == {"training", "fine_tuning", "slicing_export"}
    for figure in section["stages"].values():
        assert figure["available"] is False and "permission denied" in figure["reason"]
    json.dumps(section, allow_nan=False)


def test_stages_untracked_still_give_the_mode(tmp_path):
    energy = RunEnergy(EnergyRunConfig(track_stages=False), tmp_path, resume=False)
    with energy.training_phases(baseline=False) as on_phase:
        assert on_phase is None
    with energy.stage("slicing_export"):
        pass
    section = energy.report(None)
    energy.close()
    assert section["available"] and section["stages"] == {} and section["mode"]["cpu_method"] not in ("", "unknown")
    assert not (tmp_path / STAGES_FILE).exists()


def test_energy_off_measures_nothing(tmp_path):
    energy = RunEnergy(EnergyRunConfig(enabled=False), tmp_path, resume=False)
    with energy.training_phases(baseline=False) as on_phase:
        assert on_phase is None
    with energy.stage("slicing_export"):
        pass
    assert energy.report(None) is None and not (tmp_path / STAGES_FILE).exists()


def test_a_country_codecarbon_lacks_is_one_line_and_exit_2_before_a_run_dir(tmp_path, monkeypatch, capsys):
    write_blobs(tmp_path / "blobs.npz")
    monkeypatch.chdir(tmp_path)
    code = main(["run", str(REPO / "flows.yaml"), "--flow", "default", *TINY, "--set", "energy.country_iso_code=XYZ"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("bmrs: error: ")
    assert "'XYZ'" in lines[0] and "'DEU'" in lines[0] and "'USA'" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_real_run_reports_energy_per_stage_and_per_thousand_inferences(seed_group):
    for seed in ("seed0", "seed1"):
        run_dir = seed_group.group_dir / seed
        report = json.loads((run_dir / "report.json").read_text())
        section = report["energy"]
        assert set(section) == {"available", "reason", "country_iso_code", "mode", "note", "stages", "inference"}
        assert section["available"] and section["reason"] is None and section["country_iso_code"] == "DNK"
        assert section["mode"]["estimated"] == (not section["mode"]["cpu_measured"])
        assert section["note"].startswith("estimated: " if section["mode"]["estimated"] else "measured: ")
        # The flow's TINY budget has no fine-tuning epochs, so no fine_tuning stage.
        assert list(section["stages"]) == ["training", "baseline_training", "slicing_export", "benchmarking"]
        for figure in section["stages"].values():
            assert set(figure) == STAGE_KEYS and figure["attempts"] == 1 and figure["energy_kwh"] > 0
        inference = section["inference"]
        assert inference["provider"] == "CPUExecutionProvider" and list(inference["by_batch"]) == ["256"]
        row = inference["by_batch"]["256"]
        assert set(row) == {"dense", "pruned", "ratio_pruned_dense", "ratio_min", "ratio_max", "rounds"}
        assert row["rounds"] == 1 and row["ratio_min"] <= row["ratio_pruned_dense"] * 1.0001
        assert row["ratio_pruned_dense"] <= row["ratio_max"] * 1.0001
        for name in ("dense", "pruned"):
            assert set(row[name]) == ROW_KEYS and row[name]["j_per_1k"] > 0 and row[name]["g_co2_per_1k"] > 0
            assert row[name]["examples"] % 256 == 0 and row[name]["seconds"] >= 0.2
        # The benchmarking stage holds the inference windows.
        detail = json.loads((run_dir / "bench" / "energy.json").read_text())
        windows = sum(w["energy_kwh"] for w in detail["windows"])
        assert section["stages"]["benchmarking"]["energy_kwh"] >= windows * 0.999 and len(detail["windows"]) == 2
        assert detail["mode"] == section["mode"]
        assert (run_dir / "bench" / "energy_stages.json").is_file()


# A codecarbon whose task API raises in every process the run starts.
PATCHED_CLI = """
import sys
import codecarbon.emissions_tracker as tracker
def refuse(self, *args, **kwargs):
    raise PermissionError("no access to the energy counters")
tracker.BaseEmissionsTracker.start_task = refuse
from pipeline.cli import main
sys.exit(main(sys.argv[1:]))
"""

TINY = [
    "--no-progress",
    "--set", "data.dataset=npz", "--set", "data.root=blobs.npz",
    "--set", "model.name=mlp", "--set", "model.hidden_width=24",
    "--set", "train.epochs=1", "--set", "train.finetune_epochs=1", "--set", "train.lr=0.01",
    "--set", "train.criterion={name: l2, ratio: 0.3}", "--set", "baseline.enabled=false",
    "--set", "latency.repeats=3", "--set", "latency.warmup=1", "--set", "latency.batch_sizes=[1]",
    "--set", "latency.torch_devices=[]",
    "--set", "energy.window_s=0.2", "--set", "energy.rounds=1", "--set", "energy.batch_sizes=[8]",
]  # fmt: skip


def write_blobs(path: Path, n: int = 240, classes: int = 4) -> Path:
    generator = np.random.default_rng(0)
    centres = generator.random((classes, 8, 8))
    labels = np.arange(n) % classes
    x = (centres[labels] + 0.5 * generator.standard_normal((n, 8, 8))).astype(np.float32)
    np.savez(path, x=x, y=labels, x_test=x[:80], y_test=labels[:80])
    return path


def test_a_failing_tracker_never_fails_the_run(tmp_path):
    write_blobs(tmp_path / "blobs.npz")
    command = [sys.executable, "-c", PATCHED_CLI, "run", str(REPO / "flows.yaml"), "--flow", "default", *TINY]
    result = subprocess.run(command, cwd=tmp_path, env=prefect_environment(tmp_path), capture_output=True, text=True,
                            timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs" / "default").iterdir()
    assert json.loads((run_dir / "status.json").read_text())["state"] == "completed"
    assert (run_dir / "model.onnx").is_file() and (run_dir / "dense.onnx").is_file()
    section = json.loads((run_dir / "report.json").read_text())["energy"]
    assert section["available"] is False and "no access to the energy counters" in section["reason"]
    assert list(section["stages"]) == ["training", "fine_tuning", "slicing_export", "benchmarking"]
    assert all(not s["available"] and "no access" in s["reason"] for s in section["stages"].values())
    assert section["inference"]["available"] is False and "no access" in section["inference"]["reason"]
