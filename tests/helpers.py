"""Helpers for every test: waiting, Redis, the service's real processes, and its HTTP answers."""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import redis
from flask.testing import FlaskClient
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from rq import Queue, Worker
from rq.job import Job, JobStatus
from werkzeug.test import TestResponse

from shared import index as index_module
from shared import keys
from shared.index import StatusIndex
from shared.queue import MemoryBudget
from shared.status import Status, from_rq

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
API_KEY = "test-key-0123456789"
# A Standard Webhooks secret (whsec_ + base64 of 32 bytes) the tests sign and verify with.
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

AUTH = {"x-api-key": API_KEY}

JOBS = "/v1/toolkit/jobs"
JOBS_STATUS = "/v1/toolkit/jobs/status"
JOB_STATUS = "/v1/toolkit/job/status"
JOB_CANCEL = "/v1/toolkit/job/cancel"
JOB_RETRY = "/v1/toolkit/job/retry"
AUTHENTICATE = "/v1/toolkit/authenticate"
METRICS = "/metrics"
ENVELOPE_FIELDS = (
    "code",
    "id",
    "job_id",
    "response",
    "message",
    "run_time",
    "queue_time",
    "total_time",
    "pid",
    "queue_id",
    "queue_length",
    "build_number",
)
# The real servers the end-to-end tests start listen here; one request waits at most TIMEOUT.
HOST = "127.0.0.1"
TIMEOUT = 10.0

# What a test sees of a job: (its status in the index, RQ's own status).
Observed = tuple[Status | None, JobStatus]
# One /metrics scrape: (sample name, sorted label pairs) -> value.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# --- waiting ---------------------------------------------------------------------------------


def plain_id(value: object) -> str:
    """Return a parameter id of printable ASCII without brackets, from `value`'s repr: pytest
    escapes other ids, and such a node id cannot be named on its command line (mutmut does)."""
    text = repr(value)
    return "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in "[]\\" else "_" for ch in text
    )


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.05) -> T:
    """Return the first truthy value of `predicate()`, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- Redis -----------------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on a unix socket in a temporary folder."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.url = f"unix://{self.socket}"
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed: run `make test`, which installs it"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client()
        wait_until(lambda: _pings(client), timeout=10)
        client.close()
        return self

    def client(self, **kwargs: Any) -> redis.Redis:
        """Return a client of this server."""
        return redis.Redis(unix_socket_path=str(self.socket), socket_timeout=5, **kwargs)

    def stop(self) -> None:
        """Stop the server (SIGTERM), waiting for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


# A reserved result large beside what a small job takes (about 1 KB), so that how many jobs a
# memory budget admits is exact.
RESULT_BYTES = 1_000_000
BUDGET = MemoryBudget(percent=80, result_bytes=RESULT_BYTES)


def room_for(conn: redis.Redis, results: float) -> None:
    """Set maxmemory so that `results` more of BUDGET's reserved results fit under its percent."""
    used = int(conn.info("memory")["used_memory"])
    conn.config_set("maxmemory", int((used + results * RESULT_BYTES) * 100 / BUDGET.percent))


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False


def indexed(conn: redis.Redis, job_id: str) -> tuple[Status, int] | None:
    """Return the indexed status of `job_id` and its score (µs of Redis time), if any."""
    with conn.pipeline(transaction=False) as pipe:
        for status in Status:
            pipe.zscore(keys.status_index_key(status), job_id)
        scores = pipe.execute()
    for status, score in zip(Status, scores, strict=True):
        if score is not None:
            return status, int(score)
    return None


def index_view(conn: redis.Redis) -> dict[str, Status]:
    """Return every indexed job with its status, read from the five sets."""
    view: dict[str, Status] = {}
    for status in Status:
        for member in conn.zrange(keys.status_index_key(status), 0, -1):
            assert member.decode() not in view, f"{member!r} is in two status sets"
            view[member.decode()] = status
    return view


def rq_view(conn: redis.Redis) -> dict[str, Status]:
    """Return every job RQ holds, its RQ status mapped to ours.

    RQ's job keys are `rq:job:<id>` (the `:dependents` and `:dependencies` sets beside them are
    not jobs), and RQ reads a hash without `data` as no job at all (`Job.restore`).
    """
    view: dict[str, Status] = {}
    prefix = Job.redis_job_namespace_prefix
    for key in conn.scan_iter(match=f"{prefix}*", count=1000):
        job_id = key.decode().removeprefix(prefix)
        if ":" in job_id:
            continue
        rq_status = conn.hget(key, "status")
        if rq_status is not None and conn.hexists(key, "data"):
            view[job_id] = from_rq(rq_status.decode())
    return view


def index_status(conn: redis.Redis, job_id: str) -> Status | None:
    """Return the job's status in the index, if indexed."""
    entry = indexed(conn, job_id)
    return entry[0] if entry is not None else None


def record(index: StatusIndex, job_id: str, rq_status: JobStatus) -> None:
    """Record `rq_status` for `job_id` in `index` in a transaction of its own."""
    with index.connection.pipeline() as pipe:
        index_module.record(pipe, job_id, rq_status)
        pipe.execute()


def queue_length(conn: redis.Redis, queue: str = "default") -> int:
    """Return how many jobs wait in RQ's list for `queue`."""
    return int(conn.llen(keys.rq_queue_key(queue)))


def error_of(conn: redis.Redis, job_id: str) -> str:
    """Return the exception text RQ stored for the job's latest run."""
    result = Job.fetch(job_id, connection=conn).latest_result()
    assert result is not None
    return str(result.exc_string)


# --- the service's processes -----------------------------------------------------------------


def service_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Return the environment for a service process of the project."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "API_KEY", "PORT")}
    env.update(
        REDIS_URL=redis_url,
        API_KEY=API_KEY,
        WEBHOOK_SECRET=WEBHOOK_SECRET,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        MAINTENANCE_INTERVAL="1",
    )
    env.update(overrides)
    return env


def default_env(redis_url: str, **overrides: str) -> dict[str, str]:
    """Return a service environment that leaves MAINTENANCE_INTERVAL at the service default."""
    env = service_env(redis_url, **overrides)
    del env["MAINTENANCE_INTERVAL"]
    return env


class Process:
    """A project process (gunicorn or a worker) whose output goes to a log file.

    The log goes to `log_dir`, else to `Process.log_dir` (the test session points it under
    pytest's temporary directory), else to the system's temporary directory.
    """

    log_dir: ClassVar[Path | None] = None

    def __init__(
        self, argv: list[str], env: dict[str, str], name: str, log_dir: Path | None = None
    ) -> None:
        self.name = name
        directory = log_dir or Process.log_dir
        handle, path = tempfile.mkstemp(prefix=f"{name}-", suffix=".log", dir=directory)
        os.close(handle)
        self.log = Path(path)
        with self.log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        """Return what the process has written so far."""
        return self.log.read_text(errors="replace")

    def signal(self, signum: int) -> None:
        """Send `signum` to the process."""
        self.popen.send_signal(signum)

    def stop(self, timeout: float = 15) -> None:
        """Stop the process group with SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=5)
            except ProcessLookupError:
                pass


def start_api(
    env: dict[str, str], port: int, workers: int = 2, ready_path: str = "/health"
) -> Process:
    """Start gunicorn serving the API on 127.0.0.1:`port`; wait until `ready_path` answers 200.

    `/health` needs Redis; `/v1/toolkit/authenticate` (sent with the key) does not.
    """
    proc = Process(
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "api:create_app()",
        ],
        env,
        name=f"api-{port}",
    )
    try:
        wait_healthy(proc, port, path=ready_path)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_worker(env: dict[str, str], name: str = "worker") -> Process:
    """Start `python -m worker` with `env`."""
    return Process([sys.executable, "-m", "worker"], env, name=name)


def worker_argv(clock_offset: str | None = None) -> list[str]:
    """Return the argv of `python -m worker`, under `faketime -f OFFSET` when one is given."""
    argv = [sys.executable, "-m", "worker"]
    if clock_offset is None:
        return argv
    # Both clocks are shifted: with --exclude-monotonic, libfaketime 0.9.10 still shifts the
    # deadline of clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME), and time.sleep() fails with
    # EINVAL. Shifted, a lock's timeout never comes instead (sem_clockwait() is not translated),
    # which only hangs the worker's last step on shutdown: see `running_tree`'s `grace`.
    return ["faketime", "-f", clock_offset, *argv]


def start_skewed_worker(env: dict[str, str], clock_offset: str, name: str) -> Process:
    """Start a worker whose clock is off by `clock_offset` (faketime syntax, e.g. "+7m")."""
    clear_stale_faketime_files()
    return Process(worker_argv(clock_offset), env, name=name)


SHM = Path("/dev/shm")
FAKETIME_FILE_RE = re.compile(r"(?:sem\.faketime_sem_|faketime_shm_)(\d+)")


def clear_stale_faketime_files() -> list[Path]:
    """Remove the semaphore and shared memory files of faketime wrappers no longer running;
    return them.

    The wrapper names both after its pid and creates them exclusively: when one is killed (a
    test's teardown ends every descendant) its files stay, and a later wrapper given the same
    pid exits at once ("sem_open: File exists").
    """
    removed = []
    for path in SHM.glob("*faketime_*"):
        match = FAKETIME_FILE_RE.fullmatch(path.name)
        if match and not alive(int(match.group(1))):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


@contextlib.contextmanager
def running(*processes: Process) -> Iterator[None]:
    """Stop `processes` on the way out, whatever happened."""
    try:
        yield
    finally:
        for proc in processes:
            proc.stop()


@contextlib.contextmanager
def running_tree(*workers: Process, grace: float = 10) -> Iterator[None]:
    """Like `running`, but end every descendant too: RQ's work-horses and faketime's child.

    A horse leads a process group of its own, so stopping the worker's group misses it; and a
    warm shutdown would wait for the horse's job. Horses are killed first, then the worker is
    stopped, then whatever of its tree lingers after `grace` seconds is killed.
    """
    try:
        yield
    finally:
        for proc in workers:
            tree = descendant_pids(proc.popen.pid) if proc.popen.poll() is None else []
            for pid in tree:
                with contextlib.suppress(ProcessLookupError):
                    if os.getpgid(pid) != proc.popen.pid:
                        os.kill(pid, signal.SIGKILL)
            proc.stop()
            try:
                wait_until(lambda tree=tree: not any(map(alive, tree)), timeout=grace)
            except AssertionError:
                for pid in filter(alive, tree):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """Return whether process `pid` still exists (and is not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """Return the live processes whose parent is `pid`, read from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name, in parentheses, may hold spaces: the fields after it are fixed.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            children.append(int(entry.name))
    return children


def work_horses(pid: int) -> list[int]:
    """Return the children of worker `pid` running a job (RQ titles them "... Processing ...").

    A worker's other children, RQ's scheduler and the repair loop, never carry that title.
    """
    horses = []
    for child in child_pids(pid):
        try:
            title = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:  # the process ended while we looked
            continue
        if b"Processing " in title:
            horses.append(child)
    return horses


def descendant_pids(pid: int) -> list[int]:
    """Return the live descendants of `pid` (children first)."""
    found, frontier = [], [pid]
    while frontier:
        children = [child for parent in frontier for child in child_pids(parent)]
        found.extend(children)
        frontier = children
    return found


def kill_children(proc: Process) -> None:
    """SIGKILL the children of `proc` (a forking worker's work-horse has its own group)."""
    for child in child_pids(proc.popen.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


# The RQ workers each `python -m worker` registers (and blocks in Redis's BLPOP): the job
# worker and its webhook delivery worker.
WORKERS_PER_PROCESS = 2


def job_workers(conn: redis.Redis, queue: str = "default") -> list[Worker]:
    """Return the live RQ workers of `queue` (not their webhook delivery workers)."""
    return Worker.all(connection=conn, queue=Queue(queue, connection=conn))


def kill_outright(proc: Process) -> float:
    """SIGKILL a forking worker and its work-horse, as a power cut would; return when (monotonic).

    RQ's work-horse calls setpgrp(), so killing the worker's process group does not reach it:
    a horse left alive would finish the job itself. The worker goes first, so that nothing is
    left to notice the horse's death and fail the job the ordinary way. The webhook delivery
    worker's horses (grandchildren) go too.
    """
    horses = descendant_pids(proc.popen.pid)
    os.killpg(proc.popen.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    for horse in horses:
        with contextlib.suppress(ProcessLookupError):
            os.kill(horse, signal.SIGKILL)
    proc.popen.wait(timeout=10)
    return killed_at


def wait_for(proc: Process, predicate: Callable[[], object], timeout: float = 10.0) -> object:
    """Return the first truthy `predicate()` while `proc` stays alive; else fail with its log."""

    def check() -> object:
        assert proc.popen.poll() is None, f"{proc.name} exited early"
        return predicate()

    try:
        return wait_until(check, timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {proc.name} log ---\n{proc.output()}") from None


def worker_running(conn: redis.Redis, job_id: str, workers: list[Process]) -> Process:
    """Return the one of `workers` whose RQ worker has taken `job_id`."""
    name = Job.fetch(job_id, connection=conn).worker_name
    pids = {w.name: w.pid for w in Worker.all(connection=conn)}
    assert name in pids, f"job {job_id} names worker {name!r}, not one of {sorted(pids)}"
    matches = [proc for proc in workers if proc.popen.pid == pids[name]]
    assert len(matches) == 1, f"no started process has pid {pids[name]}"
    return matches[0]


# --- answers of the app under Flask's test client --------------------------------------------


def assert_envelope(resp: TestResponse, code: int, queue_id: str = "default") -> dict[str, Any]:
    """Assert `resp` is a JSON envelope with HTTP status `code`; return the parsed body."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == code, text
    assert resp.mimetype == "application/json", resp.content_type
    body = json.loads(text, parse_constant=_reject_constant)
    assert isinstance(body, dict), text
    missing = [field for field in ENVELOPE_FIELDS if field not in body]
    assert not missing, f"envelope lacks {missing}: {text}"
    assert body["code"] == code
    assert isinstance(body["message"], str) and body["message"]
    for field in ("run_time", "queue_time", "total_time"):
        value = body[field]
        assert isinstance(value, int | float) and not isinstance(value, bool), (field, value)
        assert math.isfinite(value) and value >= 0, (field, value)
    assert math.isclose(body["total_time"], body["run_time"] + body["queue_time"], abs_tol=2e-4), (
        body
    )
    # The test client runs the app in this very process.
    assert body["pid"] == os.getpid()
    assert body["queue_id"] == queue_id
    length = body["queue_length"]
    assert length is None or (isinstance(length, int) and length >= 0), length
    assert isinstance(body["build_number"], str) and body["build_number"]
    assert body["job_id"] is None or isinstance(body["job_id"], str)
    return body


def _reject_constant(name: str) -> Any:
    raise AssertionError(f"the response is not strict JSON: it contains {name}")


def post(client: FlaskClient, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
    """POST `body` as JSON (no body when None) with the API key, unless headers are given."""
    kwargs.setdefault("headers", AUTH)
    if body is not None:
        kwargs["json"] = body
    return client.post(path, **kwargs)


def describe_job(client: FlaskClient, job_id: str) -> dict[str, Any]:
    """Return the `response` of POST /v1/toolkit/job/status for `job_id`, asserting a 200."""
    body = assert_envelope(post(client, JOB_STATUS, {"job_id": job_id}), 200)
    assert body["job_id"] == job_id
    assert body["message"] == "success"
    response: dict[str, Any] = body["response"]
    return response


def run_rq(server: RedisServer, args: list[str], **env: str) -> str:
    """Run RQ's own `rq` command with `args` (and the service's environment plus `env`) against
    the test Redis; assert it succeeds and return its output."""
    done = subprocess.run(
        [str(BIN / "rq"), *args],
        env=service_env(server.url, **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def submit(client: FlaskClient, task: str = "echo", payload: Any = None, **fields: Any) -> str:
    """Submit `task` with `payload`, assert it is accepted, and return the job id."""
    body: dict[str, Any] = {"task": task, "payload": payload or {}, **fields}
    reply = assert_envelope(post(client, JOBS, body), 202)
    job_id: str = reply["job_id"]
    return job_id


def scrape(client: FlaskClient, headers: dict[str, str] = AUTH) -> Samples:
    """GET /metrics, assert a 200 in Prometheus' text format, and return every sample."""
    resp = client.get(METRICS, headers=headers)
    text = resp.get_data(as_text=True)
    assert resp.status_code == 200, text
    assert resp.content_type == CONTENT_TYPE_LATEST
    return parse_samples(text)


def parse_samples(text: str) -> Samples:
    """Return every sample of a Prometheus text exposition, parsed by prometheus-client."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


# --- answers of a real server over HTTP (127.0.0.1 only) -------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: status, headers (lower-case names), decoded JSON body, seconds taken."""

    status: int
    headers: dict[str, str]
    body: Any
    elapsed: float
    content_type: str


def call(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = API_KEY,
    content_type: str = "application/json",
    timeout: float = TIMEOUT,
) -> Reply:
    """Send one request (`body` as JSON) to 127.0.0.1:`port` and return its decoded answer."""
    headers = {"Accept": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = content_type
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        elapsed = time.monotonic() - started
        content_type = resp.getheader("Content-Type", "")
        answer_headers = {name.lower(): value for name, value in resp.getheaders()}
        status = resp.status
    finally:
        conn.close()
    decoded = json.loads(raw) if content_type.startswith("application/json") else raw
    return Reply(status, answer_headers, decoded, elapsed, content_type)


def post_job(port: int, task: str, payload: dict[str, Any], **extra: Any) -> Reply:
    """Submit a job of `task` with `payload` to the API at `port`; return the answer as it is."""
    return call(port, "POST", JOBS, {"task": task, "payload": payload, **extra})


def submit_ok(port: int, task: str, payload: dict[str, Any]) -> str:
    """Submit a job, assert it was accepted with 202, and return its id."""
    reply = post_job(port, task, payload)
    assert reply.status == 202, reply.body
    job_id: str = reply.body["job_id"]
    return job_id


def job_status(port: int, job_id: str) -> Reply:
    """Return the answer of POST /v1/toolkit/job/status for `job_id`."""
    return call(port, "POST", JOB_STATUS, {"job_id": job_id})


def jobs_status(port: int, since_seconds: float = 600) -> Reply:
    """Return the answer of POST /v1/toolkit/jobs/status over the last `since_seconds`."""
    return call(port, "POST", JOBS_STATUS, {"since_seconds": since_seconds})


def wait_finished(port: int, job_id: str, timeout: float = 30) -> dict[str, Any]:
    """Poll one job until it is done or failed; return its description."""

    def finished() -> dict[str, Any] | None:
        reply = job_status(port, job_id)
        assert reply.status == 200, reply.body
        described: dict[str, Any] = reply.body["response"]
        return described if described["job_status"] in ("done", "failed") else None

    return wait_until(finished, timeout=timeout, interval=0.1)


def wait_healthy(proc: Process, port: int, timeout: float = 30, path: str = "/health") -> None:
    """Wait until `proc` answers 200 on `path` (sent with the key), failing if it exits."""

    def healthy() -> bool:
        assert proc.popen.poll() is None, f"{proc.name} exited:\n{proc.output()}"
        try:
            return call(port, "GET", path, timeout=2).status == 200
        except OSError:
            return False

    wait_until(healthy, timeout=timeout, interval=0.1)


def assert_fast_envelope(
    reply: Reply, status: int, message_start: str, within: float = 5.0
) -> None:
    """Assert `reply` is a JSON envelope with `status`, a message starting so, within seconds."""
    assert reply.content_type.startswith("application/json"), reply.body
    assert reply.status == status, reply.body
    assert reply.body["code"] == status, reply.body
    assert reply.body["message"].startswith(message_start), reply.body["message"]
    assert reply.elapsed < within, f"took {reply.elapsed:.2f}s"


@dataclass(frozen=True)
class Hit:
    """One request a Receiver got: its path, headers (names lower-cased) and body."""

    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return json.loads(self.body)


class Receiver:
    """A webhook receiver on loopback: records every POST and answers as scripted.

    `answers` is consumed one per request: an int is a status code to answer, "hang" holds the
    connection open without answering (until the receiver stops); once it runs out, `then`
    answers every further request.
    """

    def __init__(self, answers: list[int | str] | None = None, then: int | str = 200) -> None:
        import http.server
        import threading

        self.hits: list[Hit] = []
        self.answers = list(answers or [])
        self.then = then
        self._stop = threading.Event()
        self._lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                with receiver._lock:
                    receiver.hits.append(Hit(self.path, headers, body, time.monotonic()))
                    answer = receiver.answers.pop(0) if receiver.answers else receiver.then
                if answer == "hang":
                    receiver._stop.wait()
                    return
                self.send_response(int(answer))
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """Return the URL to give as webhook_url (loopback: needs WEBHOOK_ALLOW_PRIVATE)."""
        return f"http://127.0.0.1:{self.server.server_port}/hook"

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
