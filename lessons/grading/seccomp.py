"""The system calls a graded submission may not make, as a seccomp filter (classic BPF).

A namespace hides things; it does not stop a process from starting others, keeping kernel
state (keyrings) that outlives it, or making namespaces of its own. Python's audit hooks do
not see every way in either (``_posixsubprocess.fork_exec`` raises no audit event), so the
kernel refuses these calls for the child and everything in it (seccomp, Drewry 2012; the
same mechanism Flatpak, Docker and Chrome's renderer sandbox use):

- new processes: ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD`` (threads stay allowed:
  torch and the C library need them) and ``clone3`` (its flags sit behind a pointer a filter
  cannot read; it fails with ENOSYS, so the C library falls back to ``clone``);
- running programs: ``execve``, ``execveat`` (only in the child's own filter, installed once
  bubblewrap has started it, since bubblewrap applies its filter before its own ``execve``);
- kernel state that survives the process or the sandbox: keyrings, ``memfd_create``
  (executable memory without a file), eBPF, perf, userfaultfd, io_uring;
- leaving the sandbox: ``unshare``, ``setns``, ``ptrace``, ``process_vm_*``, every mount call,
  ``chroot``, ``pivot_root``, kernel modules, ``kexec``, ``reboot``, raw I/O ports.

A refused call fails with EPERM (ENOSYS for ``clone3``); a call made through another
architecture's numbering (x32, or a foreign ``AUDIT_ARCH``) is refused too. This module
only writes the program; bubblewrap (``--seccomp FD``) and the child (``seccomp(2)``)
load it.
"""

from __future__ import annotations

import errno
import platform
import struct

CLONE_THREAD = 0x00010000

_ARCHES = {  # machine -> (AUDIT_ARCH, syscall numbers by name; a name an architecture lacks is absent)
    "x86_64": (0xC000003E, {
        "fork": 57, "vfork": 58, "clone": 56, "execve": 59, "execveat": 322, "ptrace": 101, "syslog": 103,
        "modify_ldt": 154, "pivot_root": 155, "chroot": 161, "acct": 163, "mount": 165, "umount2": 166,
        "swapon": 167, "swapoff": 168, "reboot": 169, "iopl": 172, "ioperm": 173, "init_module": 175,
        "delete_module": 176, "quotactl": 179, "kexec_load": 246, "add_key": 248, "request_key": 249,
        "keyctl": 250, "unshare": 272, "perf_event_open": 298, "open_by_handle_at": 304, "setns": 308,
        "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "memfd_create": 319,
        "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323}),
    "aarch64": (0xC00000B7, {
        "clone": 220, "execve": 221, "execveat": 281, "ptrace": 117, "syslog": 116, "pivot_root": 41,
        "chroot": 51, "acct": 89, "mount": 40, "umount2": 39, "swapon": 224, "swapoff": 225, "reboot": 142,
        "init_module": 105, "delete_module": 106, "quotactl": 60, "kexec_load": 104, "add_key": 217,
        "request_key": 218, "keyctl": 219, "unshare": 97, "perf_event_open": 241, "open_by_handle_at": 265,
        "setns": 268, "process_vm_readv": 270, "process_vm_writev": 271, "kcmp": 272, "finit_module": 273,
        "memfd_create": 279, "kexec_file_load": 294, "bpf": 280, "userfaultfd": 282}),
}
_COMMON = {"io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428,
           "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
           "memfd_secret": 447}
"""System calls numbered alike on every architecture (added after the tables were unified)."""
_CLONE3 = 435
_SECCOMP_SYSCALL = {"x86_64": 317, "aarch64": 277}
_X32_BIT = 0x40000000

_RET_ALLOW, _RET_ERRNO, _RET_KILL = 0x7FFF0000, 0x00050000, 0x80000000
_LD_W_ABS, _JEQ_K, _JGE_K, _JSET_K, _RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
_NR, _ARCH, _ARG0_LOW = 0, 4, 16  # offsets in struct seccomp_data (little-endian: the low word of args[0])


class SeccompUnsupported(RuntimeError):
    """This machine's architecture has no syscall table here, so no filter can be written for it."""


def machine() -> str:
    """The architecture the filter is written for (``platform.machine()``), refused if unknown."""
    arch = platform.machine()
    if arch not in _ARCHES:
        raise SeccompUnsupported(f"no seccomp filter for the {arch} architecture (known: {sorted(_ARCHES)})")
    return arch


def seccomp_syscall_number() -> int:
    """``seccomp(2)``'s number here: the child loads its own filter with it."""
    return _SECCOMP_SYSCALL[machine()]


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def denied(deny_exec: bool) -> dict[str, int]:
    """The refused system calls by name (``clone`` aside, which is refused unless it makes a thread)."""
    names = {**_ARCHES[machine()][1], **_COMMON}
    return {n: nr for n, nr in names.items() if n != "clone" and (deny_exec or n not in ("execve", "execveat"))}


def program(deny_exec: bool) -> bytes:
    """The filter as ``struct sock_filter`` records, ready for ``--seccomp FD`` or ``seccomp(2)``."""
    arch = machine()
    audit_arch, numbers = _ARCHES[arch]
    eperm, enosys = _RET_ERRNO | errno.EPERM, _RET_ERRNO | errno.ENOSYS
    code = [_op(_LD_W_ABS, _ARCH), _op(_JEQ_K, audit_arch, jt=1), _op(_RET_K, _RET_KILL), _op(_LD_W_ABS, _NR)]
    if arch == "x86_64":
        code += [_op(_JGE_K, _X32_BIT, jf=1), _op(_RET_K, eperm)]
    for nr in sorted(denied(deny_exec).values()):
        code += [_op(_JEQ_K, nr, jf=1), _op(_RET_K, eperm)]
    code += [_op(_JEQ_K, _CLONE3, jf=1), _op(_RET_K, enosys),
             _op(_JEQ_K, numbers["clone"], jf=4), _op(_LD_W_ABS, _ARG0_LOW),
             _op(_JSET_K, CLONE_THREAD, jf=1), _op(_RET_K, _RET_ALLOW), _op(_RET_K, eperm),
             _op(_RET_K, _RET_ALLOW)]
    return b"".join(code)
