"""`python -m gateway.pool.launch PARENT_PID CMD...`: exec CMD so that it dies with the gateway.

A gateway killed with SIGKILL runs no shutdown code; without this its backends
would live on as orphans holding memory and ports. On Linux the kernel sends
SIGKILL to the child when the gateway's main thread (which started it) exits:
a backend keeps no state worth a graceful stop, and nothing it does on SIGTERM
can keep it alive then. Elsewhere this only execs CMD.
"""
import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main() -> None:
    parent, command = int(sys.argv[1]), sys.argv[2:]
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the gateway died before prctl took effect
            sys.exit(1)
    os.execv(command[0], command)  # the setting survives exec


if __name__ == "__main__":
    main()
