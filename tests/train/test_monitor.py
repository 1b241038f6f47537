"""metrics.jsonl (append, repair, dedup) and the VisualDL / TensorBoard writers."""

from __future__ import annotations

import glob
import json
import struct

import pytest

from llmpre.errors import ConfigError
from llmpre.train.monitor import Monitor, read_metrics


def test_jsonl_append_dedup_and_partial_lines(tmp_path):
    m = Monitor(str(tmp_path), report_to="none")
    m.log("train", 1, {"loss": 9.0})
    m.log("train", 2, {"loss": 8.0})
    m.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"type": "train", "step": 3, "lo')    # killed mid-write
    m = Monitor(str(tmp_path), report_to="none")         # a resumed run
    m.log("train", 2, {"loss": 7.5})                     # recomputed after the restart
    m.log("eval", 2, {"eval_loss": 7.0})
    m.close()
    lines = open(tmp_path / "metrics.jsonl").read().splitlines()
    assert lines[2].endswith('"lo') and json.loads(lines[3])["loss"] == 7.5
    metrics = read_metrics(str(tmp_path))
    assert [(e["step"], e["loss"]) for e in metrics["train"]] == [(1, 9.0), (2, 7.5)]
    assert metrics["eval"][0]["eval_loss"] == 7.0
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        read_metrics(str(tmp_path / "nope"))


def test_visualdl_scalars(tmp_path):
    pytest.importorskip("visualdl", reason="VisualDL is not installed (pip install visualdl)")
    from visualdl import LogReader

    m = Monitor(str(tmp_path), report_to="visualdl")
    assert m.kind == "visualdl"
    for step, loss in [(1, 3.0), (2, 2.5)]:
        m.log("train", step, {"loss": loss, "learning_rate": 0.1, "grad_norm": 1.0})
    m.log("eval", 2, {"eval_loss": 2.75})
    m.close()
    log_file = glob.glob(str(tmp_path / "runs" / "*.log"))[0]
    reader = LogReader(file_path=log_file)
    losses = reader.get_data("scalar", "train/loss")
    assert [(r.id, round(r.value, 4)) for r in losses] == [(1, 3.0), (2, 2.5)]
    assert [round(r.value, 4) for r in reader.get_data("scalar", "eval/eval_loss")] == [2.75]


def _read_tfevents(path):
    """Scalars of a TensorBoard event file (TFRecord framing + Event protos)."""
    from tensorboardX.proto import event_pb2

    out = []
    data = open(path, "rb").read()
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos:pos + 8])
        payload = data[pos + 12: pos + 12 + length]
        pos += 12 + length + 4
        event = event_pb2.Event.FromString(payload)
        for v in event.summary.value:
            out.append((v.tag, event.step, round(v.simple_value, 4)))
    return out


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed (pip install tensorboardX)")
    m = Monitor(str(tmp_path), report_to="tensorboard")
    assert m.kind == "tensorboard"
    m.log("train", 5, {"loss": 1.25, "loss_scale": 1024.0})
    m.close()
    events = _read_tfevents(glob.glob(str(tmp_path / "runs" / "events.out.tfevents*"))[0])
    assert ("train/loss", 5, 1.25) in events and ("train/loss_scale", 5, 1024.0) in events
