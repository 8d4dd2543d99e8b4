"""train.report_to: the loop's metrics mirrored to TensorBoard and wandb (offline), read back from their files."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest

from gptrecipe.config import ConfigError
from gptrecipe.train import TrainConfig, train
from tests.synthetic import StreamTask, pattern_stream
from tests.test_train import cfg, fresh_model


def jsonl_losses(run_dir) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def run(tmp_path, report_to: list[str]):
    res = train(fresh_model(), StreamTask(pattern_stream(), 32), cfg(max_steps=6, eval_every=3, report_to=report_to),
                tmp_path)
    assert jsonl_losses(tmp_path) == res.losses and len(res.losses) == 6
    return res


def test_tensorboard_event_files_hold_the_losses(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    res = run(tmp_path, ["tensorboard"])
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "val_loss"} <= set(events.Tags()["scalars"])
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert logged.keys() == res.losses.keys()
    assert all(logged[s] == pytest.approx(res.losses[s], rel=1e-6) for s in logged)  # stored as float32
    assert [e.step for e in events.Scalars("val_loss")] == [0, 3, 6]


def wandb_history(run_file) -> list[dict]:
    """The history rows of an offline run's .wandb file: LevelDB-log framed (32 KiB blocks, 7-byte record headers
    of crc32, length and type 1 full / 2 first / 3 middle / 4 last) protobuf `Record`s after a 7-byte file header."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, part, rows = 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
        part += data[pos + 7: pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = Record.FromString(part)
            part = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json)
                             for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_losses(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var, sub in [("WANDB_CONFIG_DIR", "cfg"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")]:
        monkeypatch.setenv(var, str(tmp_path / sub))  # nothing written to the home directory
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    res = run(run_dir, ["wandb"])
    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows = wandb_history(run_file)
    logged = {r["_step"]: r["loss"] for r in rows if "loss" in r}
    assert logged.keys() == res.losses.keys()
    assert all(logged[s] == pytest.approx(res.losses[s], rel=1e-12) for s in logged)
    assert [r["_step"] for r in rows if "val_loss" in r] == [0, 3, 6]


def test_trackers_are_optional_and_checked(tmp_path, monkeypatch):
    # importing the package or a stage does not import either tracker
    code = ("import sys, gptrecipe.cli, gptrecipe.train, gptrecipe.sft, gptrecipe.pretrain\n"
            "assert not {'wandb', 'tensorboard', 'torch.utils.tensorboard'} & set(sys.modules), sys.modules.keys()")
    subprocess.run([sys.executable, "-c", code], check=True)
    from gptrecipe.sft import load_sft_config

    assert load_sft_config("tiny", ["train.report_to=tensorboard,wandb"]).train.report_to == ["tensorboard", "wandb"]
    with pytest.raises(ConfigError, match="train.report_to: unknown tracker 'mlflow'"):
        load_sft_config("tiny", ["train.report_to=[\"mlflow\"]"])
    assert TrainConfig().report_to == []  # off by default
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ConfigError, match="names 'wandb' but the wandb package is not installed"):
        run(tmp_path, ["wandb"])
