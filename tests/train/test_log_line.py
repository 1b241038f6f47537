"""The per-interval log line: PaddleNLP's keys, order, units and positions,
with a fake memory source for the GPU case (this machine has no GPU)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import types

import pytest

from llmpre.train.memory import GB, DeviceMemory, HostMemory, device_fields, host_fields, memory_source
from llmpre.train.metrics import format_log, interval_speed, train_log_values

SPEED = interval_speed(runtime=1.1518, samples=1, steps=1, seq=1024, world_size=1, flops_per_token=3.2e9)

# PaddleNLP 2.8.1 trainer.py `_maybe_log_save_evaluate` + `Trainer.log` (newest versions add
# interval_hardware_tflops_per_device between the tokens and steps figures).
GPU_ORDER = ["loss", "learning_rate", "global_step", "current_memory_allocated", "current_memory_reserved",
             "max_memory_allocated", "max_memory_reserved", "interval_runtime", "interval_samples_per_second",
             "interval_tokens_per_second_per_device", "interval_hardware_tflops_per_device",
             "interval_steps_per_second", "progress_or_epoch"]
CPU_ORDER = ["loss", "learning_rate", "global_step", "interval_runtime", "interval_samples_per_second",
             "interval_tokens_per_second_per_device", "interval_hardware_tflops_per_device",
             "interval_steps_per_second", "cpu_mem_used", "cpu_mem_used_peak", "progress_or_epoch"]


class FakeDevice:
    """Four distinct byte counts, so a swapped pair shows."""
    stats = (int(7.5 * GB), int(7.75 * GB), int(12.25 * GB), int(12.5 * GB))

    def device(self):
        return self.stats

    def host(self):
        return None


class FakeHost:
    stats = (452 * 2 ** 20 + 12345, 704 * 2 ** 20 + 999)

    def device(self):
        return None

    def host(self):
        return self.stats


def test_gpu_line_has_the_four_device_figures_after_global_step():
    values = train_log_values(12.0635252, 2e-06, 1, FakeDevice(), SPEED, 0.0)
    assert list(values) == GPU_ORDER
    assert [values[k] for k in GPU_ORDER[3:7]] == [7.5, 7.75, 12.25, 12.5]   # GB, unrounded


def test_cpu_line_has_process_memory_in_mb_and_no_device_figures():
    values = train_log_values(9.1, 3e-4, 2, FakeHost(), SPEED, 0.0001)
    assert list(values) == CPU_ORDER
    assert (values["cpu_mem_used"], values["cpu_mem_used_peak"]) == (452, 704)   # bytes >> 20
    assert not any("memory" in k for k in values)


def test_skipped_steps_come_after_progress():
    values = train_log_values(float("nan"), 3e-4, 2, FakeHost(), SPEED, 0.0, skipped=2)
    assert list(values) == CPU_ORDER + ["skipped_steps"]


def log_line(values: dict) -> str:
    """The line as llmpre's logger writes it (setup_logging's format: the timestamp has a comma)."""
    from llmpre.train.trainer import setup_logging

    setup_logging()
    formatter = logging.getLogger("llmpre").handlers[0].formatter
    record = logging.LogRecord("llmpre", logging.INFO, __file__, 0, format_log(values), None, None)
    return formatter.format(record)


def awk(line: str, *programs: list[str]) -> str:
    """Pipe ``line`` through awk commands, as the benchmark scripts do."""
    text = line + "\n"
    for argv in programs:
        text = subprocess.run(["awk", *argv], input=text, capture_output=True, text=True, check=True).stdout
    return text.strip()


@pytest.mark.skipif(shutil.which("awk") is None, reason="awk is not installed")
def test_benchmark_field_cuts_read_the_same_fields():
    """Positional cuts of the GPU line (comma fields; the timestamp's comma makes the
    line's first key field 2): FlagOpen/FlagCX docs/paddle/nvidia.md (commit cbf2f48),
    which measures PaddleNLP's run_pretrain.py with `awk -F ','` fields 11 (tokens/s
    per device), 7 (max_memory_allocated) and 8 (max_memory_reserved). Key cuts:
    PaddlePaddle/PaddleNLP scripts/distribute/ci_case_auto.sh (`awk -F 'max_memory_reserved: '`,
    then the first comma field)."""
    values = train_log_values(7.5415, 3e-05, 30, FakeDevice(), SPEED, 0.01)
    line = log_line(values)
    assert awk(line, ["-F", ",", "{print $11}"], ["-F", " ", "{print $2}"]) == \
        str(values["interval_tokens_per_second_per_device"])
    assert awk(line, ["-F", ",", "{print $7}"]) == f"max_memory_allocated: {values['max_memory_allocated']}"
    assert awk(line, ["-F", ",", "{print $8}"]) == f"max_memory_reserved: {values['max_memory_reserved']}"
    for key in ("loss", "interval_tokens_per_second_per_device", "max_memory_reserved"):
        assert awk(line, ["-F", f"{key}: ", "{print $2}"], ["-F", ",", "{print $1}"]) == str(values[key])


def fake_paddle(place: str):
    calls = []

    def counter(name, value):
        def read(device=None):
            calls.append((name, device))
            return value
        return read

    cuda = types.SimpleNamespace(memory_allocated=counter("memory_allocated", 1 * GB),
                                 memory_reserved=counter("memory_reserved", 2 * GB),
                                 max_memory_allocated=counter("max_memory_allocated", 3 * GB),
                                 max_memory_reserved=counter("max_memory_reserved", 4 * GB))
    return types.SimpleNamespace(get_device=lambda: place, device=types.SimpleNamespace(cuda=cuda)), calls


def test_device_source_reads_paddles_four_counters_of_the_current_gpu():
    paddle, calls = fake_paddle("gpu:3")
    source = memory_source(paddle)
    assert isinstance(source, DeviceMemory) and host_fields(source) == {}
    assert device_fields(source) == {"current_memory_allocated": 1.0, "current_memory_reserved": 2.0,
                                     "max_memory_allocated": 3.0, "max_memory_reserved": 4.0}
    assert {device for _, device in calls} == {3}


def test_cpu_source_is_this_process():
    paddle, calls = fake_paddle("cpu")
    source = memory_source(paddle)
    assert isinstance(source, HostMemory) and device_fields(source) == {} and not calls
    current, peak = source.host()
    with open("/proc/self/status") as fh:
        rss_kib = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))
    assert abs(current - rss_kib * 1024) < 64 * 2 ** 20   # the same figure, read moments apart
    assert peak >= current > 0
