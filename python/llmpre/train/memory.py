"""Memory figures for the log line, in PaddleNLP's names, units and places.

A *memory source* answers two questions, either of which may be "nothing here":

- ``device()``: the accelerator's (allocated, reserved, max allocated, max
  reserved) bytes, or None on a CPU. PaddleNLP reads the same four counters
  (Paddle's per-device "Allocated"/"Reserved" statistics) and logs them in GB
  (2**30 bytes, unrounded) right after ``global_step``.
- ``host()``: the process's (resident, peak resident) bytes, or None where the
  device figures are shown. On a CPU llmpre logs them under the names PaddleNLP
  uses for process memory, ``cpu_mem_used`` and ``cpu_mem_used_peak``, in MB
  (``bytes >> 20``, so whole MiB), after the speed figures.

The log line builder (:func:`llmpre.train.metrics.train_log_values`) takes any
object with these two methods, so its key order and units are tested with a
fake source; :func:`memory_source` picks the real one.
"""

from __future__ import annotations

import os
import resource

GB = 2 ** 30

DEVICE_KEYS = ("current_memory_allocated", "current_memory_reserved",
               "max_memory_allocated", "max_memory_reserved")
HOST_KEYS = ("cpu_mem_used", "cpu_mem_used_peak")


class DeviceMemory:
    """Paddle's allocator statistics of one GPU."""

    def __init__(self, paddle, device_id: int | None = None):
        self.cuda = paddle.device.cuda
        self.device_id = device_id

    def device(self) -> tuple[int, int, int, int]:
        c, d = self.cuda, self.device_id
        return (c.memory_allocated(d), c.memory_reserved(d),
                c.max_memory_allocated(d), c.max_memory_reserved(d))

    def host(self) -> None:
        return None


class HostMemory:
    """The resident set of this process: current from /proc/self/statm, peak
    from getrusage (the peak since the process started, so it includes
    building the model; PaddleNLP's own tracker samples it from the start of
    training)."""

    def device(self) -> None:
        return None

    def host(self) -> tuple[int, int]:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
        try:
            with open("/proc/self/statm") as fh:
                current = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:   # no /proc (not Linux): the peak is the best figure there is
            current = peak
        return current, max(peak, current)


def memory_source(paddle):
    """:class:`DeviceMemory` of the current GPU when Paddle runs on one, else
    :class:`HostMemory`."""
    place = paddle.get_device()
    if place.startswith("gpu"):
        device_id = int(place.split(":")[1]) if ":" in place else 0
        return DeviceMemory(paddle, device_id)
    return HostMemory()


def device_fields(source) -> dict:
    """The four device-memory keys in GB, in PaddleNLP's order; {} on a CPU."""
    stats = source.device()
    if stats is None:
        return {}
    return {key: value / GB for key, value in zip(DEVICE_KEYS, stats)}


def host_fields(source) -> dict:
    """``cpu_mem_used`` and ``cpu_mem_used_peak`` in whole MiB; {} where the
    device figures are shown."""
    stats = source.host()
    if stats is None:
        return {}
    return {key: int(value) >> 20 for key, value in zip(HOST_KEYS, stats)}
