"""The `toolkit-jobs` command against a real API and worker: its output for people and for
scripts, its exit codes, and `watch` run as the installed console script."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest

from tests.client.conftest import Service
from tests.helpers import BIN, ROOT, free_port, wait_until
from toolkit_jobs import Client, Page, Status
from toolkit_jobs.cli import Screen, duration, main, statuses

SCRIPT = str(BIN / "toolkit-jobs")


def run(service: Service, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `toolkit-jobs` in this process against the service; return code, stdout, stderr."""
    code = main(["--url", service.url, "--api-key", service.api_key, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def submitted(service: Service, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Submit a job with `toolkit-jobs --json submit ARGV`; return its id."""
    code, out, err = run(service, capsys, "--json", "submit", *argv)
    assert code == 0, err
    job_id: str = json.loads(out)["job_id"]
    return job_id


def cli_env(service: Service, **extra: str) -> dict[str, str]:
    """Return an environment naming the service the way a user's shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOOLKIT_JOBS_")}
    env.pop("API_KEY", None)
    return {
        **env,
        "TOOLKIT_JOBS_URL": service.url,
        "TOOLKIT_JOBS_API_KEY": service.api_key,
        **extra,
    }


class Lines:
    """Read a stream in a thread, so a test can wait for lines with a deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.text = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream.fileno(),), daemon=True)
        self._thread.start()

    def _read(self, fd: int) -> None:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # a pty's reader gets EIO once the other side has closed
                return
            if not chunk:
                return
            with self._lock:
                self.text += chunk.decode(errors="replace")

    def now(self) -> str:
        """Return everything read so far."""
        with self._lock:
            return self.text

    def join(self) -> None:
        """Wait for the end of the stream."""
        self._thread.join(timeout=10)


@contextlib.contextmanager
def watching(
    argv: list[str], env: dict[str, str], stdout: Any
) -> Iterator[subprocess.Popen[bytes]]:
    """Run the console script with `argv`; kill it on the way out if it still runs."""
    proc = subprocess.Popen(
        [SCRIPT, *argv],
        env=env,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
        if proc.stdout is not None:
            proc.stdout.close()


# --- without a service -----------------------------------------------------------------------


def test_the_installed_console_script_and_module_show_help() -> None:
    """`toolkit-jobs --help` and `python -m toolkit_jobs --help` exit 0 and list the exit codes."""
    for argv in ([SCRIPT, "--help"], [sys.executable, "-m", "toolkit_jobs", "--help"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert done.returncode == 0, done.stderr
        for needed in ("submit", "status", "watch", "wait", "exit codes", "TOOLKIT_JOBS_URL"):
            assert needed in done.stdout


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("90", 90), ("1.5m", 90)],
)
def test_durations_read_as_seconds(text: str, seconds: float) -> None:
    """--since reads 30s, 10m, 2h, 1d and plain seconds as seconds."""
    assert duration(text) == seconds


def test_statuses_read_comma_separated_and_refuse_unknown_ones() -> None:
    """--status takes a comma-separated list of the five statuses and refuses any other."""
    assert statuses("failed,canceled") == [Status.FAILED, Status.CANCELED]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown status finished"):
        statuses("done,finished")


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["submit", "echo", "{not json"], "not valid JSON"),
        (["submit", "echo", "[1, 2]"], "must be a JSON object"),
        (["status", "--since", "ten minutes"], "not a duration"),
        (["status", "--status", "finished"], "unknown status finished"),
        (["status", "some-job", "--since", "1m"], "drop JOB_ID"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2_with_a_message(
    capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    """Bad arguments (invalid JSON, a bad duration or status) exit 2 and say what is wrong."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--api-key", "k", *argv]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert "Traceback" not in err


def test_no_api_key_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --api-key, TOOLKIT_JOBS_API_KEY or API_KEY the command exits 2 naming them."""
    for name in ("TOOLKIT_JOBS_API_KEY", "API_KEY"):
        monkeypatch.delenv(name, raising=False)
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["status"]) == 2
    assert "TOOLKIT_JOBS_API_KEY" in err.getvalue()


def test_connection_refused_exits_5_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    """A URL nothing listens on exits 5 with one line on stderr, no traceback."""
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "--api-key", "k", "status", "a-job"]) == 5
    err = capsys.readouterr().err
    assert err.startswith("toolkit-jobs: error: cannot reach") and "connection refused" in err
    assert "Traceback" not in err


def test_the_watch_screen_keeps_the_latest_status_most_recent_last() -> None:
    """On a terminal, watch shows each job once, its latest status, the latest change last, and
    only as many rows as fit."""
    screen = Screen("http://service")
    screen.add(Page({"a": Status.QUEUED, "b": Status.QUEUED}, "c1", 100.0, None, 0))
    screen.add(Page({"c": Status.RUNNING, "a": Status.DONE}, None, 101.0, None, 0))
    drawn = screen.draw(os.terminal_size((80, 5))).removeprefix("\x1b[H\x1b[J").splitlines()
    assert "3 jobs" in drawn[0]
    rows = [line.split()[:2] for line in drawn[2:]]
    assert rows == [["c", "running"], ["a", "done"]]  # 5 lines hold 2 rows: b scrolled away
    assert drawn[1].split() == ["JOB", "ID", "STATUS", "SEEN"]


# --- against the service ---------------------------------------------------------------------


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_submit_then_wait_exits_0_and_prints_the_result(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit` then `wait` exits 0 and prints the job done with its result, for people and JSON."""
    code, out, err = run(service, capsys, "submit", "echo", '{"greeting": "hi"}')
    assert code == 0, err
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["status"] == "queued" and fields["task"] == "echo"
    job_id = fields["job_id"]

    code, out, _ = run(service, capsys, "wait", job_id, "--timeout", "30s")
    assert code == 0
    assert "done" in out and '{"greeting": "hi"}' in out

    code, out, _ = run(service, capsys, "--json", "wait", job_id)
    assert code == 0
    described = json.loads(out)
    assert described["job_status"] == "done" and described["result"] == {"greeting": "hi"}


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_submit_reads_the_payload_from_stdin(
    service: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`submit echo -` takes its payload from standard input."""
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"from": "stdin"}'))
    job_id = submitted(service, capsys, "echo", "-")
    code, out, _ = run(service, capsys, "--json", "wait", job_id, "--timeout", "30")
    assert code == 0
    assert json.loads(out)["result"] == {"from": "stdin"}


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_wait_exit_codes_tell_failed_canceled_and_timed_out(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """`wait` exits 1 for a failed job, 3 for a canceled one, 4 when its timeout passes first."""
    failing = submitted(service, capsys, "fail", '{"message": "on purpose"}')
    code, out, _ = run(service, capsys, "wait", failing, "--timeout", "30")
    assert code == 1
    assert "failed" in out and "on purpose" in out

    sleeping = submitted(service, capsys, "sleep", '{"seconds": 60}')
    code, out, err = run(service, capsys, "wait", sleeping, "--timeout", "0.5")
    assert code == 4
    assert f"job {sleeping} is still" in err
    code, _, err = run(service, capsys, "cancel", sleeping)
    assert code == 0, err
    code, out, _ = run(service, capsys, "--json", "wait", sleeping, "--timeout", "30")
    assert code == 3
    assert json.loads(out)["job_status"] == "canceled"

    code, out, _ = run(service, capsys, "retry", failing)
    assert code == 0
    assert run(service, capsys, "wait", failing, "--timeout", "30")[0] == 1


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_a_wrong_key_exits_5_with_the_servers_message(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """A wrong key exits 5 with the server's "Unauthorized" on stderr and no traceback."""
    code = main(["--url", service.url, "--api-key", "wrong", "status", "any-job"])
    out, err = capsys.readouterr()
    assert code == 5
    assert err == "toolkit-jobs: error: Unauthorized (HTTP 401)\n"
    assert out == ""


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_an_unknown_task_exits_5_with_the_servers_message(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """Submitting a task not in the catalog exits 5 with the server's message."""
    code, _, err = run(service, capsys, "submit", "no-such-task")
    assert code == 5
    assert "unknown task 'no-such-task' (HTTP 400)" in err


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_status_lists_changes_as_a_table_and_as_json(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """`status` without a job lists the window's jobs (pages followed), as a table or JSON; with
    --status only those; with a job id, its details."""
    done = [submitted(service, capsys, "echo", json.dumps({"n": n})) for n in range(3)]
    failed = submitted(service, capsys, "fail", '{"message": "listed"}')
    with Client(service.url, service.api_key) as toolkit:
        for job_id in [*done, failed]:
            toolkit.wait(job_id, timeout=30)

    code, out, _ = run(service, capsys, "status", "--since", "10m", "--limit", "2")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["JOB", "ID", "STATUS"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:-1]}
    assert {job_id: rows[job_id] for job_id in done} == dict.fromkeys(done, "done")
    assert rows[failed] == "failed"
    assert lines[-1] == f"{len(rows)} jobs"

    code, out, _ = run(service, capsys, "--json", "status", "--since", "10m", "--limit", "2")
    assert code == 0
    answer = json.loads(out)
    assert answer["changes"] == rows
    assert isinstance(answer["server_time"], float)

    code, out, _ = run(
        service, capsys, "status", "--json", "--since", "10m", "--status", "failed,canceled"
    )
    assert code == 0
    assert failed in json.loads(out)["changes"]
    assert set(json.loads(out)["changes"].values()) <= {"failed", "canceled"}

    code, out, _ = run(service, capsys, "status", done[0])
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["job_id"] == done[0] and fields["status"] == "done"
    assert fields["result"] == '{"n": 0}' and fields["progress"] == "100%"


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_watch_json_prints_a_line_per_change_and_exits_0_on_ctrl_c(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """`toolkit-jobs --json watch` (the console script, URL and key from the environment)
    prints one JSON line per change as jobs change, and exits 0 on SIGINT without a traceback."""
    # The window reaches back: the job may end before the command's first read.
    argv = ["--json", "watch", "--since", "1m", "--task", "echo", "--interval", "0.2"]
    with watching(argv, cli_env(service), subprocess.PIPE) as proc:
        assert proc.stdout is not None
        lines = Lines(proc.stdout)
        job_id = submitted(service, capsys, "echo", '{"watched": true}')

        def seen() -> list[dict[str, Any]]:
            # Whole lines only: the last one may still be on its way.
            changes = [json.loads(line) for line in lines.now().split("\n")[:-1]]
            ended = any(c["job_id"] == job_id and c["status"] == "done" for c in changes)
            return changes if ended else []

        changes = wait_until(seen, timeout=30)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert proc.stderr is not None
        assert proc.stderr.read() == b""
        lines.join()
    assert all(set(change) == {"job_id", "status", "server_time"} for change in changes)
    ours = [change["status"] for change in changes if change["job_id"] == job_id]
    # Each line names a job with its status at the read; the job's last line says done.
    assert ours[-1] == "done"
    assert set(ours) <= {"queued", "running", "done"}
    assert all(isinstance(change["server_time"], float) for change in changes)


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_watch_on_a_terminal_redraws_a_table(
    service: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal `watch` redraws a table holding each job's latest status; Ctrl-C exits 0."""
    controller, terminal = os.openpty()
    env = cli_env(service, COLUMNS="120", LINES="20")
    try:
        argv = ["watch", "--since", "1m", "--interval", "0.2"]
        with watching(argv, env, terminal) as proc:
            os.close(terminal)
            terminal = -1
            screen = Lines(io.FileIO(controller, closefd=False))
            job_id = submitted(service, capsys, "echo", '{"on": "a terminal"}')

            def drawn() -> str:
                frames = screen.now().split("\x1b[H\x1b[J")
                return frames[-1] if re.search(rf"{job_id}\s+done", frames[-1]) else ""

            frame = wait_until(drawn, timeout=30)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=10) == 0
            assert proc.stderr is not None
            assert proc.stderr.read() == b""
    finally:
        os.close(controller)
        if terminal >= 0:
            os.close(terminal)
    assert "JOB ID" in frame and "STATUS" in frame
    assert frame.count(job_id) == 1
