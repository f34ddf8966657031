"""Writes checkpoints of a run until killed, for the crash-safety test: ``python -m tests.checkpoint_writer RUN``.

It loads the run's newest checkpoint once. For every step number read from stdin it forks a child that
writes checkpoint after checkpoint from that step on with the real ``save_checkpoint`` (keeping 2, so
old ones are deleted as well), prints the child's pid, and prints ``reaped`` once the child is dead:
the test kills each child with SIGKILL at a random moment, then inspects the run.
"""

from __future__ import annotations

import os
import sys

import torch


def main(run_path: str) -> None:
    import fovea
    from fovea.core.checkpoint import read_checkpoint, restore_training, save_checkpoint
    from fovea.core.rundir import RunDir
    from fovea.core.state import prepare_training

    torch.set_num_threads(1)   # no thread pool to inherit across fork
    run = RunDir.open(run_path)
    config = fovea.load_config(run.config_file)
    state = prepare_training(config, fovea.build_model(config).train(), torch.device("cpu"))
    checkpoint = read_checkpoint(run.latest_checkpoint)
    restore_training(checkpoint, state)
    print("ready", flush=True)
    for line in sys.stdin:
        first_step = int(line)
        pid = os.fork()
        if pid == 0:
            for step in range(first_step, first_step + 500):   # bounded: never outlives a failed test for long
                progress = {**checkpoint.training_state["progress"], "step": step}
                save_checkpoint(run, step, state, checkpoint.loader_state, progress, keep=2)
            os._exit(0)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
