"""The attacker tests' tools (tests/e2e/test_attacker*.py): Python probes an
attacker runs inside a sandbox through the agent's Bash tool, and listeners
on the host that tell whether anything from a sandbox reached them.

Each probe is a script that reads its arguments from ``ARGS`` and prints one
line, ``PROBE <json>``. ``run_probe`` ships it in as base64 (no quoting
problems, and no argument ever appears verbatim on a command line or in the
transcript), runs it with the sandbox's python3 and returns the JSON.
"""

from __future__ import annotations

import base64
import json
import secrets
import select
import socket
from typing import Any

from support import Client, tool_output

PRELUDE = """\
import errno, json, os, socket, stat, sys
ARGS = json.loads({args!r})
def err(exc):
    return errno.errorcode.get(getattr(exc, "errno", None) or 0, type(exc).__name__)
def done(out):
    print("PROBE " + json.dumps(out))
"""


async def run_probe(client: Client, body: str, timeout: float = 90, **args: Any) -> dict[str, Any]:
    """Run probe ``body`` in ``client``'s sandbox; its reported JSON."""
    script = PRELUDE.format(args=json.dumps(args)) + body
    packed = base64.b64encode(script.encode()).decode()
    frames = await client.turn(f"bash echo {packed} | base64 -d > /tmp/probe.py && python3 /tmp/probe.py", timeout)
    output = tool_output(frames)
    lines = [line for line in output.splitlines() if line.startswith("PROBE ")]
    assert lines, f"the probe printed no result:\n{output[-3000:]}"
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("PROBE "))
    return result


def halves(text: str) -> list[str]:
    """A secret as two pieces, so the probe never carries it whole."""
    return [text[: len(text) // 2], text[len(text) // 2 :]]


class HostListeners:
    """A TCP, a UDP and an abstract unix listener on the host that count what reaches them."""

    def __init__(self) -> None:
        self.tcp = socket.socket()
        self.tcp.bind(("0.0.0.0", 0))
        self.tcp.listen(8)
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", 0))
        self.abstract = "moorage-attacker-" + secrets.token_hex(4)
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind("\0" + self.abstract)
        self.unix.listen(8)
        self.sockets = (self.tcp, self.udp, self.unix)

    @property
    def tcp_port(self) -> int:
        return int(self.tcp.getsockname()[1])

    @property
    def udp_port(self) -> int:
        return int(self.udp.getsockname()[1])

    def reached(self) -> list[socket.socket]:
        readable, _, _ = select.select(self.sockets, [], [], 0)
        return readable

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def host_addresses() -> list[str]:
    """Loopback and this host's primary address (when it has a route)."""
    found = ["127.0.0.1"]
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            found.append(s.getsockname()[0])
    except OSError:
        pass
    return found


# Open (list or read one byte of) each path: "open", or why not.
OPEN_PATHS = """
out = {}
for path in ARGS["paths"]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        out[path] = "open"
    except OSError as exc:
        out[path] = err(exc)
with open("/etc/passwd") as f:
    passwd = f.read()
done({"paths": out, "passwd": passwd})
"""

# Look for the key (given in two halves) everywhere a process can read:
# every process's environment, command line and mounts, and every small file
# outside the read-only system trees. A canary written first proves the scan.
FIND_SECRET = """
secret = "".join(ARGS["secret"])
canary = "".join(ARGS["canary"])
with open(os.path.expanduser("~/canary.txt"), "w") as f:
    f.write("x" + canary + "x")
hits = {"secret": [], "canary": []}
def scan(where, data):
    for name, value in (("secret", secret), ("canary", canary)):
        if value.encode() in data:
            hits[name].append(where)
for pid in os.listdir("/proc"):
    if pid.isdigit() and pid != str(os.getpid()):
        for part in ("environ", "cmdline", "mountinfo", "status"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    scan(f"/proc/{pid}/{part}", f.read())
            except OSError:
                pass
for top in ARGS["trees"]:
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode) and st.st_size < 8 * 1024 * 1024 and path != "/tmp/probe.py":
                    with open(path, "rb") as f:
                        scan(path, f.read())
            except OSError:
                pass
env = {k: ("SECRET" if v == secret else len(v)) for k, v in os.environ.items() if "KEY" in k or "TOKEN" in k}
done({"hits": hits, "env": env})
"""

# What a sandbox can see of another session: the neighbour's files by name
# or content anywhere it can walk, its session id in any process, and every
# other process there is.
FIND_NEIGHBOUR = """
mine = "".join(ARGS["mine"])
theirs = "".join(ARGS["theirs"])
with open(f"/workspace/{mine}.txt", "w") as f:
    f.write(mine)
found = {"mine": [], "theirs": []}
def look(where, name, data=b""):
    for key, value in (("mine", mine), ("theirs", theirs)):
        if value in name or value.encode() in data:
            found[key].append(where)
skip = ("/proc", "/usr", "/opt", "/sys", "/dev")
for root, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
    for name in files:
        path = os.path.join(root, name)
        data = b""
        try:
            if os.path.isfile(path) and os.path.getsize(path) < 1024 * 1024 and path != "/tmp/probe.py":
                with open(path, "rb") as f:
                    data = f.read()
        except OSError:
            pass
        look(path, name, data)
procs = {}
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    for part in ("root/workspace", "cwd"):
        try:
            for name in os.listdir(f"/proc/{pid}/{part}"):
                look(f"/proc/{pid}/{part}/{name}", name)
        except OSError:
            pass
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            procs[pid] = f.read().replace(b"\\0", b" ").decode(errors="replace")[:200]
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
        for key, sid in (("mine_session", ARGS["my_session"]), ("theirs_session", ARGS["their_session"])):
            if "".join(sid).encode() in env:
                found.setdefault(key, []).append(pid)
    except OSError:
        pass
direct = {}
for path in ARGS["host_paths"] + ["/workspace/.."]:
    try:
        direct[path] = sorted(os.listdir(path)) if os.path.isdir(path) else open(path).read()
    except OSError as exc:
        direct[path] = err(exc)
done({"found": found, "procs": procs, "direct": direct})
"""

# Every way out of the network namespace a process might try.
NETWORK = """
out = {}
for host, port in ARGS["tcp"]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        out[f"tcp {host}:{port}"] = "connected"
    except OSError as exc:
        out[f"tcp {host}:{port}"] = err(exc)
for host, port in ARGS["udp"]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(b"probe", (host, port))
        out[f"udp {host}:{port}"] = "sent"
    except OSError as exc:
        out[f"udp {host}:{port}"] = err(exc)
try:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(3)
        s.connect("\\0" + ARGS["abstract"])
    out["abstract"] = "connected"
except OSError as exc:
    out["abstract"] = err(exc)
for name, family, kind in (("packet", 17, socket.SOCK_RAW), ("raw", socket.AF_INET, socket.SOCK_RAW)):
    try:
        socket.socket(family, kind).close()
        out[name] = "opened"
    except OSError as exc:
        out[name] = err(exc)
with socket.socket() as server:  # control: the sandbox's own loopback works
    server.bind(("127.0.0.1", 0))
    server.listen()
    socket.create_connection(server.getsockname(), timeout=3).close()
    out["own loopback"] = "connected"
with open("/proc/net/dev") as f:
    interfaces = sorted(line.split(":")[0].strip() for line in f.readlines()[2:])
# The model proxy is the one way out: does it go anywhere but the Messages API?
proxy = {}
for target in ARGS["proxy_targets"]:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect("/run/moorage/model.sock")
            head = "\\r\\n".join([target, "Host: evil.example", "Content-Length: 2", "Connection: close", "", ""])
            s.sendall(head.encode() + b"{}")
            proxy[target] = s.recv(200).split(b"\\r\\n")[0].decode(errors="replace")
    except OSError as exc:
        proxy[target] = err(exc)
done({"connect": out, "interfaces": interfaces, "proxy": proxy})
"""

# Writes to the kernel's knobs, and reads of its memory.
KERNEL = """
out = {}
for path, value in ARGS["writes"]:
    try:
        with open(path, "w") as f:
            f.write(value)
        out["write " + path] = "written"
    except OSError as exc:
        out["write " + path] = err(exc)
for path in ARGS["reads"]:
    try:
        with open(path, "rb") as f:
            f.read(16)
        out["read " + path] = "read"
    except OSError as exc:
        out["read " + path] = err(exc)
with open("/proc/kallsyms") as f:
    addresses = {line.split()[0] for line in f.readlines()[:2000]}
cmdlines = []
for pid in os.listdir("/proc"):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdlines.append(f.read().replace(b"\\0", b" ").decode(errors="replace"))
    except OSError:
        pass
done({"out": out, "kallsyms": sorted(addresses)[:3], "cmdlines": cmdlines, "sys": os.path.exists("/sys/kernel")})
"""

# Who the agent is, and every way up from there.
PRIVILEGES = """
import subprocess
status = {}
with open("/proc/self/status") as f:
    for line in f:
        key, _, value = line.partition(":")
        status[key] = value.strip()
out = {}
for name, call in (("setuid", lambda: os.setuid(0)), ("setgid", lambda: os.setgid(0)),
                   ("setgroups", lambda: os.setgroups([0]))):
    try:
        call()
        out[name] = "ok"
    except OSError as exc:
        out[name] = err(exc)
setuid_files = []
for top in ("/usr/bin", "/usr/sbin"):
    for root, dirs, files in os.walk(top):
        for name in files:
            try:
                if os.lstat(os.path.join(root, name)).st_mode & (stat.S_ISUID | stat.S_ISGID):
                    setuid_files.append(os.path.join(root, name))
            except OSError:
                pass
runs = {}
for argv in ARGS["commands"]:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=10, stdin=subprocess.DEVNULL)
        runs[" ".join(argv)] = (p.stdout + p.stderr).decode(errors="replace")[-300:]
    except (OSError, subprocess.TimeoutExpired) as exc:
        runs[" ".join(argv)] = type(exc).__name__
done({"status": status, "calls": out, "setuid_files": setuid_files, "runs": runs, "euid": os.geteuid()})
"""

# System calls that administer the kernel or leave the sandbox, each made in
# a child process (so one that works changes nothing for the probe): the
# errno it got, "ok", or "killed <signal>". Arguments are strings (passed as
# C strings) or integers; numbers are x86_64's.
SYSCALLS = """
import ctypes, signal
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def arg(a):
    return ctypes.c_char_p(a.encode()) if isinstance(a, str) else ctypes.c_long(a)
def attempt(nr, args):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        if args == "fork-fd":  # setns needs a namespace fd
            args = [os.open("/proc/self/ns/uts", os.O_RDONLY), 0]
        rc = libc.syscall(ctypes.c_long(nr), *map(arg, args))
        if rc == 0 and nr in (56, 57):  # clone: the new child leaves at once
            os._exit(0)
        os.write(write, ("ok" if rc >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return "killed " + signal.Signals(os.WTERMSIG(status)).name
    return answer
out = {name: attempt(nr, args) for name, nr, args in ARGS["calls"]}
with open("/proc/self/status") as f:
    status = dict(line.rstrip("\\n").split(":\\t", 1) for line in f if ":\\t" in line)
done({"calls": out, "seccomp": status.get("Seccomp"), "filters": status.get("Seccomp_filters")})
"""
