"""Energy per inference of one ONNX model, measured offline with codecarbon.

The report records *how* codecarbon obtained the number (hardware energy
counter vs. a TDP/load estimate), read back from the tracker after the run,
because the two differ by far more than any pruning gain.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks.ort_runtime import (
    Provider,
    describe_machine,
    open_session,
    require_providers,
    single_float_input,
)

# Used when neither duration_s nor repeats is given: long enough for
# codecarbon's 1 s power sampler to take several samples.
DEFAULT_DURATION_S = 10.0

# codecarbon CPU modes that read a hardware energy counter; every other mode
# (cpu_load, constant) multiplies an assumed TDP by load or a fixed fraction.
_CPU_COUNTER_MODES = frozenset({"intel_rapl", "windows_emi", "intel_power_gadget"})
_JOULES_PER_KWH = 3.6e6
_CODECARBON_LOGGER = "codecarbon"


class TrackingMode(enum.Enum):
    """codecarbon's scope: whole-machine power, or its attempt to isolate this process."""

    MACHINE = "machine"
    PROCESS = "process"


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
class MeasurementMode:
    """Which method codecarbon actually used per component, read after the run."""

    cpu_method: str  # codecarbon CPU mode, e.g. "intel_rapl", "cpu_load", "constant"
    cpu_measured: bool  # True only when read from a hardware energy counter
    cpu_model: str | None
    cpu_tdp_w: float | None  # the TDP codecarbon assumed; what estimates scale
    ram_method: str
    gpu_method: str | None  # None: no GPU tracked
    tracking_mode: str
    hardware: tuple[str, ...]  # codecarbon's own descriptions of what it tracked

    @property
    def summary(self) -> str:
        cpu = "measured" if self.cpu_measured else f"estimated, TDP {self.cpu_tdp_w} W"
        return (f"CPU: {self.cpu_method} ({cpu}); RAM: {self.ram_method}; "
                f"GPU: {self.gpu_method or 'not tracked'}; scope: {self.tracking_mode}")


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
        return self.energy_kwh * _JOULES_PER_KWH / self.inferences

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
        return {k: _json_safe(v) for k, v in out.items()}


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
    _require_known_country(config.country_iso_code)

    # Same session settings as the latency benchmark so both describe one deployment.
    session = open_session(path, config.provider, intra_op_threads=config.intra_op_threads)
    x = np.random.default_rng(config.seed).standard_normal((config.batch_size, *shape), dtype=np.float32)
    feed = {single_float_input(path.name, session, tuple(x.shape)): x}
    for _ in range(config.warmup):
        session.run(None, feed)

    with tempfile.TemporaryDirectory(prefix="bmrs-energy-") as scratch:
        output_dir = Path(config.output_dir) if config.output_dir is not None else Path(scratch)
        output_dir.mkdir(parents=True, exist_ok=True)
        with _captured_codecarbon_log() as log:
            tracker = _offline_tracker(config, output_dir, csv=config.output_dir is not None)
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
        mode = _read_mode(tracker)

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


def _offline_tracker(config: EnergyConfig, output_dir: Path, *, csv: bool):
    # codecarbon (and pandas behind it) is imported only when energy is
    # measured, keeping `import benchmarks.energy` cheap for report readers.
    from codecarbon import OfflineEmissionsTracker
    from codecarbon.output_methods.base_output import OutputMethod

    # Every option that could reach the network or change the number is set
    # explicitly, so ~/.codecarbon.config or CODECARBON_* variables cannot
    # re-enable the API/HTTP outputs, the lock file, or a PUE multiplier.
    # output_methods replaces save_to_file, deprecated in codecarbon 3.
    tracker = OfflineEmissionsTracker(
        country_iso_code=config.country_iso_code,
        output_methods=[OutputMethod.CSV] if csv else [],
        output_dir=str(output_dir),
        emissions_endpoint=None,
        electricitymaps_api_token=None,
        allow_multiple_runs=True,
        tracking_mode=config.tracking_mode.value,
        pue=1.0,
        log_level="warning",
    )
    # Only the deprecated co2_signal_api_token config key can still set this,
    # and with it codecarbon would ask Electricity Maps online.
    if getattr(tracker, "_electricitymaps_api_token", None):
        raise ValueError(
            "A codecarbon config file or CODECARBON_CO2_SIGNAL_API_TOKEN sets an Electricity Maps token, "
            "which makes the offline tracker call the network; remove it for benchmark runs."
        )
    return tracker


def _require_known_country(code: str) -> None:
    from codecarbon.input import DataSource

    # Checked here because codecarbon only logs an unknown country and then
    # reports no emissions, which would surface as a confusing failure later.
    known = DataSource().get_global_energy_mix_data()
    if code not in known:
        raise ValueError(
            f"country_iso_code {code!r} is not in codecarbon's offline energy-mix table; "
            f"use a 3-letter ISO code such as 'DNK', 'DEU', 'USA' ({len(known)} known)."
        )


class _LogCapture(logging.Handler):
    """Collects codecarbon's warnings for the report instead of printing them."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())

    def detach_console(self) -> None:
        # The tracker constructor installs its own stderr handler; drop it.
        logging.getLogger(_CODECARBON_LOGGER).handlers = [self]


@contextlib.contextmanager
def _captured_codecarbon_log():
    logger = logging.getLogger(_CODECARBON_LOGGER)
    saved_level, saved_handlers = logger.level, list(logger.handlers)
    capture = _LogCapture()
    # ERROR until the tracker sets its own level: its constructor chats at
    # INFO/WARNING ("offline tracker init", "multiple instances allowed").
    logger.setLevel(logging.ERROR)
    logger.handlers = [capture]
    try:
        yield capture
    finally:
        logger.setLevel(saved_level)
        logger.handlers = saved_handlers


def _read_mode(tracker) -> MeasurementMode:
    # codecarbon keeps what it set up in tracker._hardware; there is no public
    # accessor, so read it defensively and say "unknown" rather than guess.
    cpu_method, cpu_model, cpu_tdp = "unknown", None, None
    cpu_measured = False
    ram_method = "unknown"
    gpu_methods: list[str] = []
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            cpu_method = str(getattr(hw, "_mode", "unknown"))
            cpu_measured = cpu_method in _CPU_COUNTER_MODES
            cpu_model = getattr(hw, "_model", None)
            tdp = getattr(hw, "_tdp", None)
            cpu_tdp = float(tdp) if isinstance(tdp, (int, float)) else None
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            ram_method = (
                f"user-specified constant {forced} W"
                if forced is not None
                else "estimated (codecarbon RAM model)"
            )
        elif kind == "GPU":
            devices = getattr(getattr(hw, "devices", None), "devices", [])
            vendors = {"NvidiaGPUDevice": "pynvml", "AMDGPUDevice": "amdsmi"}
            gpu_methods += sorted({vendors.get(type(d).__name__, type(d).__name__) for d in devices})
        elif kind in ("AppleSiliconChip", "Raspberry"):
            part = getattr(hw, "chip_part", "")
            method = "apple_powermetrics" if kind == "AppleSiliconChip" else "raspberry_pmic"
            if part == "CPU":
                cpu_method, cpu_measured = method, True
            elif part == "GPU":
                gpu_methods.append(method)
            elif part == "RAM":
                ram_method = method
    return MeasurementMode(
        cpu_method=cpu_method,
        cpu_measured=cpu_measured,
        cpu_model=cpu_model,
        cpu_tdp_w=cpu_tdp,
        ram_method=ram_method,
        gpu_method=", ".join(gpu_methods) or None,
        tracking_mode=str(getattr(tracker, "_tracking_mode", "unknown")),
        hardware=tuple(str(h) for h in getattr(tracker, "_conf", {}).get("hardware", ())),
    )


def _json_safe(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
