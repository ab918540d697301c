"""Day-one commands on running services: logs, exec, restart, stats, events.

    service logs / stack logs   every task's lines, merged in time order
    service exec                a command in one of the service's containers
    service restart / task restart
    service stats / stats       CPU, memory, network and block I/O, live
    events                      what happens in the cluster

logs, exec, stats and events are streaming calls (:mod:`pyswarm.rpc`,
:func:`stream`); the manager does the merging and relaying, this module
only prints. ``service``'s and ``stack``'s commands are added to their
groups by :func:`add_service_commands` / :func:`add_stack_commands`.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import json
import os
import re
import signal
import sys
import threading
import time
from typing import Any, TextIO

from pyswarm import rpc
from pyswarm.cli import common
from pyswarm.errors import UsageError

COLOURS = (32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96)


def stream(method: str, params: dict[str, Any]) -> rpc.StreamCall:
    """A streaming call to the manager (looked up at call time, like :func:`common.call`),
    on this invocation's connection: this host's socket or SSH (docs/remote.md)."""
    return rpc.StreamCall(common.connection(), method, params)


# -- times ---------------------------------------------------------------------


def parse_time(text: str, now: float | None = None) -> int:
    """``--since``/``--until``: a duration before now (``10m``, ``1h30m``),
    RFC 3339 (``2026-12-01T09:00:00.123456789Z``, ``2026-12-01``) or Unix
    time (``1764579600``, ``1764579600.5``) → nanoseconds since the epoch,
    exactly (a float would round a line's own timestamp off by ~100 ns)."""
    from pyswarm.compose.units import parse_duration

    value = text.strip()
    m = re.fullmatch(r"(\d{9,})(\.\d{1,9})?", value)
    if m:
        return int(m.group(1)) * 1_000_000_000 + _frac_ns(m.group(2))
    m = re.fullmatch(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(\.\d+)?)?)?(Z|[+-]\d\d:?\d\d)?", value)
    if m:
        y, mo, d, h, mi, s, frac, tz = m.groups()
        fields = (int(y), int(mo), int(d), int(h or 0), int(mi or 0), int(s or 0))
        if tz is None:  # local time, as Docker reads it
            seconds = int(time.mktime((*fields, 0, 0, -1)))
        else:
            seconds = calendar.timegm((*fields, 0, 0, 0))
            if tz != "Z":
                sign = 1 if tz[0] == "+" else -1
                digits = tz[1:].replace(":", "")
                seconds -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
        return seconds * 1_000_000_000 + _frac_ns(frac)
    try:
        ago = parse_duration(value)
    except ValueError:
        raise UsageError(f"invalid time {text!r}: give a duration (10m, 1h30m), "
                         "RFC 3339 (2026-12-01T09:00:00Z) or Unix time") from None
    return int(((time.time() if now is None else now) - ago) * 1e9)


def _frac_ns(frac: str | None) -> int:
    return int((frac[1:] + "000000000")[:9]) if frac else 0


def rfc3339(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{frac:09d}Z"


# -- logs --------------------------------------------------------------------


class LogPrinter:
    """Formats merged lines: ``service.slot.task@node | line`` (stderr lines
    to stderr), a colour per task on a terminal. Lines come as
    ``[task_id, t, stream, text]``; each task's service, slot and node come
    once, in the item that first has its lines."""

    def __init__(self, args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.raw = args.raw
        self.timestamps = args.timestamps
        self.no_task_ids = args.no_task_ids
        self.no_trunc = args.no_trunc
        self.out, self.err = out, err
        self.colour = out.isatty() and not os.environ.get("NO_COLOR")
        self._prefixes: dict[str, str] = {}
        self._colours: dict[str, int] = {}
        self._width = 0

    def add_tasks(self, tasks: dict[str, Any]) -> None:
        for task_id, t in tasks.items():
            slot = t["slot"] if isinstance(t["slot"], int) else str(t["slot"])[:12]
            name = f"{t['service']}.{slot}"
            if not self.no_task_ids:
                name += "." + (task_id if self.no_trunc else task_id[:12])
            self._prefixes[task_id] = f"{name}@{t['node']}"
            self._colours[task_id] = COLOURS[len(self._colours) % len(COLOURS)]
            self._width = max(self._width, len(self._prefixes[task_id]))

    def format(self, row: list[Any]) -> str:
        task_id, t, _, text = row
        if self.timestamps:
            text = f"{rfc3339(int(t))} {text}"
        if self.raw:
            return str(text)
        prefix = self._prefixes.get(task_id, task_id[:12]).ljust(self._width)
        if self.colour:
            prefix = f"\x1b[{self._colours.get(task_id, 0)}m{prefix}\x1b[0m"
        return f"{prefix} | {text}"

    def write(self, item: dict[str, Any]) -> None:
        self.add_tasks(item.get("tasks") or {})
        out: list[str] = []
        for row in item["lines"]:
            text = self.format(row) + "\n"
            if row[2] == "stderr":
                if out:
                    self.out.write("".join(out))
                    out = []
                    self.out.flush()
                self.err.write(text)
                self.err.flush()
            else:
                out.append(text)
        if out:
            self.out.write("".join(out))
            self.out.flush()


def _logs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"follow": args.follow, "tail": _tail(args.tail), "node": args.node or ""}
    if args.since:
        params["since"] = parse_time(args.since)
    if args.until:
        params["until"] = parse_time(args.until)
    if getattr(args, "stack", None):
        params["stack"] = args.stack
    else:
        params["service"] = args.target  # the manager also takes a task here (id, prefix, SERVICE.SLOT)
    printer = LogPrinter(args)
    call = stream("service.logs", params)
    try:
        for item in call:
            if "lines" in item:
                printer.write(item)
            elif "warning" in item:
                print(f"warning: {item['warning']}", file=sys.stderr, flush=True)
    except BrokenPipeError:
        return 0
    finally:
        call.close()
    return 0


def _tail(value: str) -> int:
    if value in ("all", ""):
        return -1
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"invalid --tail {value!r}: a number of lines, or all") from None
    if n < 0:
        raise UsageError(f"invalid --tail {value!r}: a number of lines, or all")
    return n


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="keep following; new tasks join; ends when the service is removed")
    p.add_argument("-n", "--tail", default="all", help="lines from the end of each task's log (default all)")
    p.add_argument("--since", help="from this time: 10m, RFC 3339 or Unix time")
    p.add_argument("--until", help="up to this time (same forms)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show each line's time")
    p.add_argument("--no-task-ids", action="store_true", help="leave the task id out of the prefix")
    p.add_argument("--raw", action="store_true", help="lines only, no prefix")
    p.add_argument("--no-trunc", action="store_true", help="full task ids")
    p.add_argument("--node", help="only tasks on this node")


# -- exec --------------------------------------------------------------------


def _exec(args: argparse.Namespace) -> int:
    if not args.cmd:
        raise UsageError("service exec: give the command to run after the service or task")
    params: dict[str, Any] = {"cmd": list(args.cmd), "tty": args.tty, "stdin": args.interactive,
                              "env": args.env or [], "user": args.user or "", "workdir": args.workdir or "",
                              "slot": args.slot or 0}
    if args.task:
        params["task"] = args.task
        args.cmd = [args.target, *args.cmd]  # no SERVICE given: the first word was the command
        params["cmd"] = args.cmd
    else:
        params["service"] = args.target
    raw_tty = args.tty and sys.stdin.isatty()
    if args.tty:
        try:
            size = os.get_terminal_size(sys.stdout.fileno() if sys.stdout.isatty() else 0)
            params["h"], params["w"] = size.lines, size.columns
        except OSError:
            pass
    call = stream("service.exec", params)
    saved = None
    if raw_tty:
        import termios
        import tty

        saved = termios.tcgetattr(0)
        tty.setraw(0)

        def resized(*_: Any) -> None:
            try:
                size = os.get_terminal_size(0)
                call.send({"resize": [size.lines, size.columns]})
            except OSError:
                pass

        signal.signal(signal.SIGWINCH, resized)
    if args.interactive:
        threading.Thread(target=_pump_stdin, args=(call,), daemon=True).start()
    try:
        for item in call:
            data = base64.b64decode(item.get("data", ""))
            target = sys.stderr if item.get("stream") == "stderr" else sys.stdout
            target.buffer.write(data)
            target.buffer.flush()
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(0, termios.TCSADRAIN, saved)
        call.close()
    return int((call.result or {}).get("exit_code", 0))


def _pump_stdin(call: rpc.StreamCall) -> None:
    while True:
        try:
            data = os.read(0, 16384)  # a line of at most ~22 KB on the wire
        except OSError:
            data = b""
        if not data:
            call.send({"stdin": "", "eof": True})
            return
        call.send({"stdin": base64.b64encode(data).decode()})


# -- restart -----------------------------------------------------------------


def _service_restart(args: argparse.Namespace) -> int:
    for name in args.services:
        done = common.call("service.restart", {"service": name})
        print(f"{done['service']}: restarting every task per its update_config (version {done['version']})")
    return 0


def _task_restart(args: argparse.Namespace) -> int:
    for ref in args.tasks:
        done = common.call("task.restart", {"task": ref})
        print(f"{done['service']}: task {done['task'][:12]} replaced by {done['replacement'][:12]}")
    return 0


# -- stats -------------------------------------------------------------------


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.1f}TiB"


def stats_tables(table: dict[str, Any]) -> Any:
    from rich.console import Group
    from rich.table import Table

    def io(a: int, b: int) -> str:
        return f"{human_bytes(a)} / {human_bytes(b)}"

    tasks = Table(title="tasks", expand=False)
    for col in ("TASK", "NODE", "CPU %", "MEM USAGE / LIMIT", "NET I/O", "BLOCK I/O", "PIDS"):
        tasks.add_column(col, justify="right" if col in ("CPU %", "PIDS") else "left")
    for r in table["tasks"]:
        tasks.add_row(r["name"], r["node"], f"{r['cpu_percent']:.2f}%",
                      f"{human_bytes(r['mem_usage'])} / {human_bytes(r['mem_limit'])}",
                      io(r["net_rx"], r["net_tx"]), io(r["block_read"], r["block_write"]), str(r["pids"]))
    groups = []
    for title, rows in (("services", table["services"]), ("nodes", table["nodes"])):
        t = Table(title=title, expand=False)
        for col in (title[:-1].upper(), "TASKS", "CPU %", "MEM USAGE", "NET I/O", "BLOCK I/O"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], str(r["tasks"]), f"{r['cpu_percent']:.2f}%", human_bytes(r["mem_usage"]),
                      io(r["net_rx"], r["net_tx"]), io(r["block_read"], r["block_write"]))
        groups.append(t)
    return Group(tasks, *groups)


def _stats(args: argparse.Namespace) -> int:
    call = stream("stats", {"service": args.service or "", "stream": not args.no_stream})
    live: Any = None
    try:
        for item in call:
            if "warning" in item:
                print(f"warning: {item['warning']}", file=sys.stderr, flush=True)
                continue
            table = item["stats"]
            if args.format == "json":
                print(json.dumps(table), flush=True)
                continue
            if args.no_stream or not sys.stdout.isatty():
                from rich.console import Console

                Console().print(stats_tables(table))
                continue
            if live is None:
                from rich.live import Live

                live = Live(stats_tables(table), auto_refresh=False)
                live.start()
            live.update(stats_tables(table), refresh=True)
    except BrokenPipeError:
        return 0
    finally:
        if live is not None:
            live.stop()
        call.close()
    return 0


# -- events ------------------------------------------------------------------


def _events(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"types": []}
    for f in args.filter or []:
        key, sep, value = f.partition("=")
        if key != "type" or not sep or value not in ("service", "task", "node"):
            raise UsageError(f"invalid --filter {f!r}: use type=service, type=task or type=node")
        params["types"].append(value)
    if args.since:
        params["since"] = parse_time(args.since) / 1e9
    if args.until:
        params["until"] = parse_time(args.until) / 1e9
    call = stream("events", params)
    try:
        for item in call:
            e = item.get("event")
            if not e:
                continue
            if args.format == "json":
                print(json.dumps(e), flush=True)
                continue
            stamp = rfc3339(int(e["time"] * 1e9))
            detail = f" ({e['message']})" if e.get("message") else ""
            where = f" on {e['attrs']['node']}" if e.get("attrs", {}).get("node") else ""
            print(f"{stamp} {e['type']} {e['action']} {e['name']}{where}{detail}", flush=True)
    except BrokenPipeError:
        return 0
    finally:
        call.close()
    return 0


# -- registration ------------------------------------------------------------


def add_service_commands(service: Any) -> None:
    """``service logs/exec/restart/stats`` (called by :mod:`.service`)."""
    p = service.add_parser("logs", help="lines of every task of a service, merged in time order")
    p.add_argument("target", metavar="SERVICE|TASK")
    _log_flags(p)
    p.set_defaults(func=_logs)
    p = service.add_parser("exec", help="run a command in one of the service's running containers")
    p.add_argument("-i", "--interactive", action="store_true", help="send stdin to the command")
    p.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    p.add_argument("--task", help="this task (id or SERVICE.SLOT); then no SERVICE is given")
    p.add_argument("--slot", type=int, help="the task of this replica slot")
    p.add_argument("-e", "--env", action="append", metavar="KEY=VALUE", help="set a variable (repeatable)")
    p.add_argument("-u", "--user", help="user to run as")
    p.add_argument("-w", "--workdir", help="working directory in the container")
    p.add_argument("target", metavar="SERVICE")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="CMD")
    p.set_defaults(func=_exec)
    p = service.add_parser("restart", help="replace every task, rolling per update_config (like update --force)")
    p.add_argument("services", nargs="+", metavar="SERVICE")
    p.set_defaults(func=_service_restart)
    p = service.add_parser("stats", help="CPU, memory, network and block I/O of a service's tasks")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    common.format_arg(p)
    p.set_defaults(func=_stats)


def add_stack_commands(stack: Any) -> None:
    """``stack logs`` (called by :mod:`.stack`)."""
    p = stack.add_parser("logs", help="lines of every task of a stack's services, merged in time order")
    p.add_argument("stack", metavar="STACK")
    _log_flags(p)
    p.set_defaults(func=_logs, target="")


def register(sub: Any) -> None:
    p = sub.add_parser("stats", help="CPU, memory, network and block I/O of every running task, live")
    p.add_argument("service", nargs="?", metavar="SERVICE")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    common.format_arg(p)
    p.set_defaults(func=_stats)
    p = sub.add_parser("events", help="what happens in the cluster: services, tasks, nodes, leaders")
    p.add_argument("--since", help="from this time (10m, RFC 3339, Unix time); default: from now")
    p.add_argument("--until", help="up to this time, then exit")
    p.add_argument("--filter", action="append", metavar="type=service|task|node")
    common.format_arg(p)
    p.set_defaults(func=_events)
    task = sub.add_parser("task", help="manage single tasks").add_subparsers(dest="task_command", metavar="COMMAND", required=True)
    p = task.add_parser("restart", help="replace a task with a new one (its slot keeps one task)")
    p.add_argument("tasks", nargs="+", metavar="TASK")
    p.set_defaults(func=_task_restart)
