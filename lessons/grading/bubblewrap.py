"""Where a grading job's child runs: a bubblewrap sandbox built from nothing, or (trusted) a plain process.

Isolation is bubblewrap's (``bwrap``, Debian package ``bubblewrap``), the tool Flatpak runs
its applications in, chosen over ``unshare(1)`` because it builds the filesystem from an
empty root and ties the sandbox's life to the grader's (``--die-with-parent``). Each child gets:

- its own user namespace (``--unshare-user``, where it is ``nobody``) in which no further user
  namespace can be made (``--disable-userns``), and its own PID, network (a loopback of its
  own), IPC, UTS and mount namespaces. When the grader is root, bubblewrap itself is started
  as the host's ``nobody``, so the child is nobody outside the namespace too;
- a seccomp filter (``lessons.grading.seccomp``): no new processes, programs, keyrings,
  namespaces, mounts or tracing; the child adds ``execve`` once it is running;
- a filesystem of read-only binds (the system libraries and the Python environment, with the
  lab's own folders covered by empty tmpfs) on a read-only root and ``/dev`` (both made by
  bubblewrap as nobody, so otherwise writable), and one writable scratch ``/tmp``: a fresh tmpfs
  per job, of bounded size, mounted ``noexec`` so nothing written there can run or be loaded
  as native code (a shared object built by a submission cannot be mapped executable);
- its options from an inherited file descriptor (``--args``) and an empty environment, so
  ``/proc`` inside shows no host path of the grader (hidden tests, the submissions, the
  folders it covers) beyond the Python it runs.

Mounting the noexec scratch needs root (the grader mounts it on the host, then binds it in);
without root, or without a user namespace or seccomp, the grader refuses to grade untrusted
code and says why. Trusted mode runs the same child in a plain subprocess (its own session,
``python -I``, the audit hook), which stops honest mistakes, not attacks.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

from lessons.grading import seccomp

REPO = Path(__file__).resolve().parents[2]
SANDBOX = REPO / "lessons" / "assignments" / "sandbox.py"
INSIDE = "/grader/sandbox.py"
NOBODY = 65534
INSTALL = ("bubblewrap (bwrap) is needed to grade untrusted code in an isolated process: "
           "apt-get install bubblewrap (Debian/Ubuntu; dnf install bubblewrap on Fedora), "
           "or pass --trusted to grade code you trust without isolation")
NEEDS_ROOT = ("grading untrusted code needs root: the grader mounts each job's scratch folder noexec, "
              "so nothing a submission writes can run as native code (run it as root, e.g. in a container, "
              "or pass --trusted to grade code you trust without isolation)")
ENV = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "MPLCONFIGDIR": "/tmp", "MPLBACKEND": "Agg",
       "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE", "PYTHONDONTWRITEBYTECODE": "1"}
"""The child's whole environment (nothing of the grader's)."""
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_BIND, _MS_REC, _MNT_DETACH = 4096, 16384, 2
ROOT_PREFIX = "subnet-grade-"
"""The grader's folders in the temporary directory: ``<tmp>/subnet-grade-XXXX``, with its scratch mounts and views."""
OWNER = "owner"
"""The file in such a folder naming the grader that made it: ``<pid> <start time in clock ticks>``."""


class IsolationUnavailable(RuntimeError):
    """bubblewrap is missing or cannot build a sandbox here; the message says what to do."""


def _python_roots() -> list[str]:
    """The folders the Python environment lives in (installation, virtual environment, site-packages)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.dirname(torch.__file__)),
             *site.getsitepackages()}
    paths = sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)} | {os.path.abspath(sys.prefix)})
    return [p for p in paths if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths)]


def _installed_lab() -> list[str]:
    """Folders of the lab's packages when installed as copies (not editable): covered in the sandbox."""
    import importlib.util

    found = []
    for name in ("sparsity", "toys", "scaleup", "lessons", "benchmarks"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found += list(spec.submodule_search_locations)
    return found


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_args(scratch: str | None, hide: tuple[str, ...] = (), scratch_mb: int = 64,
               source: Callable[[str], str] = str, script_fd: int | None = None) -> list[str]:
    """bubblewrap's options: namespaces, identity, and the filesystem (the system libraries and the
    Python environment read-only, ``scratch`` bound as ``/tmp``, or a plain tmpfs of ``scratch_mb``
    when None); any of ``hide`` under a bound folder (the repository, the submissions, a copy of
    the lab installed in site-packages) is covered by an empty tmpfs.

    ``source`` says where bubblewrap finds each folder it binds: the grader's views of them, so
    that bubblewrap, running as nobody, need not reach them where they are (a Python under
    ``/root``). The child script is not among them: it comes as data, read from ``script_fd``."""
    args = ["--unshare-user", "--disable-userns", "--uid", str(NOBODY), "--gid", str(NOBODY), "--unshare-ipc",
            "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL"]

    roots = [d for d in ("/usr/lib", "/usr/lib64", "/usr/lib32") if os.path.isdir(d)] + _python_roots()
    roots = [r for r in dict.fromkeys(roots) if not any(r != q and _under(r, q) for q in roots)]
    hidden = sorted({os.path.realpath(h) for h in hide if any(_under(os.path.realpath(h), r) and
                                                             os.path.realpath(h) != r for r in roots)})
    dirs = sorted({str(p) for target in (*roots, INSIDE) for p in Path(target).parents if str(p) not in ("/", "/tmp")})
    if scratch is None:  # first: a root may be below
        args += ["--size", str(scratch_mb << 20), "--perms", "01777", "--tmpfs", "/tmp"]
    else:
        args += ["--bind", scratch, "/tmp"]
    for d in dirs:
        args += ["--perms", "0755", "--dir", d]
    for top in ("/lib", "/lib64", "/bin"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", source(top), top]
    mounts = [(len(Path(r).parts), 0, r) for r in roots] + [(len(Path(h).parts), 1, h) for h in hidden]
    for _, kind, path in sorted(mounts):
        args += ["--ro-bind", source(path), path] if kind == 0 else ["--tmpfs", path]
    if script_fd is not None:
        args += ["--ro-bind-data", str(script_fd), INSIDE]
    # the root and /dev are tmpfs that bubblewrap made as nobody, so nobody could write (and run) there
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev", "--remount-ro", "/", "--chdir", "/tmp",
             "--clearenv"]
    for key, value in ENV.items():
        args += ["--setenv", key, value]
    return args


def _libc_call(name: str, *args: object) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if getattr(libc, name)(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{name}: {os.strerror(err)}")


def mount_scratch(path: str, size_mb: int) -> None:
    """A fresh tmpfs at ``path``: ``size_mb`` at most, owned by nobody, noexec, nosuid, nodev (root only)."""
    options = f"size={size_mb}m,mode=0700,uid={NOBODY},gid={NOBODY}".encode()
    _libc_call("mount", b"tmpfs", path.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, options)


def bind_view(path: str, view: str) -> None:
    """Bind the folder ``path`` (with what is mounted below it) at ``view`` too, read-only (root only).

    Read-only on the host as well as inside the sandbox: a view outlives a grader that is killed
    (SIGKILL, a CI timeout) until :func:`clear_stale_roots` runs, and a writable one would let
    ``rm -rf /tmp/...`` or a temporary-file cleaner walk into ``/usr/lib`` or the Python environment
    and delete them (a bind mount is the same file system, so ``--one-file-system`` does not stop it)."""
    _libc_call("mount", path.encode(), view.encode(), None, _MS_BIND | _MS_REC, None)
    try:  # with MS_BIND, a remount changes this mount's flags only, not the folder's own mount
        _libc_call("mount", None, view.encode(), None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY, None)
    except BaseException:
        _libc_call("umount2", view.encode(), _MNT_DETACH)
        raise


def _start_ticks(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, ``/proc/PID/stat``), or None where there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _mounts_under(folder: str) -> list[str]:
    """Mount points at or below ``folder`` (from ``/proc/self/mountinfo``), deepest first."""
    found = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return sorted((m for m in found if m == folder or m.startswith(folder + "/")), key=len, reverse=True)


def clear_stale_roots(folder: str | None = None) -> list[str]:
    """Unmount and remove the folders of graders that died without closing their sandbox; return them (root only).

    A folder is stale when its :data:`OWNER` process no longer runs (or another process has its PID
    now) and something is still mounted below it here. One without an owner file is left alone: it
    is being made, or an older grader made it and nothing says whether that one still runs; so is one
    with nothing mounted (it may be a live grader's in another mount namespace that shares this
    ``/tmp``, and without mounts it is only empty folders). Nothing is deleted while a mount remains."""
    cleared = []
    for root in sorted(Path(folder or tempfile.gettempdir()).glob(ROOT_PREFIX + "*")):
        try:
            pid, ticks = (root / OWNER).read_text().split()
            alive = _start_ticks(int(pid)) == ticks
        except (OSError, ValueError):
            continue
        mounts = _mounts_under(str(root))
        if not mounts or alive:
            continue
        for mount_point in mounts:
            try:
                _libc_call("umount2", mount_point.encode(), _MNT_DETACH)
            except OSError as err:  # another grader cleared it meanwhile
                if err.errno not in (errno.EINVAL, errno.ENOENT):
                    raise
        if not _mounts_under(str(root)):
            shutil.rmtree(root, ignore_errors=True)
            cleared.append(str(root))
    return cleared


def unmount(path: str) -> None:
    """Detach what is mounted at ``path`` (a scratch tmpfs goes with its contents) and remove the mount point."""
    try:
        _libc_call("umount2", path.encode(), _MNT_DETACH)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    os.rmdir(path)


class Sandbox:
    """How a grading job's child starts: inside bubblewrap, or (``trusted``) in a plain subprocess."""

    def __init__(self, trusted: bool = False, hide: tuple[str, ...] = ()) -> None:
        self.trusted = trusted
        self.bwrap = None if trusted else shutil.which("bwrap")
        self.hide = (str(REPO), tempfile.gettempdir(), *_installed_lab(), *hide)
        self.root = tempfile.mkdtemp(prefix=ROOT_PREFIX)  # the children's working folder (trusted: their home)
        os.chmod(self.root, 0o711)  # bubblewrap, as nobody, reaches the scratch and the views below it
        Path(self.root, OWNER).write_text(f"{os.getpid()} {_start_ticks(os.getpid())}")
        self._jobs, self._views = 0, {}
        if not trusted:
            try:
                self._probe()
                clear_stale_roots(os.path.dirname(self.root))
            except BaseException:
                self.close()
                raise

    def _probe(self) -> None:
        if self.bwrap is None:
            raise IsolationUnavailable(INSTALL)
        if os.geteuid() != 0:
            raise IsolationUnavailable(NEEDS_ROOT)
        try:
            seccomp.machine()
        except seccomp.SeccompUnsupported as err:
            raise IsolationUnavailable(f"{err}; pass --trusted to grade code you trust without isolation") from None
        # /tmp is a fresh tmpfs: nothing in it but the folders that lead to a bound Python environment when
        # that lies under the host's /tmp (a clone in a temporary folder, as CI makes)
        probe = ("import os; assert os.getuid() == 65534; "
                 "assert all(os.path.isdir('/tmp/' + e) for e in os.listdir('/tmp')), os.listdir('/tmp'); "
                 "assert [l for l in open('/proc/self/status') if l.startswith('Seccomp:')] == ['Seccomp:\\t2\\n']; "
                 "open('/tmp/x', 'w').close(); "
                 "assert 'noexec' in next(l for l in open('/proc/self/mountinfo') if ' /tmp ' in l)")
        proc, info_fd, scratch = self.start(0, 64, ["-c", probe], stderr=subprocess.PIPE)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if info_fd is not None:
                os.close(info_fd)
            self.release(scratch)
        if proc.returncode != 0:
            detail = " ".join(err.decode(errors="replace").split())[-300:]
            raise IsolationUnavailable(f"bubblewrap cannot build the sandbox here ({detail}); it needs user "
                                       f"namespaces, seccomp and tmpfs mounts, or pass --trusted")

    def start(self, fd: int, scratch_mb: int, script: list[str] | None = None,
              stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen, int | None, str | None]:
        """Start a child reporting on ``fd`` (``script``: other arguments for python, for the probe).

        Returns the child, the read end of bubblewrap's info pipe (it names the PID namespace's
        first process, see ``kill``) and the job's scratch mount point (``release`` it after)."""
        script = script or [INSIDE, str(fd)]
        python = [sys.executable, "-I"]
        if self.trusted:
            env = {**ENV, "HOME": self.root, "TMPDIR": self.root, "MPLCONFIGDIR": self.root}
            return subprocess.Popen([*python, str(SANDBOX), str(fd)], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=stderr, pass_fds=(fd,), cwd=self.root,
                                    env=env, start_new_session=True), None, None
        self._jobs += 1
        scratch = os.path.join(self.root, f"scratch-{self._jobs}")
        os.mkdir(scratch, 0o700)
        mount_scratch(scratch, scratch_mb)
        fds: list[int] = []
        try:
            info_read, info_write = os.pipe()
            filter_read, filter_write = os.pipe()
            script_read, script_write = os.pipe()
            args_read, args_write = os.pipe()
            fds += [info_write, filter_read, script_read, args_read]
            options = [*bwrap_args(scratch, self.hide, source=self._view, script_fd=script_read),
                       "--info-fd", str(info_write), "--seccomp", str(filter_read)]
            _write_all(filter_write, seccomp.program(deny_exec=False))
            _write_all(script_write, SANDBOX.read_bytes())
            _write_all(args_write, b"".join(a.encode() + b"\0" for a in options))
            proc = subprocess.Popen([self.bwrap, "--args", str(args_read), "--", *python, *script],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                                    pass_fds=tuple(f for f in (fd, *fds) if f > 2), cwd="/",
                                    env={"PATH": ENV["PATH"]}, start_new_session=True,
                                    user=NOBODY, group=NOBODY, extra_groups=[])
        except BaseException:
            self.release(scratch)
            raise
        finally:
            for f in fds:
                os.close(f)
        return proc, info_read, scratch

    def _view(self, path: str) -> str:
        """Where bubblewrap (as nobody) binds ``path`` from: a view of it under the grader's 0711 folder."""
        if path not in self._views:
            view = os.path.join(self.root, f"view-{len(self._views)}")
            os.mkdir(view, 0o755)
            bind_view(path, view)
            self._views[path] = view
        return self._views[path]

    def release(self, scratch: str | None) -> None:
        """Unmount a finished job's scratch folder."""
        if scratch is not None:
            unmount(scratch)

    def close(self) -> None:
        for name in os.listdir(self.root) if os.path.isdir(self.root) else ():
            if name.startswith(("scratch-", "view-")):
                unmount(os.path.join(self.root, name))
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to a fresh pipe and close it (all of it fits: a filter and an argument list are small)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def _namespace_init(proc: subprocess.Popen, info_fd: int | None) -> int | None:
    """The host pid of the sandbox's first process (PID 1 of its namespace), from bubblewrap's info pipe,
    if it is still bubblewrap's child (so not a reused pid)."""
    if info_fd is None or not select.select([info_fd], [], [], 0)[0]:
        return None
    try:
        pid = json.loads(os.read(info_fd, 4096)).get("child-pid")
        with open(f"/proc/{pid}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, AttributeError, IndexError, TypeError):
        return None
    return pid if parent == proc.pid else None


def kill(proc: subprocess.Popen, info_fd: int | None) -> None:
    """End the child and everything in its sandbox, and return only once they are gone.

    Under bubblewrap: SIGKILL the namespace's first process; the kernel then kills every
    process of the namespace before that one is reaped by bubblewrap, which then exits, so
    waiting for bubblewrap waits for them all.
    """
    init = _namespace_init(proc, info_fd)
    if init is not None:
        try:
            os.kill(init, 9)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    if info_fd is not None:
        os.close(info_fd)
