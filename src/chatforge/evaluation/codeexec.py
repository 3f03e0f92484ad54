"""Run model-written Python against unit tests (HumanEval pass@k) in a limited subprocess.

Each program runs in a fresh `python -I` process, in an empty temporary folder, with: a wall-clock timeout (the whole
process group is killed), CPU-time, address-space (memory), file-size and open-file limits, no child processes
(RLIMIT_NPROC 0, and os/subprocess process functions replaced by ones that raise), and no network: a new, empty network namespace when the kernel allows unprivileged ones (Linux
user namespaces), otherwise a guard that makes every socket call raise. The environment is emptied except PATH.

This is a safety net against accidents (infinite loops, memory blow-ups, stray deletes in the working folder, network
calls), not a security boundary against hostile code: run untrusted models in a container or VM. `chatforge eval`
refuses to call it unless `eval.allow_code_execution=true`.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

# Installed first in the child when no network namespace is available: every socket operation raises.
_SOCKET_GUARD = """
import socket as _s
def _no_net(*a, **k):
    raise OSError("network access is disabled in chatforge's code sandbox")
for _n in ("socket", "create_connection", "create_server", "getaddrinfo", "socketpair", "fromfd"):
    setattr(_s, _n, _no_net)
del _s, _n
"""

# Installed first in every child: process creation and killing raise (RLIMIT_NPROC is not enforced inside a user
# namespace, so this is what stops a program from starting other programs).
_PROCESS_GUARD = """
import os as _o, subprocess as _sp
def _no_proc(*a, **k):
    raise OSError("starting or signalling processes is disabled in chatforge's code sandbox")
for _n in ("fork", "forkpty", "system", "popen", "kill", "killpg", "posix_spawn", "posix_spawnp", "execv", "execve",
           "execl", "execle", "execlp", "execlpe", "execvp", "execvpe", "spawnl", "spawnle", "spawnv", "spawnve"):
    if hasattr(_o, _n):
        setattr(_o, _n, _no_proc)
_sp.Popen = _no_proc
del _o, _sp, _n
"""

_CLONE_NEWUSER, _CLONE_NEWNET = 0x10000000, 0x40000000


@dataclass
class ExecResult:
    passed: bool
    status: str  # passed | failed | timeout | error
    detail: str = ""


def _limits(memory_mb: int, cpu_seconds: int, net_namespace: bool):
    def apply() -> None:
        import resource

        mem = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024 * 1024,) * 2)
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
        if net_namespace:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
                os._exit(97)  # the parent saw the namespace work; never run without isolation by accident

    return apply


_NET_NS: bool | None = None


def network_isolation() -> str:
    """'namespace' when a new empty network namespace can be made here, else 'socket_guard'."""
    global _NET_NS
    if _NET_NS is None:
        _NET_NS = False
        if sys.platform.startswith("linux"):
            probe = subprocess.run(
                [sys.executable, "-I", "-c", "print('ok')"],
                preexec_fn=_limits(512, 5, True),
                capture_output=True,
                timeout=20,
            )
            _NET_NS = probe.returncode == 0 and probe.stdout.strip() == b"ok"
    return "namespace" if _NET_NS else "socket_guard"


def run_program(program: str, timeout: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run one Python program under the limits; passed = it exited 0 within the time limit."""
    if os.name != "posix":
        from chatforge.errors import NotSupportedError

        raise NotSupportedError("running generated code needs a POSIX system (resource limits); Linux or macOS")
    use_ns = network_isolation() == "namespace"
    code = _PROCESS_GUARD + (program if use_ns else _SOCKET_GUARD + program)
    with tempfile.TemporaryDirectory(prefix="chatforge_exec_") as tmp:
        path = os.path.join(tmp, "program.py")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(code)
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", path],
            cwd=tmp,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONHASHSEED": "0"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=_limits(memory_mb, max(1, math.ceil(timeout)), use_ns),
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return ExecResult(False, "timeout", f"over {timeout:g} s")
    if proc.returncode == 0:
        return ExecResult(True, "passed")
    tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    if proc.returncode < 0:
        return ExecResult(
            False, "timeout" if -proc.returncode in (signal.SIGXCPU, signal.SIGKILL) else "error", tail[0]
        )
    return ExecResult(False, "failed", tail[0][:300])


def run_programs(
    programs: Sequence[str], timeout: float = 10.0, memory_mb: int = 1024, workers: int = 2
) -> list[ExecResult]:
    """run_program over many programs, a few at a time (each is its own process)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: run_program(p, timeout, memory_mb), programs))


def humaneval_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The HumanEval check program: the prompt and the model's completion, the task's tests, then check(entry)."""
    return f"{prompt}{completion}\n\n{test}\n\ncheck({entry_point})\n"


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimate from n samples of which c passed (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))
