"""Attacks on the sandbox itself (issue 26, "Grader"), each asked of the kernel with the audit
hook off, so that what refuses them is the operating system: starting processes (also by
``_posixsubprocess.fork_exec``, which raises no audit event), running programs, the kernel
keyring that outlived a submission, a user namespace of its own, native code written to the
scratch folder or to memory, and host paths read from ``/proc``. Threads must still work:
torch needs them. These tests need bubblewrap, as root, and skip without it.
"""

import os
import sysconfig

import pytest

from grade_probe import bubblewrap_missing, probe
from lessons.grade import Sandbox

REASON = bubblewrap_missing()
pytestmark = pytest.mark.skipif(bool(REASON), reason=f"needs a working bubblewrap: {REASON}")

TRY = '''
import ctypes, os
def syscall(nr, *args):
    if ctypes.CDLL(None, use_errno=True).syscall(nr, *args) < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
def attempt(what, fn):
    try:
        fn()
        return f"{what}: allowed"
    except BaseException as err:
        return f"{what}: {type(err).__name__} {getattr(err, 'errno', '')}"
'''


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox() as box:
        yield box


def test_no_process_can_be_started_by_any_route(sandbox):
    source = TRY + '''
import os, subprocess, sys
def probe():
    return "; ".join([
        attempt("fork", lambda: os.fork() or os.waitpid(-1, 0)),
        attempt("fork_exec", lambda: subprocess.Popen([sys.executable, "-c", "pass"]).wait()),
        attempt("posix_spawn", lambda: os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], {})),
        attempt("exec", lambda: os.execv(sys.executable, [sys.executable, "-c", "pass"])),
    ])
'''
    got = probe(sandbox, source)
    assert got == ("fork: PermissionError 1; fork_exec: PermissionError 1; posix_spawn: PermissionError 1; "
                   "exec: PermissionError 1"), got


def test_threads_still_work_for_python_and_torch(sandbox):
    source = '''
import threading, torch
def probe():
    seen = []
    workers = [threading.Thread(target=seen.append, args=(i,)) for i in range(8)]
    for w in workers: w.start()
    for w in workers: w.join()
    torch.set_num_threads(2)
    a = torch.ones(256, 256)
    return f"{sorted(seen) == list(range(8))} {float((a @ a)[0, 0])} {torch.get_num_threads()}"
'''
    assert probe(sandbox, source) == "True 256.0 2"


def test_the_kernel_keyring_is_out_of_reach(sandbox):
    """A key added by one submission was read by the next (the child was the host's nobody, no user namespace)."""
    source = TRY + '''
import platform
NR = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
def probe():
    return "; ".join([
        attempt("add_key", lambda: syscall(NR[0], b"user", b"subnet-attack", b"answers", 7, -4)),
        attempt("request_key", lambda: syscall(NR[1], b"user", b"subnet-attack", None, 0)),
        attempt("keyctl", lambda: syscall(NR[2], 0, -4, 0)),
    ])
'''
    got = probe(sandbox, source)
    assert got == "add_key: PermissionError 1; request_key: PermissionError 1; keyctl: PermissionError 1", got


def test_no_namespace_can_be_made_or_joined_inside(sandbox):
    source = TRY + """
import platform
UNSHARE, SETNS = {"x86_64": (272, 308), "aarch64": (97, 268)}[platform.machine()]
def probe():
    return "; ".join([
        attempt("unshare user", lambda: syscall(UNSHARE, 0x10000000)),
        attempt("unshare mount", lambda: syscall(UNSHARE, 0x00020000)),
        attempt("setns", lambda: syscall(SETNS, os.open("/proc/self/ns/net", os.O_RDONLY), 0)),
    ])
"""
    got = probe(sandbox, source)
    assert got == "unshare user: PermissionError 1; unshare mount: PermissionError 1; setns: PermissionError 1", got


def test_native_code_written_by_a_submission_cannot_be_loaded(sandbox):
    """An extension module copied to the scratch folder (as a compiled attack would be) loads through
    the import machinery, no ctypes needed, unless the folder is noexec; memory files are refused,
    and the scratch folder is the only place the child can write."""
    dynload = sysconfig.get_config_var("DESTSHARED")
    name = next(f for f in sorted(os.listdir(dynload)) if f.startswith("_bisect.") and f.endswith(".so"))
    source = TRY + f'''
import importlib.util, os, shutil
def probe():
    os.makedirs("/tmp/mine", exist_ok=True)
    shutil.copy({os.path.join(dynload, name)!r}, "/tmp/mine/{name}")
    def load():
        spec = importlib.util.spec_from_file_location("_bisect", "/tmp/mine/{name}")
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
    def can_create(folder):
        try:
            os.close(os.open(os.path.join(folder, ".probe"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.remove(os.path.join(folder, ".probe"))
            return True
        except OSError:
            return False
    writable = sorted(top for top, _, _ in os.walk("/") if not top.startswith(("/proc", "/sys")) and can_create(top))
    outside = [w for w in writable if w != "/tmp" and not w.startswith("/tmp/")]
    return "; ".join([attempt("load from /tmp", load), attempt("memfd", lambda: os.memfd_create("code")),
                      "writable outside /tmp: " + " ".join(outside), "/tmp writable: " + str("/tmp" in writable)])
'''
    got = probe(sandbox, source)  # (the folders leading to a Python environment under /tmp lie in the scratch too)
    assert got == ("load from /tmp: ImportError ; memfd: PermissionError 1; writable outside /tmp: ; "
                   "/tmp writable: True"), got


def test_proc_shows_no_host_path_of_the_grader(sandbox, tmp_path):
    """bubblewrap's own command line (PID 1 inside) named the repository's child script and every folder."""
    source = '''
import os
def probe():
    seen = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()] + ["self"]:
        for part in ("cmdline", "environ", "mountinfo"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as f:
                    seen.append(f.read().decode(errors="replace").replace("\\0", " "))
            except OSError:
                pass
    return " | ".join(seen)
'''
    got = probe(sandbox, source)
    assert "bwrap --args" in got  # PID 1 was read
    for host_path in ("lessons/assignments", "lessons/grading", sandbox.root, "subnet-grade-"):
        assert host_path not in got, host_path


def test_without_what_the_sandbox_needs_the_grader_refuses_and_says_why(monkeypatch):
    """Not root (no noexec scratch) or an architecture without a seccomp table: refused, --trusted named."""
    from lessons.grading import bubblewrap, seccomp
    from lessons.grade import IsolationUnavailable

    monkeypatch.setattr(bubblewrap.os, "geteuid", lambda: 1000)
    with pytest.raises(IsolationUnavailable, match="needs root.*--trusted"):
        Sandbox()
    monkeypatch.undo()
    monkeypatch.setattr(seccomp.platform, "machine", lambda: "riscv64")
    with pytest.raises(IsolationUnavailable, match="no seccomp filter for the riscv64 architecture.*--trusted"):
        Sandbox()
