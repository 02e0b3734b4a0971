"""codecarbon, offline and quiet: the tracker every energy figure of this project comes from, the
check of a country code against its offline table, and what it actually measured with.

codecarbon (and pandas behind it) is imported only inside these functions, keeping the modules
that import this one cheap for report readers.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from bmrs.artifacts import json_safe  # noqa: F401 - re-exported for the energy modules

# codecarbon CPU modes that read a hardware energy counter; every other mode
# (cpu_load, constant) multiplies an assumed TDP by load or a fixed fraction.
CPU_COUNTER_MODES = frozenset({"intel_rapl", "windows_emi", "intel_power_gadget"})
JOULES_PER_KWH = 3.6e6
CODECARBON_LOGGER = "codecarbon"


class TrackingMode(enum.Enum):
    """codecarbon's scope: whole-machine power, or its attempt to isolate this process."""

    MACHINE = "machine"
    PROCESS = "process"


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

    @property
    def estimated(self) -> bool:
        """The CPU figure is not from a hardware counter: compare models measured alike, not absolutes."""
        return not self.cpu_measured

    def to_dict(self) -> dict:
        return {**asdict(self), "hardware": list(self.hardware), "summary": self.summary, "estimated": self.estimated}

    def note(self) -> str:
        """One sentence in words on how the figures were obtained, for a reader of the report."""
        scope = ("the whole machine's draw, other processes included"
                 if self.tracking_mode == TrackingMode.MACHINE.value else "this process's share of the CPU")
        gpu = f"; GPU energy from {self.gpu_method}" if self.gpu_method else ""
        ram = f"RAM: {self.ram_method}{gpu}; scope: {scope}"
        if self.cpu_measured:
            return f"measured: CPU energy read from a hardware counter ({self.cpu_method}); {ram}."
        if self.cpu_method == "cpu_load":
            how = (f"codecarbon found no RAPL counter and multiplied CPU load by an assumed TDP of "
                   f"{self.cpu_tdp_w} W")
        elif self.cpu_method == "constant":
            how = (f"codecarbon found neither a RAPL counter nor CPU load and assumed a constant half of "
                   f"an assumed TDP of {self.cpu_tdp_w} W")
        else:
            how = f"codecarbon's CPU mode was {self.cpu_method!r}, not a hardware counter"
        return f"estimated: {how}; {ram}; compare models measured the same way, not absolute values."


def offline_tracker(
    country_iso_code: str,
    output_dir: Path,
    *,
    csv: bool = False,
    tracking_mode: TrackingMode = TrackingMode.MACHINE,
    measure_power_secs: float | None = None,
):
    """An ``OfflineEmissionsTracker`` that cannot reach the network, write a lock file or scale by a PUE.

    ``measure_power_secs``: the period of codecarbon's energy-integrating scheduler, which runs
    only between ``start()`` and ``stop()`` (``start_task`` pauses it); None: codecarbon's default."""
    from codecarbon import OfflineEmissionsTracker
    from codecarbon.output_methods.base_output import OutputMethod

    # Every option that could reach the network or change the number is set
    # explicitly, so ~/.codecarbon.config or CODECARBON_* variables cannot
    # re-enable the API/HTTP outputs, the lock file, or a PUE multiplier.
    # output_methods replaces save_to_file, deprecated in codecarbon 3.
    extra = {} if measure_power_secs is None else {"measure_power_secs": measure_power_secs}
    tracker = OfflineEmissionsTracker(
        country_iso_code=country_iso_code,
        output_methods=[OutputMethod.CSV] if csv else [],
        output_dir=str(output_dir),
        emissions_endpoint=None,
        electricitymaps_api_token=None,
        allow_multiple_runs=True,
        tracking_mode=tracking_mode.value,
        pue=1.0,
        log_level="warning",
        **extra,
    )
    # Only the deprecated co2_signal_api_token config key can still set this,
    # and with it codecarbon would ask Electricity Maps online.
    if getattr(tracker, "_electricitymaps_api_token", None):
        raise ValueError(
            "A codecarbon config file or CODECARBON_CO2_SIGNAL_API_TOKEN sets an Electricity Maps token, "
            "which makes the offline tracker call the network; remove it for benchmark runs."
        )
    return tracker


def require_known_country(code: str, setting: str = "country_iso_code") -> None:
    """Raise ValueError naming ``code`` and examples unless codecarbon's offline table knows it.

    Checked up front because codecarbon only logs an unknown country and then reports no
    emissions, which would surface as a confusing failure later."""
    from codecarbon.input import DataSource

    known = DataSource().get_global_energy_mix_data()
    if code not in known:
        raise ValueError(
            f"{setting} {code!r} is not in codecarbon's offline energy-mix table; "
            f"use a 3-letter ISO code such as 'DNK', 'DEU', 'USA' ({len(known)} known)."
        )


class LogCapture(logging.Handler):
    """Collects codecarbon's warnings for the report instead of printing them."""

    def __init__(self, limit: int = 200) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []
        self._limit = limit  # a tracker alive for hours must not grow without bound

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.messages) < self._limit:
            self.messages.append(record.getMessage().strip())

    def detach_console(self) -> None:
        # The tracker constructor installs its own stderr handler; drop it.
        logging.getLogger(CODECARBON_LOGGER).handlers = [self]


@contextlib.contextmanager
def captured_codecarbon_log():
    logger = logging.getLogger(CODECARBON_LOGGER)
    saved_level, saved_handlers = logger.level, list(logger.handlers)
    capture = LogCapture()
    # ERROR until the tracker sets its own level: its constructor chats at
    # INFO/WARNING ("offline tracker init", "multiple instances allowed").
    logger.setLevel(logging.ERROR)
    logger.handlers = [capture]
    try:
        yield capture
    finally:
        logger.setLevel(saved_level)
        logger.handlers = saved_handlers


def read_mode(tracker) -> MeasurementMode:
    """What ``tracker`` measured with; meaningful once it has started (hardware is detected then)."""
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
            cpu_measured = cpu_method in CPU_COUNTER_MODES
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


