"""Isolation probes, run inside the container by job kind ``probe``.

Each probe tries one thing and reports what happened as plain data (``ok`` plus the ``errno``
name on failure), so the test suite can assert the *specific* error and a missing tool never
passes for "blocked". Probes use only Python (socket, os, ctypes for raw syscalls).

Some probes are deliberately hostile (fork bomb, memory hog, log flood, forged results, hostile
output files): they exist to prove the host survives them.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.protocol import JobSpec, ResultMessage
from sandbox.worker.channel import Channel

Observation = dict[str, Any]


@dataclass
class ProbeContext:
    spec: JobSpec
    channel: Channel
    out_dir: Path


ProbeFn = Callable[[ProbeContext, dict[str, Any]], Observation]
PROBES: dict[str, ProbeFn] = {}


def probe(fn: ProbeFn) -> ProbeFn:
    PROBES[fn.__name__] = fn
    return fn


def _err(exc: OSError) -> Observation:
    code = exc.errno or 0
    return {"ok": False, "errno": code, "errname": errno.errorcode.get(code, str(code))}


def _libc_call(fn_name: str, *args: Any) -> Observation:
    libc = ctypes.CDLL(None, use_errno=True)
    rc = getattr(libc, fn_name)(*args)
    if rc == 0:
        return {"ok": True}
    code = ctypes.get_errno()
    return {"ok": False, "errno": code, "errname": errno.errorcode.get(code, str(code))}


# --- network ---------------------------------------------------------------------------------


@probe
def net_interfaces(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    names = sorted(os.listdir("/sys/class/net"))
    dev = []
    with open("/proc/net/dev") as f:
        for line in f.read().splitlines()[2:]:
            dev.append(line.split(":", 1)[0].strip())
    return {"ok": True, "sys_class_net": names, "proc_net_dev": sorted(dev)}


@probe
def dns(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    host = str(args.get("host", "example.com"))
    try:
        infos = socket.getaddrinfo(host, 443, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        return {"ok": False, "gai_errno": exc.errno, "error": str(exc)}
    return {"ok": True, "addresses": sorted({i[4][0] for i in infos})}


@probe
def udp_nameserver(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Send a UDP datagram to port 53 of `server`, default the resolver in /etc/resolv.conf."""
    server = str(args.get("server", ""))
    configured = ""
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    configured = parts[1]
                    break
    except OSError:
        pass
    server = server or configured or "8.8.8.8"
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(b"\x00" * 12, (server, 53))
        except OSError as exc:
            return {**_err(exc), "server": server, "resolv_conf": configured}
    return {"ok": True, "server": server, "resolv_conf": configured}


@probe
def tcp_connect(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    host = str(args["host"])
    port = int(args["port"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(float(args.get("timeout", 3.0)))
        try:
            s.connect((host, port))
        except TimeoutError:
            return {"ok": False, "errno": 0, "errname": "TIMEOUT"}
        except OSError as exc:
            return _err(exc)
    return {"ok": True}


@probe
def hostname(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    return {"ok": True, "hostname": socket.gethostname()}


# --- filesystem ------------------------------------------------------------------------------


@probe
def write_file(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    path = str(args["path"])
    try:
        with open(path, str(args.get("mode", "w"))) as f:
            f.write("x")
    except OSError as exc:
        return _err(exc)
    return {"ok": True}


@probe
def read_file(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    path = str(args["path"])
    limit = int(args.get("max_bytes", 1 << 20))
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
    except OSError as exc:
        return _err(exc)
    return {"ok": True, "bytes": len(data)}


@probe
def exec_tmp(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Drop an executable script into /tmp and run it (noexec must stop it)."""
    script = Path("/tmp/probe-exec.sh")  # noqa: S108  # the attack: exec from the noexec tmpfs
    try:
        script.write_text("#!/bin/sh\necho ran\n")
        script.chmod(0o755)
    except OSError as exc:
        return {"wrote": False, **_err(exc)}
    try:
        subprocess.run([str(script)], check=True, capture_output=True, timeout=10)  # noqa: S603
    except OSError as exc:
        return {"wrote": True, **_err(exc)}
    return {"wrote": True, "ok": True}


@probe
def run_binary(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Positive control for exec_tmp: an image binary runs."""
    argv = [str(a) for a in args.get("argv", ["/bin/true"])]
    try:
        # the isolation tests' own argv, run inside the sandbox as the control case
        proc = subprocess.run(argv, capture_output=True, timeout=10)  # noqa: S603
    except OSError as exc:
        return _err(exc)
    return {"ok": proc.returncode == 0, "returncode": proc.returncode}


@probe
def tmpfs_fill(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    path = Path(str(args.get("path", "/tmp/fill")))  # noqa: S108  # fills the job's own tmpfs
    limit = int(args.get("max_bytes", 1 << 30))
    written = 0
    block = b"\0" * (1 << 20)
    try:
        with open(path, "wb") as f:
            while written < limit:
                written += f.write(block)
                f.flush()
    except OSError as exc:
        return {**_err(exc), "written": written}
    finally:
        path.unlink(missing_ok=True)
    return {"ok": True, "written": written}


@probe
def mounts(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    entries = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 4:
                entries.append({"target": parts[1], "fstype": parts[2], "options": parts[3]})
    return {"ok": True, "mounts": entries}


@probe
def docker_socket(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    candidates = ["/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock"]
    present = [p for p in candidates if os.path.lexists(p)]
    with open("/proc/mounts") as f:
        mounted = [line.split()[1] for line in f if "docker.sock" in line or "containerd" in line]
    return {"ok": True, "present": present, "mounted": mounted}


# --- privileges ------------------------------------------------------------------------------


@probe
def proc_status(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    fields: dict[str, str] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    wanted = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")
    return {
        "ok": True,
        **{k: fields.get(k) for k in wanted},
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "gid": os.getgid(),
        "groups": os.getgroups(),
    }


@probe
def mount_tmpfs(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    target = str(args.get("target", "/tmp"))  # noqa: S108  # the attack: remount inside the job
    return _libc_call("mount", b"none", target.encode(), b"tmpfs", ctypes.c_ulong(0), None)


_CLONE_FLAGS = {"user": 0x10000000, "net": 0x40000000, "mount": 0x00020000, "pid": 0x20000000}


@probe
def unshare(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    results = {}
    for name in args.get("namespaces", ["user", "net", "mount"]):
        # in a child, so a surprise success can't change the worker itself
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            outcome = _libc_call("unshare", ctypes.c_int(_CLONE_FLAGS[str(name)]))
            os.write(w, str(outcome.get("errno", 0)).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            code = int(f.read() or "-1")
        os.waitpid(pid, 0)
        results[str(name)] = {
            "ok": code == 0,
            "errno": code,
            "errname": errno.errorcode.get(code, str(code)),
        }
    return {"ok": not any(not v["ok"] for v in results.values()), "namespaces": results}


@probe
def environ(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    return {"ok": True, "environ": dict(os.environ)}


@probe
def processes(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Every visible process: name and real uid (read from its status, which stays readable)."""
    procs = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
            with open(f"/proc/{entry}/status") as f:
                uid_line = next(line for line in f if line.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        procs.append({"pid": int(entry), "comm": comm, "uid": int(uid_line.split()[1])})
    return {"ok": True, "processes": sorted(procs, key=lambda p: p["pid"])}


@probe
def sys_path(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    return {"ok": True, "sys_path": list(sys.path)}


@probe
def import_module(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Import `name` (a plugin's requirement, say); report where it came from."""
    try:
        module = importlib.import_module(str(args["name"]))
    except ImportError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True, "file": getattr(module, "__file__", None)}


# --- the container's init (PID 1) ------------------------------------------------------------

_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207


def _proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _ptrace_from_child(target: int) -> Observation:
    """PTRACE_SEIZE `target` from a forked child (so the worker itself never becomes a tracer);
    on success it interrupts the target, reports its state and detaches at once."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        libc = ctypes.CDLL(None, use_errno=True)
        rc = libc.ptrace(_PTRACE_SEIZE, target, None, None)
        code = 0 if rc == 0 else ctypes.get_errno()
        state = ""
        if rc == 0:
            libc.ptrace(_PTRACE_INTERRUPT, target, None, None)
            time.sleep(0.2)
            state = _proc_state(target)
            libc.ptrace(_PTRACE_DETACH, target, None, None)
        os.write(w, f"{code} {state}".encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        code_text, _, state = f.read().partition(" ")
    os.waitpid(pid, 0)
    code = int(code_text or "-1")
    if code:
        return {"ok": False, "errno": code, "errname": errno.errorcode.get(code, str(code))}
    return {"ok": True, "state_while_traced": state}


@probe
def ptrace_init(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Try to ptrace PID 1 (what would let a job stop it and outlive its worker)."""
    return {**_ptrace_from_child(1), "init_state_after": _proc_state(1)}


@probe
def ptrace_child(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Positive control for ptrace_init: ptrace works on a process of the job's own."""
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    try:
        return _ptrace_from_child(pid)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@probe
def proc_mem_init(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Open PID 1's memory for writing (code injection without ptrace)."""
    try:
        os.close(os.open("/proc/1/mem", os.O_RDWR))
    except OSError as exc:
        return _err(exc)
    return {"ok": True}


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


@probe
def process_vm_init(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """``process_vm_readv`` from PID 1: EPERM when access is refused, EFAULT when it is granted
    (the address read is arbitrary)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    buf = ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = _IoVec(int(args.get("address", 0x10000)), 8)
    got = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    if got >= 0:
        return {"ok": True, "bytes": got}
    code = ctypes.get_errno()
    return {"ok": False, "errno": code, "errname": errno.errorcode.get(code, str(code))}


@probe
def signal_init(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Send PID 1 the stop signals; report its state after each (``T`` would mean stopped)."""
    states = {}
    for name in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU"):
        try:
            os.kill(1, getattr(signal, name))
        except OSError as exc:
            states[name] = _err(exc)["errname"]
            continue
        time.sleep(0.1)
        states[name] = _proc_state(1)
    stopped = [name for name, state in states.items() if state in ("T", "t")]
    if stopped:
        os.kill(1, signal.SIGCONT)
    return {"ok": not stopped, "states": states, "stopped_by": stopped}


# --- resource abuse --------------------------------------------------------------------------


@probe
def fork_bomb(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Fork sleeping children until the kernel refuses, then reap them all."""
    limit = int(args.get("max", 2000))
    children: list[int] = []
    failure: Observation = {"ok": True}
    try:
        while len(children) < limit:
            try:
                pid = os.fork()
            except OSError as exc:
                failure = _err(exc)
                break
            if pid == 0:
                time.sleep(120)
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except OSError:
                pass
    return {**failure, "forked": len(children)}


@probe
def memory_hog(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Grow memory in touched 16 MiB blocks; the cgroup OOM killer should end the container."""
    limit = int(args.get("max_bytes", 64 << 30))
    blocks: list[bytearray] = []
    total = 0
    try:
        while total < limit:
            block = bytearray(16 << 20)
            for i in range(0, len(block), 4096):
                block[i] = 1
            blocks.append(block)
            total += len(block)
    except MemoryError:
        return {"ok": False, "errname": "MemoryError", "allocated": total}
    return {"ok": True, "allocated": total}


@probe
def hang(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    deadline = time.monotonic() + float(args.get("seconds", 1e9))
    while time.monotonic() < deadline:
        time.sleep(1.0)
    return {"ok": True}


# --- hostile output --------------------------------------------------------------------------


def png_bytes(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A truecolour PNG built with zlib only (the worker needs no Pillow for this)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    row = b"\x00" + bytes(rgb) * width
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _bomb_png(side: int) -> bytes:
    """A tiny file claiming side x side greyscale pixels: a decompression bomb."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        body = tag + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    comp = zlib.compressobj(9)
    zero_row = b"\x00" * (side + 1)
    idat = b"".join(comp.compress(zero_row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@probe
def write_output(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    kind = str(args["kind"])
    out = ctx.out_dir
    name = str(args.get("name", f"{kind}.png"))
    target = out / name
    if kind == "good_png":
        target.write_bytes(png_bytes(8, 8, (255, 0, 0)))
    elif kind == "bomb_png":
        target.write_bytes(_bomb_png(int(args.get("side", 20000))))
    elif kind == "symlink":
        os.symlink(str(args.get("to", "/etc/passwd")), target)
    elif kind == "hardlink":
        src = out / "hardlink-src.png"
        src.write_bytes(png_bytes(4, 4, (0, 0, 0)))
        os.link(src, target)
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "bad_name":
        target.write_bytes(b"#!/bin/sh\necho owned\n")
    elif kind == "subdir":
        target.mkdir()
        (target / "inner.png").write_bytes(png_bytes(4, 4, (0, 0, 0)))
    elif kind == "not_png":
        target.write_bytes(b"GIF89a" + b"\0" * 64)
    elif kind == "big_file":
        with open(target, "wb") as f:
            f.truncate(int(args.get("bytes", 80 << 20)))
    else:
        raise ValueError(f"unknown output kind {kind!r}")
    st = os.lstat(target)
    return {"ok": True, "name": name, "mode": stat.filemode(st.st_mode)}


@probe
def log_flood(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Flood a stream: ``stdout`` (print: lands in stderr), ``stderr`` or ``protocol``."""
    stream = str(args.get("stream", "protocol"))
    total = int(args.get("bytes", 64 << 20))
    line_bytes = int(args.get("line_bytes", 1 << 20))
    newline = bool(args.get("newlines", True))
    line = b"A" * line_bytes + (b"\n" if newline else b"")
    written = 0
    while written < total:
        if stream == "protocol":
            ctx.channel.write_raw(line)
        else:
            os.write(1 if stream == "stdout" else 2, line)
        written += len(line)
    return {"ok": True, "written": written}


@probe
def forge_result(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    """Emit a result line the way a hostile plugin would."""
    via = str(args.get("via", "print"))
    nonce = ctx.spec.nonce if args.get("nonce", "right") == "right" else "0" * 32
    forged = ResultMessage(
        job_id=ctx.spec.job_id, nonce=nonce, outputs=[], data={"forged": True}
    ).model_dump_json()
    if via == "print":
        print(forged, flush=True)  # noqa: T201 - the point: print must not reach the protocol
    elif via == "protocol":
        ctx.channel.write_raw(forged.encode() + b"\n")
    else:
        raise ValueError(f"unknown via {via!r}")
    return {"ok": True, "via": via}


@probe
def sleep(ctx: ProbeContext, args: dict[str, Any]) -> Observation:
    time.sleep(float(args.get("seconds", 1.0)))
    return {"ok": True}


def run_probe(ctx: ProbeContext, name: str, args: dict[str, Any]) -> Observation:
    fn = PROBES.get(name)
    if fn is None:
        return {"name": name, "ok": False, "exception": "unknown probe"}
    try:
        return {"name": name, **fn(ctx, args)}
    except Exception as exc:  # a probe that crashes is reported, not fatal
        return {"name": name, "ok": False, "exception": f"{type(exc).__name__}: {exc}"}
