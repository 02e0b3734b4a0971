"""Where the runs of a sweep (``bmrs compare --workers N`` / ``--dask-address ADDRESS``) execute: a
local Dask cluster sized to this machine's cores, or an existing cluster. The Prefect flow that
submits the runs is ``pipeline.sweep_flow``; this module holds the choice, its checks and the
cluster's lifetime, and imports Dask only when a cluster is used.

Local cluster (``--workers N``): ``min(N, runs to make, cores)`` worker processes of one thread
each, so that each runs one run at a time, and each run's torch uses ``cores // workers``
threads: concurrent runs never ask for more threads than there are cores (on 2 cores, 2 workers of
1 torch thread each). Processes, not threads, because torch's thread count and random state are
per process, and runs must not share them. The cluster binds 127.0.0.1, has no dashboard and no
memory limit (Dask would kill a worker training a large model), and none of the nanny's default
``MALLOC_TRIM_THRESHOLD_=65536``: set, it fixes glibc's mmap threshold at 128 KiB, so every large
tensor is mapped and unmapped afresh and each training step spends its time in page faults (ResNet-20
trained about 3x slower per CPU second in such a worker: ``benchmarks.dask_worker_speed``). A value
the user exported is still inherited. It ends with this process: its
scheduler runs inside it, and each worker process exits as soon as the pipe to its parent closes
(Dask's own guard), ``kill -9`` included.

Existing cluster (``--dask-address``): checked before anything is written. Something must answer
at the address (a TCP probe, then Dask's handshake), at least one worker must join within
``WORKERS_TIMEOUT_S``, and every worker must run this very code (same ``pipeline.cache`` code
version), see the comparison folders at the same paths (a shared file system: runs write their
directories there) and reach the Prefect API this process uses. Each fails with one line naming
the fix. Each worker process runs one run at a time, whatever its thread count (``pipeline.sweep_flow``):
start workers with ``dask worker ADDRESS --nworkers K --nthreads 1`` for K runs at once on a machine;
each run's torch then uses that machine's cores divided by its K worker processes. A worker whose
process has Dask's ``MALLOC_TRIM_THRESHOLD_`` gets a note line with the fix (start it with
``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_: null`` in its Dask config; an
environment variable cannot say it, Dask lower-cases their keys): it works, about 3x slower.
"""
from __future__ import annotations

import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Dask's INFO lines (workers starting, connections) would bury the runs' own lines; set before Dask
# is imported, here and, by inheritance, in the local workers.
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")

PROBE_TIMEOUT_S = 5.0  # a TCP connect to the scheduler
CONNECT_TIMEOUT_S = 30.0  # Dask's handshake once the port answers
WORKERS_TIMEOUT_S = 60.0  # for the first worker of an existing cluster to be there
TRIM_VARIABLE = "MALLOC_TRIM_THRESHOLD_"
TRIM_SETTING = f"distributed.nanny.pre-spawn-environ.{TRIM_VARIABLE}"  # Dask's nanny sets it to 65536 by default
DASK_EXAMPLE = "start one with `dask scheduler` and `dask worker tcp://HOST:8786`, or use --workers N for a local cluster"


class SweepError(ValueError):
    """The cluster cannot be used; nothing has been run or written."""


@dataclass(frozen=True)
class ClusterChoice:
    workers: int | None = None  # --workers: a local cluster of at most this many worker processes
    address: str | None = None  # --dask-address: an existing cluster

    @classmethod
    def checked(cls, *, workers: int | None, address: str | None) -> ClusterChoice:
        """Refuse (``ValueError``, one line) a worker count below 1 or an address Dask cannot read."""
        if workers is not None and workers < 1:
            raise ValueError(f"--workers {workers}: a local cluster needs at least 1 worker; give --workers 1 or more, "
                             "or leave it out to run the runs one after another")  # fmt: skip
        if address is not None:
            host_port(address)
        return cls(workers, address)


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of a ``tcp://host:port`` (or ``host:port``) address; None for another of Dask's
    protocols (``tls://``, ``ucx://``), which only Dask itself can probe. ``ValueError`` when unreadable."""
    text = address.strip()
    parsed = urllib.parse.urlsplit(text if "://" in text else f"tcp://{text}")
    if parsed.scheme != "tcp":
        return None
    try:
        port = parsed.port
    except ValueError:
        port = None
    if not parsed.hostname or port is None:
        raise ValueError(f"--dask-address {address!r} is not an address; give the scheduler's, e.g. tcp://10.0.0.5:8786")
    return parsed.hostname, port


def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class LocalPlan:
    workers: int
    threads: int  # torch threads of each run
    cores: int

    def describe(self) -> str:
        return (f"a local Dask cluster of {self.workers} worker process{'es' if self.workers > 1 else ''}, one run at a time "
                f"each, {self.threads} torch thread{'s' if self.threads > 1 else ''} per run ({self.cores} cores)")  # fmt: skip


def plan_local(requested: int, runs: int, cores: int) -> LocalPlan:
    """No more workers than runs to make or cores; the cores shared out between them."""
    workers = max(1, min(requested, runs, cores))
    return LocalPlan(workers, max(1, cores // workers), cores)


@dataclass(frozen=True)
class Cluster:
    address: str  # the scheduler's
    api_url: str  # the Prefect API the sweep and its workers report to
    threads: dict[str, int] = field(default_factory=dict)  # torch threads of a run, per worker address
    default_threads: int = 1  # for a worker that joined after the check

    def threads_here(self) -> int:
        """In a worker: how many torch threads a run there uses."""
        from distributed import get_worker

        return self.threads.get(get_worker().address, self.default_threads)


@contextmanager
def dask_cluster(choice: ClusterChoice, runs: int, start_api: Callable[[], str], paths: list[str]) -> Iterator[Cluster]:
    """The cluster ``choice`` names, for the block: a local one started (and closed after), or an
    existing one checked (``SweepError``) and left running, as it was found. ``start_api`` starts
    (or names) the Prefect API and returns its URL: called once the cluster answers, so that an
    unreachable address fails with nothing started."""
    if choice.address is None:
        with local_cluster(plan_local(choice.workers or 1, runs, usable_cores()), start_api()) as cluster:
            yield cluster
        return
    yield _existing_cluster(choice.address, start_api, paths)


def worker_environment(threads: int, api_url: str) -> dict[str, str]:
    """What a local worker process is given besides this process's environment (and, unless told
    otherwise, the nanny's own additions)."""
    return {"DASK_LOGGING__DISTRIBUTED": "error", "PREFECT_API_URL": api_url,
            **dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), str(threads))}  # fmt: skip


@contextmanager
def local_cluster(plan: LocalPlan, api_url: str) -> Iterator[Cluster]:
    """A local cluster of ``plan``'s workers for the block (what ``--workers N`` starts), closed after."""
    import dask
    from distributed import LocalCluster

    print(f"bmrs: starting {plan.describe()}")
    with dask.config.set({TRIM_SETTING: None}):  # None: not set in the workers (see the module's docstring)
        cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None, memory_limit=0, env=worker_environment(plan.threads, api_url))  # fmt: skip
    try:
        yield Cluster(cluster.scheduler_address, api_url, {}, plan.threads)
    finally:
        cluster.close()


def _existing_cluster(address: str, start_api: Callable[[], str], paths: list[str]) -> Cluster:
    where = host_port(address)
    if where is not None:
        try:
            socket.create_connection(where, timeout=PROBE_TIMEOUT_S).close()
        except OSError as error:
            raise SweepError(f"--dask-address {address}: nothing answers there ({error.strerror or error}); {DASK_EXAMPLE}") from None
    from distributed import Client
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as error:
        raise SweepError(f"--dask-address {address}: not a Dask scheduler, or it did not answer ({error}); {DASK_EXAMPLE}") from None
    try:
        try:
            client.wait_for_workers(1, timeout=WORKERS_TIMEOUT_S)
        except TimeoutError:
            raise SweepError(f"--dask-address {address}: the scheduler has no workers after {WORKERS_TIMEOUT_S:g} s; "
                             f"start some with `dask worker {address}`") from None  # fmt: skip
        api_url = start_api()
        try:
            facts = client.run(worker_facts, paths, api_url)
        except ImportError as error:
            raise SweepError(f"--dask-address {address}: a worker cannot import this project ({error}); install it on every "
                             "worker's machine (pip install -e .) and restart the workers") from None  # fmt: skip
    finally:
        client.close()
    return Cluster(address, api_url, check_workers(address, facts, api_url), 1)


def worker_facts(paths: list[str], api_url: str) -> dict[str, Any]:
    """Run on each worker: what it can see of this sweep (no torch, nothing written)."""
    from pipeline.cache import code_version
    from pipeline.server import health_problem

    return {"cores": usable_cores(), "code": code_version(), "host": socket.gethostname(),
            "missing": [path for path in paths if not Path(path).exists()], "api": health_problem(api_url),
            "malloc_trim": os.environ.get(TRIM_VARIABLE)}  # fmt: skip


def check_workers(address: str, facts: dict[str, dict[str, Any]], api_url: str) -> dict[str, int]:
    """``SweepError`` for the first worker that cannot take part; else torch threads per run, per worker."""
    from pipeline.cache import code_version

    for worker, fact in sorted(facts.items()):
        if fact["code"] != code_version():
            raise SweepError(f"--dask-address {address}: worker {worker} runs other code (code version {fact['code']}, "
                             f"here {code_version()}); install this very version on every worker and restart it")  # fmt: skip
        if fact["missing"]:
            raise SweepError(f"--dask-address {address}: worker {worker} ({fact['host']}) does not see {fact['missing'][0]}; "
                             "the runs directory and the data must be on one shared file system, at the same path on every machine "
                             "(relative paths resolve in each worker's working directory)")  # fmt: skip
        if fact["api"] is not None:
            raise SweepError(f"--dask-address {address}: worker {worker} cannot reach the Prefect API {api_url} ({fact['api']}); "
                             "start `prefect server start --host 0.0.0.0` and set PREFECT_API_URL=http://THIS-HOST:4200/api "
                             "here before bmrs compare")  # fmt: skip
    per_host: dict[str, int] = {}  # worker processes per machine: each runs one run at a time (pipeline.sweep_flow)
    for fact in facts.values():
        per_host[fact["host"]] = per_host.get(fact["host"], 0) + 1
    trimming = sorted(worker for worker, fact in facts.items() if fact.get("malloc_trim") is not None)
    if trimming:  # works, only slower: a note, not a refusal
        value = facts[trimming[0]]["malloc_trim"]
        print(f"bmrs: note: {len(trimming)} of {len(facts)} workers ({trimming[0]}, ...) run with {TRIM_VARIABLE}={value} "
              "(Dask's nanny default), which makes torch training about 3x slower (benchmarks.dask_worker_speed); "
              f"restart them with {TRIM_SETTING}: null in their Dask config (a YAML file in DASK_CONFIG's folder, "
              "docs/configuration.md)")  # fmt: skip
    return {worker: max(1, fact["cores"] // per_host[fact["host"]]) for worker, fact in facts.items()}
