"""`toolkit-jobs`: submit jobs, read their status, watch the change feed, wait for an end."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from toolkit_jobs.client import (
    Client,
    JobInfo,
    Page,
    Status,
    Submitted,
    ToolkitError,
    WaitTimeoutError,
)

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_PAGE = 100

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_CANCELED = 3
EXIT_TIMED_OUT = 4
EXIT_ERROR = 5
EXIT_INTERRUPTED = 130
END_CODES = {Status.DONE: EXIT_DONE, Status.FAILED: EXIT_FAILED, Status.CANCELED: EXIT_CANCELED}

# On a terminal, `watch` keeps at most this many jobs (the latest changed) and shows what fits.
WATCH_KEPT = 1000
# Lines of the screen the table does not use: the title, the header, the cursor's line.
WATCH_CHROME = 3

EPILOG = """\
environment:
  TOOLKIT_JOBS_URL      the service's URL (default http://127.0.0.1:8080)
  TOOLKIT_JOBS_API_KEY  the API key (else API_KEY)

exit codes:
  0  success; for `wait`, the job is done
  1  `wait`: the job failed
  2  usage error (bad arguments, invalid JSON, no API key)
  3  `wait`: the job was canceled
  4  `wait`: the job had not ended when --timeout passed
  5  the service answered with an error, or could not be reached (the message on stderr)
  130  interrupted (Ctrl-C); `watch` exits 0
"""

DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)")
UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# --- argument types (pure) -------------------------------------------------------------------


def duration(text: str) -> float:
    """Return the seconds of a duration such as 30s, 10m, 2h, 1d or 90 (seconds)."""
    match = DURATION.fullmatch(text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 30s, 10m, 2h, 1d)")
    return float(match.group(1)) * UNITS[match.group(2)]


def statuses(text: str) -> list[Status]:
    """Return the statuses of a comma-separated list such as "failed,canceled"."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    known = [status.value for status in Status]
    wrong = [name for name in names if name not in known]
    if wrong or not names:
        raise argparse.ArgumentTypeError(
            f"unknown status {', '.join(wrong) or repr(text)}: choose from {', '.join(known)}"
        )
    return [Status(name) for name in names]


def payload(text: str) -> dict[str, Any]:
    """Return the JSON object of a payload argument ("-": read from standard input)."""
    source = "standard input" if text == "-" else "the JSON argument"
    try:
        value = json.loads(sys.stdin.read() if text == "-" else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"the payload must be a JSON object, not {value!r:.50}")
    return value


def page_size(text: str) -> int:
    """Return a page size: an integer from 1 to 1000."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"not a page size from 1 to 1000: {text!r}")
    return value


def positive(text: str) -> float:
    """Return a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


# --- the parser ------------------------------------------------------------------------------


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """Return the parser of `toolkit-jobs`, its defaults taken from `env`."""
    parser = argparse.ArgumentParser(
        prog="toolkit-jobs",
        description="Submit jobs to toolkit-jobs, read their status, watch changes, wait.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--url",
        default=env.get("TOOLKIT_JOBS_URL") or DEFAULT_URL,
        help="the service's URL (env TOOLKIT_JOBS_URL; default %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=env.get("TOOLKIT_JOBS_API_KEY") or env.get("API_KEY"),
        help="the API key (env TOOLKIT_JOBS_API_KEY, else API_KEY)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON, for scripts")
    parser.add_argument(
        "--timeout",
        type=positive,
        default=10.0,
        dest="http_timeout",
        metavar="SECONDS",
        help="seconds each request may take, before the command (default %(default)s)",
    )
    # The same options after the command; given there, they win.
    late = argparse.ArgumentParser(add_help=False)
    late.add_argument("--url", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    late.add_argument("--api-key", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    late.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON, for scripts"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    submit = commands.add_parser(
        "submit", parents=[late], help="submit a job", description="Submit a job of TASK."
    )
    submit.add_argument("task", metavar="TASK")
    submit.add_argument(
        "payload",
        metavar="JSON",
        nargs="?",
        type=payload,
        help="the payload, a JSON object ('-' reads it from standard input; default {})",
    )
    submit.add_argument("--job-id", help="name the job (a named submission runs once)")
    submit.add_argument("--idempotency-key", help="run once per key (sent as Idempotency-Key)")
    submit.add_argument("--webhook-url", help="POST the job's end to this URL")
    submit.set_defaults(run=run_submit)

    status = commands.add_parser(
        "status",
        parents=[late],
        help="one job's details, or the jobs that changed",
        description="With JOB_ID, one job's details; without, every job whose latest change "
        "lies in the window (--since), oldest change first.",
    )
    status.add_argument("job_id", metavar="JOB_ID", nargs="?")
    _filters(status)
    status.add_argument(
        "--limit",
        type=page_size,
        default=DEFAULT_PAGE,
        help="jobs per request (1 to 1000, default %(default)s); every page is read",
    )
    status.set_defaults(run=run_status)

    watch = commands.add_parser(
        "watch",
        parents=[late],
        help="follow the changes live",
        description="Follow the change feed: on a terminal, a table of each job's latest "
        "status, most recent last; otherwise (or with --json) one line per change.",
    )
    _filters(watch)
    watch.add_argument(
        "--interval", type=positive, default=2.0, help="seconds between polls (default 2)"
    )
    watch.set_defaults(run=run_watch, limit=DEFAULT_PAGE)

    wait = commands.add_parser(
        "wait",
        parents=[late],
        help="wait for a job's end",
        description="Wait until the job ends; the exit code tells how: 0 done, 1 failed, "
        "3 canceled, 4 still going when --timeout passed.",
    )
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument(
        "--timeout",
        type=duration,
        dest="wait_timeout",
        metavar="DURATION",
        help="give up after this long (30s, 10m, 2h or seconds; default: never)",
    )
    wait.set_defaults(run=run_wait)

    cancel = commands.add_parser("cancel", parents=[late], help="cancel or stop a job")
    cancel.add_argument("job_id", metavar="JOB_ID")
    cancel.set_defaults(run=run_cancel)

    retry = commands.add_parser("retry", parents=[late], help="run a failed or canceled job again")
    retry.add_argument("job_id", metavar="JOB_ID")
    retry.set_defaults(run=run_retry)
    return parser


def _filters(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--since",
        type=duration,
        help="how far back to look: 30s, 10m, 2h, 1d or seconds (the server's default: 10m)",
    )
    command.add_argument(
        "--status",
        type=statuses,
        action="append",
        help="only jobs with this status (repeat it, or separate with commas)",
    )
    command.add_argument("--queue", help="only jobs of this queue")
    command.add_argument("--task", help="only jobs of this task")


# --- the commands ----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run `toolkit-jobs` with `argv` (else the command line); return its exit code."""
    parser = build_parser(os.environ)
    try:
        args = parser.parse_args(argv)
        if not args.api_key:
            parser.error("no API key: give --api-key or set TOOLKIT_JOBS_API_KEY (or API_KEY)")
    except SystemExit as exc:
        # argparse exits on --help (0) and on usage errors (2): main() returns instead.
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[Client, argparse.Namespace], int] = args.run
    try:
        with Client(args.url, args.api_key, timeout=args.http_timeout) as client:
            return run(client, args)
    except UsageError as exc:
        sys.stderr.write(f"toolkit-jobs {args.command}: error: {exc}\n")
        return EXIT_USAGE
    except ToolkitError as exc:
        sys.stderr.write(f"toolkit-jobs: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        if args.command == "watch":
            sys.stdout.write("\n" if sys.stdout.isatty() else "")
            return EXIT_DONE
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and let nothing flush into the pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_DONE


class UsageError(Exception):
    """An argument argparse accepted but the command cannot use."""


def run_submit(client: Client, args: argparse.Namespace) -> int:
    """Submit the job; print its id and status."""
    submitted = client.submit(
        args.task,
        args.payload or {},
        job_id=args.job_id,
        idempotency_key=args.idempotency_key,
        webhook_url=args.webhook_url,
    )
    if args.json:
        _say(json.dumps(submitted_json(submitted)))
    else:
        _say(_pairs(submitted_rows(submitted)))
    return EXIT_DONE


def run_status(client: Client, args: argparse.Namespace) -> int:
    """Print one job's details, or every job that changed in the window, as a table."""
    if args.job_id is not None:
        if _filtered(args):
            raise UsageError("--since, --status, --queue and --task list jobs: drop JOB_ID")
        _show(client.status(args.job_id), args.json)
        return EXIT_DONE
    latest: dict[str, Status] = {}
    server_time = None
    for page in client.pages(**_query(args), limit=args.limit):
        for job_id, status in page.changes.items():
            # A job that changed again while we read is listed again: keep its latest, last.
            latest.pop(job_id, None)
            latest[job_id] = status
        server_time = page.server_time
    if args.json:
        _say(json.dumps({"changes": latest, "server_time": server_time}))
    elif latest:
        _say(table(["JOB ID", "STATUS"], [[job_id, status] for job_id, status in latest.items()]))
        _say(f"{len(latest)} job{'s' if len(latest) != 1 else ''}")
    else:
        _say("no job changed in the window")
    return EXIT_DONE


def run_watch(client: Client, args: argparse.Namespace) -> int:
    """Follow the changes until interrupted: a live table on a terminal, else lines."""

    def retrying(error: ToolkitError) -> None:
        sys.stderr.write(f"toolkit-jobs: {error}; asking again in {args.interval:g} s\n")

    pages = client.pages(
        **_query(args),
        limit=args.limit,
        follow=True,
        interval=args.interval,
        on_error=retrying,
    )
    if not args.json and sys.stdout.isatty():
        screen = Screen(client.url)
        for page in pages:
            screen.add(page)
            _say(screen.draw(shutil.get_terminal_size()), end="")
        return EXIT_DONE  # pragma: no cover - follow never ends
    for page in pages:
        for job_id, status in page.changes.items():
            if args.json:
                change = {"job_id": job_id, "status": status, "server_time": page.server_time}
                _say(json.dumps(change))
            else:
                _say(f"{_clock(page.server_time)}  {job_id}  {status}")
    return EXIT_DONE  # pragma: no cover - follow never ends


def run_wait(client: Client, args: argparse.Namespace) -> int:
    """Wait for the job's end; print it; exit with the code of that end."""
    try:
        info = client.wait(args.job_id, timeout=args.wait_timeout)
    except WaitTimeoutError as exc:
        _show(exc.last, args.json)
        sys.stderr.write(f"toolkit-jobs: {exc}\n")
        return EXIT_TIMED_OUT
    _show(info, args.json)
    return END_CODES[info.status]


def run_cancel(client: Client, args: argparse.Namespace) -> int:
    """Cancel the job; print its state after the request."""
    _show(client.cancel(args.job_id), args.json)
    return EXIT_DONE


def run_retry(client: Client, args: argparse.Namespace) -> int:
    """Queue the failed or canceled job again; print its state."""
    _show(client.retry(args.job_id), args.json)
    return EXIT_DONE


def _filtered(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in ("since", "status", "queue", "task"))


def _query(args: argparse.Namespace) -> dict[str, Any]:
    """Return the change-feed filters of the command line, leaving out those not given."""
    wanted = [status for group in args.status for status in group] if args.status else None
    return {
        "since_seconds": args.since,
        "status": list(dict.fromkeys(wanted)) if wanted else None,
        "queue": args.queue,
        "task": args.task,
    }


# --- output (pure, but for _say) -------------------------------------------------------------


def _say(text: str, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def _show(info: JobInfo, as_json: bool) -> None:
    _say(json.dumps(info.raw) if as_json else _pairs(job_rows(info)))


def submitted_json(submitted: Submitted) -> dict[str, Any]:
    """Return what `submit --json` prints."""
    return {
        "job_id": submitted.job_id,
        "task": submitted.task,
        "status": submitted.status,
        "queue_length": submitted.queue_length,
        "location": submitted.location,
        "replayed": submitted.replayed,
    }


def submitted_rows(submitted: Submitted) -> list[tuple[str, str]]:
    """Return the lines `submit` prints for people."""
    rows = [("job_id", submitted.job_id), ("status", submitted.status.value)]
    rows.append(("task", submitted.task or "-"))
    if submitted.queue_length is not None:
        rows.append(("queue length", str(submitted.queue_length)))
    if submitted.replayed:
        rows.append(("replayed", "yes: this name was submitted before"))
    return rows


def job_rows(info: JobInfo) -> list[tuple[str, str]]:
    """Return the lines one job's details print as, for people."""
    raw = info.raw
    rows = [
        ("job_id", info.job_id),
        ("status", info.status.value),
        ("task", info.task or "-"),
        ("queue", info.queue or "-"),
        ("created", raw.get("created_at") or "-"),
        ("started", raw.get("started_at") or "-"),
        ("ended", raw.get("ended_at") or "-"),
        ("progress", "-" if info.progress is None else f"{info.progress:g}%"),
    ]
    if "result" in raw:
        rows.append(("result", json.dumps(info.result)))
    if info.error is not None:
        rows.append(("error", info.error))
    if info.webhook is not None:
        rows.append(("webhook", json.dumps(info.webhook)))
    return rows


def _pairs(rows: Iterable[tuple[str, str]]) -> str:
    rows = list(rows)
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return `rows` under `header` as left-aligned columns."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    lines = [header, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _clock(server_time: float) -> str:
    return datetime.fromtimestamp(server_time).strftime("%H:%M:%S")


class Screen:
    """The live table of `watch` on a terminal: each job's latest status, most recent last."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latest: dict[str, tuple[Status, float]] = {}
        self.server_time: float | None = None

    def add(self, page: Page) -> None:
        """Take in a page of changes, keeping the WATCH_KEPT most recently changed jobs."""
        for job_id, status in page.changes.items():
            self.latest.pop(job_id, None)
            self.latest[job_id] = (status, page.server_time)
        for job_id in list(self.latest)[: max(0, len(self.latest) - WATCH_KEPT)]:
            del self.latest[job_id]
        self.server_time = page.server_time

    def draw(self, size: os.terminal_size) -> str:
        """Return the screen: clear, a title, then the latest rows that fit the terminal."""
        fits = max(1, size.lines - WATCH_CHROME)
        shown = list(self.latest.items())[-fits:]
        at = _clock(self.server_time) if self.server_time is not None else "-"
        title = f"{self.url}  {len(self.latest)} jobs  at {at}  (Ctrl-C quits)"
        rows = [[job_id, status.value, _clock(seen)] for job_id, (status, seen) in shown]
        body = table(["JOB ID", "STATUS", "SEEN"], rows)
        # Home, clear to the end of the screen, then the frame, each line cut to the width.
        lines = [title, *body.splitlines()]
        return "\x1b[H\x1b[J" + "\n".join(line[: size.columns] for line in lines) + "\n"
