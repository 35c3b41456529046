#!/usr/bin/env python3
"""The Python client (python/rewindfs) against a live mount: labelled
snapshots, listing, reading old versions by id, name, time and `latest`,
the Hugging Face TrainerCallback driven by transformers' own
CallbackHandler, and the Lightning callback driven through its hook
interface (Lightning itself needs torch, too heavy for CI).

usage: client_test.py MOUNTPOINT
"""
import datetime as dt
import os
import sys
import warnings

import rewindfs

mnt = sys.argv[1]
ckpt = os.path.join(mnt, "ckpt")
os.makedirs(ckpt, exist_ok=True)
model = os.path.join(ckpt, "model.bin")

m = rewindfs.find_mount(ckpt)
assert m.mountpoint == os.path.realpath(mnt), m
assert rewindfs.status(mnt)["mountpoint"] == m.mountpoint

with open(model, "wb") as f:
    f.write(b"version one")
r1 = rewindfs.snapshot(ckpt, label="v1")
assert r1["label"] == "v1" and r1["kind"] == "incremental", r1
with open(model, "wb") as f:
    f.write(b"version two, longer")
r2 = rewindfs.snapshot(model, label="v2", kind="differential")
assert r2["kind"] == "differential" and r2["id"] > r1["id"], r2

snaps = rewindfs.snapshots(mnt)
by_id = {s["id"]: s for s in snaps}
assert by_id[r1["id"]]["label"] == "v1" and by_id[r2["id"]]["label"] == "v2", snaps

def read(at):
    with rewindfs.open_snapshot(model, at=at) as f:
        return f.read()

assert read(r1["id"]) == b"version one"
assert read(r1["name"]) == b"version one"
assert read(None) == b"version two, longer"
assert read("latest") == b"version two, longer"
ns = r1["time_ns"]
t1 = dt.datetime.fromtimestamp(ns // 10**9, tz=dt.timezone.utc) + dt.timedelta(
    microseconds=(ns % 10**9) // 1000)
assert read(t1) == b"version one", rewindfs.snapshot_path(model, at=t1)
assert rewindfs.snapshot_path(model, at=r2["id"]).endswith(
    os.path.join(".snapshots", r2["name"], "ckpt", "model.bin"))
for bad in (lambda: rewindfs.open_snapshot(model, mode="wb"),
            lambda: read(10**9),
            lambda: rewindfs.find_mount("/"),
            lambda: read("../x")):
    try:
        bad()
    except rewindfs.RewindfsError:
        pass
    else:
        raise AssertionError("expected a RewindfsError")

# Hugging Face: the real TrainerCallback base and CallbackHandler.
from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_callback import CallbackHandler
from rewindfs.hf import RewindfsCallback

cb = RewindfsCallback()
assert isinstance(cb, TrainerCallback)

class Args:  # what on_save reads of TrainingArguments
    output_dir = ckpt

handler = CallbackHandler([cb], None, None, None, None)
state = TrainerState()
state.global_step = 7
state.epoch = 0.5
control = handler.on_save(Args(), state, TrainerControl())
assert isinstance(control, TrainerControl)
labels = [s["label"] for s in rewindfs.snapshots(mnt)]
# The run (the output directory's name) and the step.
run = os.path.basename(ckpt)
assert f"{run} step-7" in labels, labels
assert cb.taken and cb.taken[-1]["label"] == f"{run} step-7"
# Not on the main process: no snapshot.
state.global_step = 8
state.is_world_process_zero = False
handler.on_save(Args(), state, TrainerControl())
assert f"{run} step-8" not in [s["label"] for s in rewindfs.snapshots(mnt)]
# Outside a mount: a warning, training goes on.
Args.output_dir = "/"
state.is_world_process_zero = True
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    handler.on_save(Args(), state, TrainerControl())
    assert any("rewindfs snapshot" in str(x.message) for x in w)

# Lightning: the hook order it uses (on_save_checkpoint before the file
# is written, then the next hooks).
from rewindfs.lightning import RewindfsLightningCallback

class Trainer:
    global_step = 9
    is_global_zero = True
    default_root_dir = ckpt

lcb = RewindfsLightningCallback()
n = len(rewindfs.snapshots(mnt))
lcb.on_save_checkpoint(Trainer, None, {})
assert len(rewindfs.snapshots(mnt)) == n, "no snapshot before the write"
lcb.on_train_batch_end(Trainer, None, None, None, 0)
assert rewindfs.snapshots(mnt)[-1]["label"] == f"{run} step-9"
lcb.on_fit_end(Trainer, None)
assert len(rewindfs.snapshots(mnt)) == n + 1, "one snapshot per save"
# Two jobs on one mount are told apart by the run: a run name (HF), a
# logger's name and version (Lightning).
class Named(Args):
    output_dir = ckpt
    run_name = "llama-sft"
state.global_step = 11
handler.on_save(Named(), state, TrainerControl())
assert rewindfs.snapshots(mnt)[-1]["label"] == "llama-sft step-11"
class Logger:
    name = "lightning_logs"
    version = 3
class Logged(Trainer):
    global_step = 12
    logger = Logger()
lcb.on_save_checkpoint(Logged, None, {})
lcb.on_train_batch_end(Logged, None, None, None, 0)
assert rewindfs.snapshots(mnt)[-1]["label"] == "lightning_logs/version_3 step-12"
print("python client ok")
