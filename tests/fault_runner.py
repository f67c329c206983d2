"""Run a `crossgraft` command and kill this process (SIGKILL, as `kill -9` does) at a planned point, to test what
an interruption leaves behind. Used by test_faults.py as `python fault_runner.py PLAN crossgraft-args…`.

Plans:
  none                 run to the end
  after:SECONDS        a timer kills the process
  write:N:mid          the N-th atomic write dies halfway through writing its temporary file
  write:N:rename       the N-th atomic write dies with its temporary file complete, before the rename
  trainer_state:N      the N-th Trainer checkpoint dies halfway through writing trainer_state.json
  zero_shard:N         under DeepSpeed, every process dies halfway through writing its N-th ZeRO optimizer shard
                       (`global_stepK/*optim_states.pt`); run it under a launcher (torchrun), one plan per process
"""

from __future__ import annotations

import builtins
import os
import signal
import sys
import threading


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plan_atomic_write(number: int, where: str) -> None:
    import crossgraft.files as files

    count = {"opened": 0}
    real_open, real_replace = builtins.open, os.replace

    class DyingFile:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written + len(data) > 64:  # some bytes are on disk, the rest never will be
                self.handle.write(data[: max(0, 64 - self.written)])
                self.handle.flush()
                die()
            self.written += len(data)
            return self.handle.write(data)

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

    def counting_open(path, *args, **kwargs):
        handle = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp"):
            count["opened"] += 1
            if count["opened"] == number and where == "mid":
                return DyingFile(handle)
        return handle

    def dying_replace(source, target):
        if str(source).endswith(".tmp") and count["opened"] == number and where == "rename":
            die()
        return real_replace(source, target)

    files.open = counting_open  # crossgraft.files finds this before the builtin
    os.replace = dying_replace


def plan_trainer_state(number: int) -> None:
    from transformers.trainer_callback import TrainerState

    real_save = TrainerState.save_to_json
    count = {"saved": 0}

    def dying_save(self, json_path):
        real_save(self, json_path)
        if "checkpoint-" in str(json_path):
            count["saved"] += 1
            if count["saved"] == number:
                with open(json_path, "r+b") as handle:  # cut the file the kill interrupted
                    handle.truncate(os.path.getsize(json_path) // 2)
                die()

    TrainerState.save_to_json = dying_save


def plan_zero_shard(number: int) -> None:
    import io

    import torch

    real_save = torch.save
    count = {"saved": 0}

    def dying_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and str(f).endswith("optim_states.pt"):
            count["saved"] += 1
            if count["saved"] == number:
                buffer = io.BytesIO()
                real_save(obj, buffer, *args, **kwargs)
                with open(f, "wb") as handle:  # half the shard is on disk, the rest never will be
                    handle.write(buffer.getvalue()[: buffer.tell() // 2])
                die()
        return real_save(obj, f, *args, **kwargs)

    torch.save = dying_save  # DeepSpeed's checkpoint engine calls torch.save through the module


def main() -> int:
    plan, args = sys.argv[1], sys.argv[2:]
    kind, *params = plan.split(":")
    if kind == "after":
        threading.Timer(float(params[0]), die).start()
    elif kind == "write":
        plan_atomic_write(int(params[0]), params[1])
    elif kind == "trainer_state":
        plan_trainer_state(int(params[0]))
    elif kind == "zero_shard":
        plan_zero_shard(int(params[0]))
    from crossgraft.cli import main as crossgraft_main

    return crossgraft_main(args)


if __name__ == "__main__":
    sys.exit(main())
