"""Energy per inference of one ONNX model, measured offline with codecarbon.

The report records *how* codecarbon obtained the number (hardware energy
counter vs. a TDP/load estimate), read back from the tracker after the run,
because the two differ by far more than any pruning gain.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.codecarbon_offline import (  # noqa: F401  (MeasurementMode, TrackingMode: this module's API too)
    JOULES_PER_KWH,
    MeasurementMode,
    TrackingMode,
    captured_codecarbon_log,
    json_safe,
    offline_tracker,
    read_mode,
    require_known_country,
)
from benchmarks.ort_runtime import (
    Provider,
    describe_machine,
    open_session,
    require_providers,
    input_feed,
)

# Used when neither duration_s nor repeats is given: long enough for
# codecarbon's 1 s power sampler to take several samples.
DEFAULT_DURATION_S = 10.0


@dataclass(frozen=True)
class EnergyConfig:
    """How long to run and where the grid carbon intensity comes from.

    Give either duration_s or repeats (number of batched inferences), not both;
    with neither, the run lasts DEFAULT_DURATION_S. Keep runs to seconds, not
    milliseconds: codecarbon skips its closing sample when the previous one is
    under 50 ms old, so a very short run reports (near) zero energy.
    output_dir, when set, also gets codecarbon's own emissions.csv; when None
    nothing is written to disk.
    """

    country_iso_code: str = "DNK"
    duration_s: float | None = None
    repeats: int | None = None
    batch_size: int = 1
    output_dir: Path | None = None
    warmup: int = 10
    provider: Provider = Provider.CPU
    intra_op_threads: int | None = None
    tracking_mode: TrackingMode = TrackingMode.MACHINE
    seed: int = 0

    def __post_init__(self) -> None:
        code = self.country_iso_code
        if not (isinstance(code, str) and len(code) == 3 and code.isalpha() and code.isupper()):
            raise ValueError(
                f"country_iso_code must be a 3-letter upper-case ISO code such as 'DNK', got {code!r}."
            )
        if self.duration_s is not None and self.repeats is not None:
            raise ValueError(
                f"Give either duration_s ({self.duration_s!r}) or repeats ({self.repeats!r}), not both."
            )
        if self.duration_s is not None:
            if isinstance(self.duration_s, bool) or not isinstance(self.duration_s, (int, float)):
                raise TypeError(f"duration_s must be a number of seconds, got {self.duration_s!r}.")
            if not (math.isfinite(self.duration_s) and self.duration_s > 0):
                raise ValueError(f"duration_s must be a finite number > 0, got {self.duration_s!r}.")
        if self.repeats is not None:
            _require_int("repeats", self.repeats, low=1)
        _require_int("batch_size", self.batch_size, low=1)
        _require_int("warmup", self.warmup, low=0)
        _require_int("seed", self.seed, low=0)
        if self.intra_op_threads is not None:
            _require_int("intra_op_threads", self.intra_op_threads, low=1)
        if self.output_dir is not None and not isinstance(self.output_dir, (str, os.PathLike)):
            raise TypeError(f"output_dir must be a path or None, got {self.output_dir!r}.")
        for name, enum_type in (("provider", Provider), ("tracking_mode", TrackingMode)):
            value = getattr(self, name)
            if not isinstance(value, enum_type):
                valid = ", ".join(f"{enum_type.__name__}.{m.name}" for m in enum_type)
                raise TypeError(f"{name} must be one of {valid}; got {value!r}.")


def _require_int(name: str, value: object, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}.")


@dataclass(frozen=True)
class EnergyReport:
    model_path: str
    provider: Provider
    batch_size: int
    inferences: int  # batched session.run calls inside the tracked window
    duration_s: float
    energy_kwh: float
    cpu_energy_kwh: float
    ram_energy_kwh: float
    gpu_energy_kwh: float
    emissions_kg_co2: float
    country_iso_code: str
    mode: MeasurementMode
    codecarbon_version: str
    onnxruntime_version: str
    machine: dict
    codecarbon_warnings: tuple[str, ...]  # hardware-detection warnings appear once per process (cached)

    @property
    def energy_per_inference_j(self) -> float:
        return self.energy_kwh * JOULES_PER_KWH / self.inferences

    @property
    def energy_per_sample_j(self) -> float:
        return self.energy_per_inference_j / self.batch_size

    def to_dict(self) -> dict:
        """JSON-safe view: no NaN/inf (those become None), enums as their values."""
        out = {k: v for k, v in asdict(self).items() if k not in ("mode", "provider")}
        out.update(
            provider=self.provider.value,
            energy_per_inference_j=self.energy_per_inference_j,
            energy_per_sample_j=self.energy_per_sample_j,
            codecarbon_warnings=list(self.codecarbon_warnings),
            mode={**asdict(self.mode), "summary": self.mode.summary},
        )
        return {k: json_safe(v) for k, v in out.items()}


def measure_energy(
    model_path: Path,
    input_shape: tuple[int, ...],
    config: EnergyConfig = EnergyConfig(),
) -> EnergyReport:
    """Run the model back to back under codecarbon and report energy per inference.

    In MACHINE scope the energy includes everything else the machine drew
    meanwhile (idle power included): compare models measured the same way.
    """
    if not isinstance(config, EnergyConfig):
        raise TypeError(f"config must be an EnergyConfig, got {type(config).__name__}.")
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}; export the model first.")
    if not isinstance(input_shape, (tuple, list)):
        raise TypeError(
            f"input_shape must be a tuple of ints without the batch axis, got {input_shape!r}."
        )
    for dim in input_shape:
        _require_int("input_shape item", dim, low=1)
    shape = tuple(input_shape)
    require_providers((config.provider,))
    require_known_country(config.country_iso_code)

    # Same session settings as the latency benchmark so both describe one deployment.
    session = open_session(path, config.provider, intra_op_threads=config.intra_op_threads)
    x = np.random.default_rng(config.seed).standard_normal((config.batch_size, *shape), dtype=np.float32)
    feed = input_feed(path.name, session, x)
    for _ in range(config.warmup):
        session.run(None, feed)

    with tempfile.TemporaryDirectory(prefix="bmrs-energy-") as scratch:
        output_dir = Path(config.output_dir) if config.output_dir is not None else Path(scratch)
        output_dir.mkdir(parents=True, exist_ok=True)
        with captured_codecarbon_log() as log:
            tracker = offline_tracker(config.country_iso_code, output_dir, csv=config.output_dir is not None,
                                      tracking_mode=config.tracking_mode)
            log.detach_console()
            tracker.start()
            try:
                inferences = _run(session, feed, config)
            finally:
                # Also on failure: stop() ends codecarbon's sampler threads.
                tracker.stop()
        warnings = tuple(log.messages)
        data = getattr(tracker, "final_emissions_data", None)
        if data is None:
            # start()/stop() swallow their own exceptions; this is where it shows.
            raise RuntimeError(
                f"codecarbon produced no measurement; its log said: {warnings or 'nothing'}"
            )
        mode = read_mode(tracker)

    from codecarbon import __version__ as codecarbon_version

    return EnergyReport(
        model_path=str(path),
        provider=config.provider,
        batch_size=config.batch_size,
        inferences=inferences,
        duration_s=float(data.duration),
        energy_kwh=float(data.energy_consumed),
        cpu_energy_kwh=float(data.cpu_energy),
        ram_energy_kwh=float(data.ram_energy),
        gpu_energy_kwh=float(data.gpu_energy),
        emissions_kg_co2=float(data.emissions),
        country_iso_code=config.country_iso_code,
        mode=mode,
        codecarbon_version=codecarbon_version,
        onnxruntime_version=ort.__version__,
        machine=describe_machine(),
        codecarbon_warnings=warnings,
    )


def _run(session: ort.InferenceSession, feed: dict, config: EnergyConfig) -> int:
    if config.repeats is not None:
        for _ in range(config.repeats):
            session.run(None, feed)
        return config.repeats
    deadline = time.perf_counter() + (config.duration_s or DEFAULT_DURATION_S)
    inferences = 0
    while True:
        session.run(None, feed)
        inferences += 1
        if time.perf_counter() >= deadline:
            return inferences
