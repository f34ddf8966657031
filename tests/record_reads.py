"""The fovea CLI with a log of every clip read from the cache: ``python -m tests.record_reads LOG ARGS...``.

Each ``ClipCache.read`` appends ``{"loader": bool, "indices": [...]}`` to ``LOG.<rank>``; ``loader`` is true
for reads made off the main thread — the training loader's worker threads (with ``data.num_workers > 0``)
— and false for the main thread's (the held-out evaluation, the mean-latent baseline). Used by the test
that no held-out clip is ever in a training batch, in one process and under torchrun.
"""

from __future__ import annotations

import json
import os
import sys
import threading


def main(log: str, args: list[str]) -> None:
    from fovea.cli import app
    from fovea.core.cache import ClipCache

    original, path = ClipCache.read, f"{log}.{os.environ.get('RANK', '0')}"
    lock = threading.Lock()

    def read(self, indices):
        record = {"loader": threading.current_thread() is not threading.main_thread(),
                  "indices": [int(i) for i in indices]}
        with lock, open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return original(self, indices)

    ClipCache.read = read
    app(args=args, prog_name="fovea")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
