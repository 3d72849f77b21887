"""Peak memory (RSS of the kernel and its children, sampled every 0.2 s) while a notebook runs,
for checking that the notebooks fit a small notebook server such as Binder (1-2 GB).

    python benchmarks/notebook_memory.py notebooks/01_first_run.ipynb notebooks/02_continuous_batching.ipynb
"""

from __future__ import annotations

import sys
import threading
import time

import nbformat
import psutil
from nbclient import NotebookClient


def peak_rss(path: str) -> int:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=900, kernel_name="python3")
    peak, stop = 0, threading.Event()
    with client.setup_kernel():
        kernel = psutil.Process(client.km.provisioner.process.pid)

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                try:
                    procs = [kernel, *kernel.children(recursive=True)]
                    peak = max(peak, sum(p.memory_info().rss for p in procs))
                except psutil.Error:
                    pass
                time.sleep(0.2)

        threading.Thread(target=sample, daemon=True).start()
        for i, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)
        time.sleep(1.0)
        stop.set()
    return peak


def main() -> None:
    for path in sys.argv[1:] or ["notebooks/01_first_run.ipynb"]:
        print(f"{path}: peak kernel RSS {peak_rss(path) / 2**20:,.0f} MiB")


if __name__ == "__main__":
    main()
