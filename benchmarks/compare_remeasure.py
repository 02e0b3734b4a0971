"""Re-measure a ``bmrs compare`` directory's ratios and check them against the spread it states.

    python -m benchmarks.compare_remeasure COMPARE_DIR [--out FILE] [--scratch DIR]
        [--rounds N] [--window-s S] [--repeats N]

For every finished run of the comparison (``compare.json``'s methods x seeds, at
``<label>/seed<k>/`` as ``pipeline.compare.plan.run_dir`` lays them out; the shared ``dense/``
folder is no run; unfinished, failed and degraded runs are skipped, as the comparison's means leave
them out) the run's own ``dense.onnx`` and ``model.onnx`` are copied to a scratch folder and
measured again by the flow's own stages under the run's own ``config.json``:
``steps.latency_stage`` (the dense/pruned p50 speed-up on the ONNX Runtime provider the report
headlines, at the smallest and largest batch the comparison shows) and
``energy.inference_energy_stage`` (the pruned/dense energy per 1,000 inferences at the largest batch
measured, alternating windows). PyTorch eager timing is left out (``latency.torch_devices=[]``): it
is not among the compared ratios, and ONNX Runtime is timed before it in the flow, so its settings
are untouched. Nothing is written into the run directories.

Stated figures: per method label the comparison's ``report.json`` (its group holding the label's
runs, ``metrics`` mean and sample std over seeds) when COMPARE_DIR has one; otherwise, and for a
figure that report lacks (the energy ratio), the same ``aggregate`` over each run's ``report.json``.

The rule, per method and ratio: the re-measured mean over the label's runs lies within

    stated mean +- max(2 * stated std over seeds, stated range)

where the stated range is the largest distance, over the label's runs, from a run's stated value
to the far end of its own stated min-max (the energy ratio's ``ratio_min``/``ratio_max`` over its
rounds; the speed-up's ``speedup_p50_min``/``_max`` over blocks of its interleaved repeats,
``benchmarks.latency_report.SPEEDUP_BLOCKS``; 0 for a run measured before speed-ups stated one). When that tolerance is 0 (one seed and no
range) no spread is stated and the verdict is ``null``, not a pass or a failure.

Writes the JSON (``--out``; default ``benchmarks/results/compare_default/remeasure.json`` for
``runs/default/compare``) and a Markdown table beside it (same name, ``.md``). ``--rounds``,
``--window-s`` and ``--repeats`` replace the runs' settings for a quick check only; the output says
so. Exit status 0 once written (the verdicts are in the output), 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_COMPARE_DIR = REPO / "runs" / "default" / "compare"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "compare_default" / "remeasure.json"
ENERGY_RATIO = "energy_ratio"
# Keys a comparison report may carry its energy ratio under; absent, the runs' reports give it.
_COMPARISON_RATIO_KEYS = ("energy_ratio", "energy_ratio_pruned_dense")


def speedup_key(batch: int) -> str:
    return f"speedup_p50_b{batch}"


def _number(value: Any) -> float | None:
    from pipeline.reporting.text import number

    return number(value)


# ---------------------------------------------------------------- pure: the stated figures and the rule


def run_stated(report: Mapping[str, Any], runtime: str | None, batches: Sequence[int]) -> dict[str, dict[str, Any]]:
    """One run's stated ratios from its report.json: per ratio {value, low, high} (low/high: its own range, if any)."""
    from pipeline.reporting import figures as fig

    out: dict[str, dict[str, Any]] = {}
    for batch in batches:
        out[speedup_key(batch)] = {"value": fig.latency_value(report, runtime, batch, "speedup_p50"),
                                   "low": fig.latency_value(report, runtime, batch, "speedup_p50_min"),
                                   "high": fig.latency_value(report, runtime, batch, "speedup_p50_max")}  # fmt: skip
    energy_batches = fig.inference_energy_batches(report)
    if energy_batches:
        row = fig.section(report, "energy", "inference", "by_batch", str(energy_batches[-1])) or {}
        out[ENERGY_RATIO] = {"value": _number(row.get("ratio_pruned_dense")), "low": _number(row.get("ratio_min")),
                             "high": _number(row.get("ratio_max")), "batch": energy_batches[-1]}  # fmt: skip
    return out


def stated_range(per_run: Sequence[Mapping[str, Any]]) -> float:
    """The largest distance from a run's stated value to the far end of its own min-max range (0 without ranges)."""
    widths = [max(entry["value"] - entry["low"], entry["high"] - entry["value"]) for entry in per_run
              if all(_number(entry.get(key)) is not None for key in ("value", "low", "high"))]  # fmt: skip
    return max(widths, default=0.0)


def within_spread(stated_mean: float | None, stated_std: float | None, spread: float, remeasured_mean: float | None) -> dict[str, Any]:
    """The module docstring's rule: the accepted interval and whether ``remeasured_mean`` lies in it.
    ``within`` is None when either mean is missing or no spread is stated (tolerance 0)."""
    tolerance = max(2.0 * (_number(stated_std) or 0.0), _number(spread) or 0.0)
    verdict: dict[str, Any] = {"tolerance": tolerance, "low": None, "high": None, "within": None, "why": None}
    if _number(stated_mean) is None or _number(remeasured_mean) is None:
        verdict["why"] = "no stated figure" if _number(stated_mean) is None else "not re-measured"
        return verdict
    verdict.update(low=stated_mean - tolerance, high=stated_mean + tolerance)
    if tolerance <= 0.0:
        verdict["why"] = "no spread stated (one seed, no per-run range)"
        return verdict
    verdict["within"] = abs(remeasured_mean - stated_mean) <= tolerance
    return verdict


def stated_group(comparison: Mapping[str, Any] | None, run_dirs: Sequence[Path]) -> Mapping[str, Any] | None:
    """The comparison report's group holding any of ``run_dirs`` (paths compared resolved); None without one."""
    if not isinstance(comparison, Mapping):
        return None
    wanted = {Path(path).resolve() for path in run_dirs}
    for group in comparison.get("groups") or []:
        if any(Path(path).resolve() in wanted for path in group.get("run_dirs") or []):
            return group
    return None


def stated_figures(per_run: Sequence[Mapping[str, Mapping[str, Any]]], group: Mapping[str, Any] | None,
                   names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Per ratio: stated mean, std, n, values (the comparison group's, else aggregated over
    ``per_run``), the runs' stated range and where the figures came from."""
    from pipeline.reporting.comparison import aggregate

    from_runs = aggregate([{name: figures[name]["value"] for name in names if name in figures} for figures in per_run])
    metrics = (group or {}).get("metrics") or {}
    out = {}
    for name in names:
        keys = _COMPARISON_RATIO_KEYS if name == ENERGY_RATIO else (name,)
        found = next((metrics[key] for key in keys if isinstance(metrics.get(key), Mapping)), None)
        stat, source = (found, "comparison report.json") if found else (from_runs.get(name), "runs' report.json")
        stat = stat or {}
        out[name] = {"mean": _number(stat.get("mean")), "std": _number(stat.get("std")), "n": stat.get("n", 0),
                     "values": list(stat.get("values") or []), "source": source if stat else None,
                     "range": stated_range([figures[name] for figures in per_run if name in figures])}  # fmt: skip
    return out


def method_row(label: str, stated: Mapping[str, Mapping[str, Any]], remeasured: Sequence[Mapping[str, float | None]]) -> dict[str, Any]:
    """One method: per ratio the stated figures, the re-measured mean/std/values and the verdict."""
    from pipeline.reporting.comparison import aggregate

    again = aggregate(remeasured)
    ratios = {}
    for name, figure in stated.items():
        measured = again.get(name) or {}
        ratios[name] = {"stated": dict(figure),
                        "remeasured": {"mean": measured.get("mean"), "std": measured.get("std"), "n": measured.get("n", 0),
                                       "values": measured.get("values", [])},
                        **within_spread(figure["mean"], figure["std"], figure["range"], measured.get("mean"))}  # fmt: skip
    return {"label": label, "ratios": ratios}


def _mean_std(stat: Mapping[str, Any], digits: int = 3) -> str:
    mean, std = _number(stat.get("mean")), _number(stat.get("std"))
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None and (stat.get("n") or 0) > 1 else "")


def _verdict(entry: Mapping[str, Any]) -> str:
    if entry["within"] is None:
        return "–"  # why: the JSON's ``why``; the notes under the table say what it means
    return ("yes" if entry["within"] else "**no**") + f" (±{entry['tolerance']:.3f})"


def markdown(result: Mapping[str, Any]) -> str:
    """The short table: per method and ratio the stated mean ± std (n), the re-measured mean and the verdict."""
    names = result["ratios"]
    titles = {name: (f"speed-up b{name.rsplit('_b', 1)[1]}" if name.startswith("speedup") else "energy ratio") for name in names}
    header = ["method"] + [f"{titles[name]} {part}" for name in names for part in ("stated (n)", "re-measured (n)", "within")]
    rows = []
    for row in result["methods"]:
        cells = [row["label"]]
        for name in names:
            entry = row["ratios"].get(name)
            if entry is None:
                cells += ["n/a"] * 3
                continue
            stated, again = entry["stated"], entry["remeasured"]
            cells += [f"{_mean_std(stated)} ({stated['n']})", f"{_mean_std(again)} ({again['n']})", _verdict(entry)]
        rows.append("| " + " | ".join(cells) + " |")
    lines = [f"# Re-measured ratios of {result['compare_dir']}", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows, "",
             f"- Rule: {result['rule']}",
             f"- Speed-up: dense p50 / pruned p50 on {result['runtime']}; energy ratio: pruned / dense J per 1,000 "
             "inferences at the largest batch measured.",
             f"- Settings: each run's own config.json{result['overrides_text']}."]  # fmt: skip
    lines.append("- within: yes/**no** with the tolerance (±); –: no verdict (one seed and no per-run range, so no "
                 "spread is stated, or a figure is missing; the JSON's `why`).")
    if result["skipped"]:
        by_why: dict[str, list[str]] = {}
        for skipped in result["skipped"]:
            by_why.setdefault(skipped["why"], []).append(f"{skipped['label']} seed {skipped['seed']}")
        lines.append("- Skipped: " + "; ".join(f"{why}: {', '.join(runs)}" for why, runs in by_why.items()) + ".")
    lines.append(f"- Command: `{result['command']}`")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- the runs and their measurement


def comparison_runs(compare_dir: Path) -> tuple[list[tuple[str, int, Path]], list[dict[str, Any]]]:
    """(label, seed, run dir) of every run included in the comparison's means, and the skipped ones with why."""
    from pipeline.reporting.load import load_run

    path = compare_dir / "compare.json"
    try:
        header = json.loads(path.read_text())
        labels = [str(method["label"]) for method in header["methods"]]
        seeds = [int(seed) for seed in header["seeds"]]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{str(path)!r} is not a readable compare.json ({type(error).__name__}: {error}); "
                         "give the folder `bmrs compare` wrote (runs/<flow>/compare)") from None
    included, skipped = [], []
    for label in labels:
        for seed in seeds:
            run_dir = compare_dir / label / f"seed{seed}"  # pipeline.compare.plan.run_dir's layout
            if not run_dir.is_dir():
                skipped.append({"label": label, "seed": seed, "why": "not started"})
                continue
            try:
                run = load_run(run_dir)
            except ValueError as error:
                skipped.append({"label": label, "seed": seed, "why": str(error)})
                continue
            missing = [name for name in ("dense.onnx", "model.onnx") if not (run_dir / name).is_file()]
            if not run.included or missing:
                why = f"{run.state}" + (f": {run.error}" if run.error else "") + (f"; no {', '.join(missing)}" if missing and run.included else "")
                skipped.append({"label": label, "seed": seed, "why": why})
                continue
            included.append((label, seed, run_dir))
    return included, skipped


def measurement_config(run_dir: Path, overrides: Mapping[str, Any]):
    """The run's FlowConfig as its stages read it, without PyTorch eager timing, with ``overrides``."""
    from pipeline.stages.resume import read_run_config

    config = read_run_config(run_dir)
    latency = replace(config.latency, torch_devices=(), **({"repeats": overrides["repeats"]} if "repeats" in overrides else {}))
    energy = replace(config.energy, track_stages=False, **{k: overrides[k] for k in ("rounds", "window_s") if k in overrides})
    return replace(config, latency=latency, energy=energy)


def remeasure_run(run_dir: Path, scratch: Path, overrides: Mapping[str, Any], runtime: str | None,
                  batches: Sequence[int], data_cache: dict[str, Any]) -> dict[str, Any]:
    """One run's ratios measured again in ``scratch`` (which gets copies of its two ONNX files)."""
    from pipeline.stages import steps
    from pipeline.stages.energy import inference_energy_stage, run_energy

    config = measurement_config(run_dir, overrides)
    key = repr(config.data)  # a frozen dataclass: equal settings, equal repr
    if key not in data_cache:
        data_cache[key] = steps.load_data(config)
    data = data_cache[key]
    scratch.mkdir(parents=True, exist_ok=True)
    for name in ("dense.onnx", "model.onnx"):
        shutil.copyfile(run_dir / name, scratch / name)
    latency = steps.latency_stage(config, data, scratch)
    figures: dict[str, Any] = {}
    rows = latency.get(runtime) or {}
    for batch in batches:
        row = rows.get(batch, rows.get(str(batch))) or {}
        figures[speedup_key(batch)] = _number(row.get("speedup_p50"))
    energy_detail: dict[str, Any] = {"available": False, "reason": "energy is disabled in this run's config"}
    if config.energy.enabled:
        with run_energy(config, scratch, resume=False) as energy:
            energy_detail = inference_energy_stage(config, data, scratch, energy)
    if energy_detail.get("available"):
        by_batch = energy_detail["by_batch"]
        figures[ENERGY_RATIO] = _number(by_batch[max(by_batch, key=int)].get("ratio_pruned_dense"))
    return {"figures": figures, "energy_reason": None if energy_detail.get("available") else energy_detail.get("reason")}


def _check_paths(compare_dir: Path, out: Path | None, scratch: Path | None) -> Path:
    if not (compare_dir / "compare.json").is_file():
        raise ValueError(f"{str(compare_dir)!r} has no compare.json; give the folder `bmrs compare` wrote (runs/<flow>/compare)")
    if out is None:
        if compare_dir.resolve() != DEFAULT_COMPARE_DIR.resolve():
            raise ValueError(f"--out FILE is needed for {str(compare_dir)!r} (the default output is only for runs/default/compare)")
        out = DEFAULT_OUT
    for what, path in (("--out", out), ("--scratch", scratch)):
        if path is not None and compare_dir.resolve() in (Path(path).resolve(), *Path(path).resolve().parents):
            raise ValueError(f"{what} {str(path)!r} lies inside the comparison {str(compare_dir)!r}, whose run "
                             "directories must not be written to; choose a folder outside it")
    return Path(out)


def remeasure(compare_dir: Path, scratch_root: Path, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every included run measured again; the JSON payload (without the command)."""
    from pipeline.reporting import figures as fig
    from pipeline.reporting.load import is_comparison_dir, load_run

    runs, skipped = comparison_runs(compare_dir)
    if not runs:
        raise ValueError(f"no finished run with its checks passed in {str(compare_dir)!r}; nothing to re-measure")
    reports = {run_dir: load_run(run_dir).report for _label, _seed, run_dir in runs}
    comparison = json.loads((compare_dir / "report.json").read_text()) if is_comparison_dir(compare_dir) else None
    runtime = (comparison or {}).get("latency", {}).get("runtime") or next(
        (r for report in reports.values() if (r := fig.ort_runtime(report.get("latency")))), None)
    batches = list((comparison or {}).get("latency", {}).get("batches") or [])
    if not batches:
        found = sorted({b for report in reports.values() for b in fig.batch_sizes(report.get("latency"), runtime)})
        batches = list(dict.fromkeys([found[0], found[-1]])) if found else []
    names = [speedup_key(batch) for batch in batches] + [ENERGY_RATIO]
    data_cache: dict[str, Any] = {}
    methods = []
    for label in dict.fromkeys(label for label, _seed, _dir in runs):
        mine = [(seed, run_dir) for run_label, seed, run_dir in runs if run_label == label]
        group = stated_group(comparison, [run_dir for _seed, run_dir in mine])
        stated_dirs = [Path(p) for p in group["run_dirs"]] if group else [run_dir for _seed, run_dir in mine]
        per_run = [run_stated(load_run(p).report or {}, runtime, batches) for p in stated_dirs if (p / "report.json").is_file()]
        again, notes = [], []
        for seed, run_dir in mine:
            print(f"re-measuring {label} seed {seed} ({run_dir})", flush=True)
            measured = remeasure_run(run_dir, scratch_root / label / f"seed{seed}", overrides, runtime, batches, data_cache)
            again.append(measured["figures"])
            if measured["energy_reason"]:
                notes.append(f"seed {seed}: energy not measured ({measured['energy_reason']})")
        row = method_row(label, stated_figures(per_run, group, names), again)
        methods.append({**row, "seeds": [seed for seed, _dir in mine], "run_dirs": [str(d) for _s, d in mine],
                        "remeasured_per_run": again, "notes": notes})  # fmt: skip
    return {"compare_dir": str(compare_dir), "runtime": runtime, "batches": batches, "ratios": names,
            "stated_from": str(compare_dir / "report.json") if comparison else "each run's report.json",
            "rule": RULE, "overrides": dict(overrides), "methods": methods, "skipped": skipped}  # fmt: skip


RULE = ("the re-measured mean over a method's runs lies within the stated mean ± max(2 × stated std over seeds, "
        "the largest distance from a run's stated value to the far end of its own stated min-max range); "
        "the energy ratio's range is its rounds' ratio_min/ratio_max, a speed-up's its blocks' speedup_p50_min/_max "
        "(none in runs measured before speed-ups stated one); a tolerance of 0 "
        "(one seed, no range) gives no verdict")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare_remeasure", description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path, metavar="COMPARE_DIR", help="the folder `bmrs compare` wrote")
    parser.add_argument("--out", type=Path, metavar="FILE", help="the JSON to write (the .md beside it)")
    parser.add_argument("--scratch", type=Path, metavar="DIR", help="keep the re-measurements' bench files here (default: a temporary folder)")
    parser.add_argument("--rounds", type=int, help="energy rounds instead of the runs' (a quick check only)")
    parser.add_argument("--window-s", type=float, help="energy window seconds instead of the runs' (a quick check only)")
    parser.add_argument("--repeats", type=int, help="latency repeats instead of the runs' (a quick check only)")
    args = parser.parse_args(argv)
    overrides = {key: value for key, value in (("rounds", args.rounds), ("window_s", args.window_s), ("repeats", args.repeats))
                 if value is not None}  # fmt: skip
    try:
        out = _check_paths(args.compare_dir, args.out, args.scratch)
        with tempfile.TemporaryDirectory(prefix="bmrs-remeasure-") as temporary:
            result = remeasure(args.compare_dir, args.scratch or Path(temporary), overrides)
    except ValueError as error:
        print(f"compare_remeasure: error: {error}", file=sys.stderr)
        return 2
    from bmrs.artifacts import json_safe, write_json

    command = "python -m benchmarks.compare_remeasure " + " ".join(sys.argv[1:] if argv is None else argv)
    overridden = ", ".join(f"{key}={value}" for key, value in overrides.items())
    result = {**result, "command": command,
              "overrides_text": f", except {overridden} (a quick check, not the runs' settings)" if overridden else ""}
    write_json(out, json_safe(result))
    text = markdown(result)
    out.with_suffix(".md").write_text(text)
    print(text)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
