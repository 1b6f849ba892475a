"""A process holding files enough that every socket it opens from then on is numbered above
what select() can watch, as a connector holding many pools and connections does."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

FD_SETSIZE = 1024  # select() refuses a descriptor at or above this


@contextmanager
def above_select() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FD_SETSIZE + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise RuntimeError(f"RLIMIT_NOFILE allows {hard} descriptors; {wanted} are needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    held: list[int] = []
    try:
        # each open takes the lowest free number, so every gap below is filled too; tests still
        # check the number their socket got, as a file closed meanwhile frees a lower one
        while not held or held[-1] < FD_SETSIZE + 8:
            held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        if soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
