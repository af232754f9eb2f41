"""``python -m tidelake.serve.dashboard._child PARENT_PID <streamlit args>``.

Asks the kernel to SIGTERM this process when its parent dies (Linux
``PR_SET_PDEATHSIG``, kept across exec), then becomes ``streamlit``. Streamlit
handles SIGTERM by shutting its server down cleanly.
"""

from __future__ import annotations

import os
import signal
import sys


def main(parent: int, args: list[str]) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            sys.exit(0)
    os.execv(sys.executable, [sys.executable, "-m", "streamlit", *args])


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
