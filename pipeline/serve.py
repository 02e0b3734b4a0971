"""`bmrs serve`: the flows of flows.yaml that carry a ``schedule`` become Prefect deployments,
served by Prefect's ``serve`` until Ctrl-C or SIGTERM.

Each scheduled run is the Prefect flow ``scheduled_run`` in a process of its own (Prefect's runner
starts it) and calls what `bmrs run flows.yaml --flow NAME --no-progress` calls,
``pipeline.cli.run_flow``: a run directory of its own, its report, status.json and key line, read
from flows.yaml as it is when the run starts (a changed ``schedule`` takes effect at the next
`bmrs serve`).

Prefect's ephemeral server never schedules, so without ``PREFECT_API_URL`` a real server is started
(``pipeline.server``), its home in ``<runs_dir>/.prefect-server/``; with it, that server is used
once it answers. Everything is checked before anything starts; nothing started outlives
`bmrs serve`: the server is stopped at exit and killed with it, and each run's process arms the
same parent-death signal (``pipeline.lifetime``), so ``kill -9`` of `bmrs serve` ends them too.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from prefect import flow

if TYPE_CHECKING:
    from pipeline.config import FlowConfig

SERVER_HOME = ".prefect-server"  # in the runs directory: the server's SQLite database and log
SERVE_PID_VARIABLE = "BMRS_SERVE_PID"  # tells each run's process which process it must die with
SCHEDULE_EXAMPLE = "schedule: {cron: '0 2 * * *', timezone: Europe/Copenhagen} or schedule: {interval: 1h}"


@flow(name="bmrs-scheduled", persist_result=False)
def scheduled_run(flows_file: str, flow_name: str) -> int:
    """One scheduled run of ``flow_name``: `bmrs run flows_file --flow flow_name --no-progress`."""
    from pipeline.cli import EXIT_DEGRADED, run_flow
    from pipeline.lifetime import die_with_parent

    serve_pid = os.environ.get(SERVE_PID_VARIABLE)
    if serve_pid is not None:
        die_with_parent(int(serve_pid))
    code = run_flow(flows_file, flow_name, ["train.progress=false"])
    if code not in (0, EXIT_DEGRADED):  # the run said why on stderr; Prefect marks this run failed
        raise RuntimeError(f"bmrs run of flow {flow_name!r} ended with exit code {code}")
    return code


def scheduled_flows(path: str, names: list[str] | None) -> list[FlowConfig]:
    """The flows to serve: ``names`` (each must have a schedule), or every flow of the file that has one."""
    from pipeline.config import ConfigError, load_flow, read_flows

    flows = read_flows(path)
    if names:
        configs = [load_flow(path, name) for name in dict.fromkeys(names)]
        for config in configs:
            if config.schedule is None:
                raise ConfigError(
                    f"flow {config.name!r} in {path} has no schedule; add {SCHEDULE_EXAMPLE} to it, "
                    "or leave --flow out to serve every flow that has one"
                )
        return configs
    scheduled = [name for name, tree in flows.items() if isinstance(tree, Mapping) and tree.get("schedule") is not None]
    if not scheduled:
        raise ConfigError(f"no flow in {path} has a schedule; add {SCHEDULE_EXAMPLE} to the flows to serve")
    return [load_flow(path, name) for name in scheduled]


def _fail(message: str) -> int:
    from pipeline.cli import EXIT_BAD_INPUT

    print(f"bmrs: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def serve_from_args(args: argparse.Namespace) -> int:
    from pipeline.cli import check_runnable
    from pipeline.config import ConfigError
    from pipeline.lifetime import Terminated, sigterm_raises
    from pipeline.server import ServerError, check_answers, check_port_free, prefect_server

    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # a service's log: each line as it happens
    try:
        configs = scheduled_flows(args.flows, args.flow_names)
    except ConfigError as error:
        return _fail(str(error))
    if args.limit < 1:
        return _fail(f"--limit {args.limit}: at least one run must be allowed at a time; give --limit 1 or more")
    for config in configs:  # what a scheduled run would refuse, refused now rather than at 2 am
        problem = check_runnable(config)
        if problem is not None:
            return _fail(f"flow {config.name!r}: {problem}")
    api_url = os.environ.get("PREFECT_API_URL", "").strip()
    if api_url and args.port is not None:
        return _fail(f"--port is for the server bmrs serve starts, but PREFECT_API_URL={api_url} names one; drop --port or unset PREFECT_API_URL")
    if not api_url and args.port is not None:
        try:
            check_port_free(args.port)
        except ServerError as error:
            return _fail(str(error))
    flows_file = str(Path(args.flows).resolve())
    try:
        with sigterm_raises():  # until Prefect's runner takes SIGTERM over, it unwinds like Ctrl-C
            if api_url:
                check_answers(api_url)
                return _serve(configs, flows_file, api_url, args.limit)
            home = Path(configs[0].output.runs_dir) / SERVER_HOME
            print(f"bmrs: starting a Prefect server (home {home}, log {home / 'server.log'})")
            with prefect_server(home, args.port) as started_url:
                code = _serve(configs, flows_file, started_url, args.limit)
            print("bmrs: the Prefect server is stopped")
            return code
    except ServerError as error:
        return _fail(str(error))
    except (KeyboardInterrupt, Terminated) as stop:
        print(f"bmrs: stopped ({'Ctrl-C' if isinstance(stop, KeyboardInterrupt) else stop}) before serving; nothing left running")
        return 0


def _serve(configs: list[FlowConfig], flows_file: str, api_url: str, limit: int) -> int:
    """Prefect's ``serve`` over one deployment per flow, until Ctrl-C or SIGTERM: both stop the
    runs in progress (each ends ``failed`` in its status.json, resumable) and pause the schedules."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.types.entrypoint import EntrypointType

    # Each run's process inherits the environment; this process's Prefect settings were read at import.
    os.environ["PREFECT_API_URL"] = api_url
    os.environ[SERVE_PID_VARIABLE] = str(os.getpid())
    os.environ.setdefault("PYTHONUNBUFFERED", "1")  # the runs' lines reach the log as they happen too
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        deployments = [
            scheduled_run.to_deployment(
                config.name,
                schedule=config.schedule.to_prefect(),
                parameters={"flows_file": flows_file, "flow_name": config.name},
                paused=False,  # a previous `bmrs serve` paused it on its way out
                description=f"bmrs run {flows_file} --flow {config.name}, {config.schedule.describe()}",
                entrypoint_type=EntrypointType.MODULE_PATH,  # importable from any working directory
            )
            for config in configs
        ]
        for config in configs:
            print(f"bmrs: serving flow {config.name!r}, {config.schedule.describe()}, into "
                  f"{Path(config.output.runs_dir) / config.name}/<run-id>/")  # fmt: skip
        print(f"bmrs: Prefect API {api_url} (UI {api_url.removesuffix('/api')}); Ctrl-C or SIGTERM stops serving")
        serve(*deployments, limit=limit, print_starting_message=False)
    print("bmrs: stopped serving; the schedules are paused until the next bmrs serve")
    return 0
