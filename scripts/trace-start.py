#!/usr/bin/env python3
"""Where one `shg start` spends its time, process by process, traced in the kernel.

    sudo SHG_BENCH_QUICK=1 scripts/trace-start.py -- cargo bench -p shg --bench gateway

Runs the command given after `--` (anything that starts services: the gateway bench in quick
mode is the usual one) with ftrace recording every system call entry and every fork, exec
and exit on the machine, then takes the last container the agent's runtime helper started
(an init forked by libcontainer's intermediate process, `youki:[1:INTER]`) whose command
was `/bin/true` (the bench's `truth`; `--exec PATH` for another) and prints, from the moment
the helper's spare child got the request:

- each process of the start (the spare, libcontainer's intermediate and init, the init's
  command), when it ran, how many system calls it made, and which took longest;
- the milestones: the intermediate's fork, the init's fork and exec, the command's exec and
  exit, the init's exit.

A system call's time here is the gap to the same process's next one: the call itself plus
whatever the process did before its next call. Root only (tracefs). `--keep FILE` keeps the
raw trace. Tracing slows every system call a little: compare processes and steps within one
trace, not its totals with the bench's. The figures in BENCHMARKS.md ("One start, traced in the kernel") came from it.
"""

import collections
import os
import re
import subprocess
import sys

TRACING = "/sys/kernel/tracing"
EVENTS = [
    "raw_syscalls:sys_enter",
    "sched:sched_process_fork",
    "sched:sched_process_exec",
    "sched:sched_process_exit",
]
LINE = re.compile(
    r"^\s*(?P<comm>.+)-(?P<pid>\d+)\s+\(\s*(?P<tgid>[-\d]+)\)\s+\[\d+\]\s+\S+\s+"
    r"(?P<ts>[\d.]+):\s+(?P<event>\S+):\s*(?P<rest>.*)$"
)


def read(name):
    """A tracefs setting's value (its first word: `buffer_size_kb` may add a remark)."""
    with open(os.path.join(TRACING, name)) as f:
        return (f.read().split() or [""])[0]


# The settings `record` changes, put back as they were once the trace is read.
SETTINGS = ["tracing_on", "options/record-tgid", "buffer_size_kb"]


def write(name, value):
    with open(os.path.join(TRACING, name), "w") as f:
        f.write(value)


def syscall_names():
    """Numbers to names, from the kernel headers when they are installed (linux-libc-dev)."""
    names = {}
    try:
        with open("/usr/include/x86_64-linux-gnu/asm/unistd_64.h") as f:
            for line in f:
                m = re.match(r"#define __NR_(\w+) (\d+)", line)
                if m:
                    names[int(m.group(2))] = m.group(1)
    except OSError:
        pass
    return names


def record(command, keep):
    if not os.path.isdir(TRACING):
        sys.exit(f"trace-start: no tracefs at {TRACING} (mount -t tracefs none {TRACING})")
    saved = {name: read(name) for name in SETTINGS}
    write("tracing_on", "0")
    write("set_event", "")
    for event in EVENTS:
        fd = os.open(os.path.join(TRACING, "set_event"), os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, event.encode())
        finally:
            os.close(fd)
    write("options/record-tgid", "1")
    write("buffer_size_kb", "65536")
    write("trace", "")
    write("tracing_on", "1")
    try:
        status = subprocess.call(command)
    finally:
        write("tracing_on", "0")
        write("set_event", "")
    with open(os.path.join(TRACING, "trace")) as f:
        text = f.read()
    write("trace", "")
    for name in reversed(SETTINGS):
        write(name, saved[name])
    if keep:
        with open(keep, "w") as f:
            f.write(text)
    if status != 0:
        print(f"trace-start: the command exited with {status}", file=sys.stderr)
    return text


def parse(text):
    events = []
    for line in text.splitlines():
        m = LINE.match(line)
        if m:
            events.append(
                (float(m["ts"]), int(m["pid"]), m["comm"].strip(), m["event"], m["rest"])
            )
    return events


def analyse(events, program):
    names = syscall_names()
    forks = {}  # child pid -> (ts, parent pid)
    execs = collections.defaultdict(list)  # pid -> [(ts, filename)]
    exits = {}
    calls = collections.defaultdict(list)  # pid -> [(ts, nr)]
    comms = {}
    for ts, pid, comm, event, rest in events:
        comms.setdefault(pid, comm)
        if event == "sched_process_fork":
            child = int(re.search(r"child_pid=(\d+)", rest).group(1))
            forks[child] = (ts, pid)
        elif event == "sched_process_exec":
            execs[pid].append((ts, re.search(r"filename=(\S+)", rest).group(1)))
        elif event == "sched_process_exit":
            exits[pid] = ts
        elif event == "sys_enter":
            calls[pid].append((ts, int(rest.split()[1])))
    # The last init that libcontainer's intermediate process forked to run `program`.
    runs = {parent for child, (_, parent) in forks.items() if program in dict(execs[child]).values()}
    inits = [
        (ts, child)
        for child, (ts, parent) in forks.items()
        if comms.get(parent, "").startswith("youki:[1:INTER]") and child in runs
    ]
    if not inits:
        sys.exit(f"trace-start: no container of the runtime helper ran {program} in the trace")
    _, init = max(inits)
    inter = forks[init][1]
    spare = forks[inter][1]
    # The spare waited for its request in one long read; its start is the call after it.
    spare_calls = [c for c in calls[spare] if c[0] <= forks[inter][0]]
    gaps = [(b[0] - a[0], i) for i, (a, b) in enumerate(zip(spare_calls, spare_calls[1:]))]
    t0 = spare_calls[max(gaps)[1] + 1][0] if gaps else spare_calls[0][0]
    command = [c for c, (_, parent) in forks.items() if parent == init]
    ms = lambda ts: (ts - t0) * 1000.0  # noqa: E731

    print("milestones (ms from the spare's request):")
    print(f"  {ms(forks[inter][0]):8.3f}  the spare forks the intermediate")
    print(f"  {ms(forks[init][0]):8.3f}  the intermediate forks the init")
    for ts, name in execs[init]:
        print(f"  {ms(ts):8.3f}  the init execs {name}")
    for pid in command:
        for ts, name in execs[pid]:
            print(f"  {ms(ts):8.3f}  its command execs {name}")
        if pid in exits:
            print(f"  {ms(exits[pid]):8.3f}  its command exits")
    if init in exits:
        print(f"  {ms(exits[init]):8.3f}  the init exits")
    print()
    for role, pid in [("spare", spare), ("intermediate", inter), ("init", init)] + [
        ("command", p) for p in command
    ]:
        mine = [c for c in calls[pid] if c[0] >= t0]
        if not mine:
            continue
        slow = collections.Counter()
        for (ts, nr), (nxt, _) in zip(mine, mine[1:]):
            slow[nr] += nxt - ts
        top = ", ".join(
            f"{names.get(nr, nr)} {t * 1000:.2f}" for nr, t in slow.most_common(6)
        )
        print(
            f"{role:>12} {pid:>7}: {ms(mine[0][0]):8.3f} .. {ms(mine[-1][0]):8.3f} ms, "
            f"{len(mine):5d} system calls; longest (ms, all calls of the kind): {top}"
        )


def main():
    args = sys.argv[1:]
    keep, program = None, "/bin/true"
    while args[:1] in (["--keep"], ["--exec"]) and len(args) > 1:
        if args[0] == "--keep":
            keep = args[1]
        else:
            program = args[1]
        args = args[2:]
    if args[:1] != ["--"] or len(args) < 2:
        sys.exit(__doc__)
    analyse(parse(record(args[1:], keep)), program)


if __name__ == "__main__":
    main()
