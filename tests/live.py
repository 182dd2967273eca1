"""Helpers for tests that start live processes (servers, distributed runs): a free loopback port, and Ctrl-C as a
terminal delivers it."""

from __future__ import annotations

import signal
import socket


def free_port() -> int:
    """A loopback TCP port nobody listens on right now: free to bind, or closed to connect to."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sigint_as_in_a_terminal() -> None:
    """`preexec_fn` of a job the test stops with Ctrl-C: SIGINT at its default, as for a command started in a
    terminal. A pytest started in the background (`cmd &` without job control, `nohup`) ignores SIGINT, and an ignored
    signal is inherited: Python would then install no KeyboardInterrupt handler and the job could not be stopped."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
