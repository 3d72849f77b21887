"""Peak memory (RSS of the kernel and its children, sampled every 0.2 s) while a notebook runs,
for checking that the notebooks fit a small notebook server such as Binder (1-2 GB).

    python benchmarks/notebook_memory.py notebooks/01_first_run.ipynb notebooks/02_continuous_batching.ipynb
    python benchmarks/notebook_memory.py --cells notebooks/03_paged_kv_cache.ipynb   # and each cell's peak
"""

from __future__ import annotations

import sys
import threading
import time

import nbformat
import psutil
from nbclient import NotebookClient


def peak_rss(path: str, cells: bool = False) -> int:
    """The kernel's peak RSS in bytes over the whole notebook; `cells` also prints each code cell's
    peak and the RSS it leaves behind, to find which cell holds the memory."""
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
                before = peak
                client.execute_cell(cell, i)
                if cells:
                    time.sleep(0.3)
                    after = sum(p.memory_info().rss for p in [kernel, *kernel.children(recursive=True)])
                    first = cell.source.strip().splitlines()[0][:60] if cell.source.strip() else ""
                    print(
                        f"  cell {i:3d}: peak {peak / 2**20:6,.0f} MiB (was {before / 2**20:6,.0f}), "
                        f"after {after / 2**20:6,.0f} MiB  {first}"
                    )
        time.sleep(1.0)
        stop.set()
    return peak


def main() -> None:
    args = sys.argv[1:]
    cells = "--cells" in args
    paths = [a for a in args if a != "--cells"] or ["notebooks/01_first_run.ipynb"]
    for path in paths:
        print(f"{path}: peak kernel RSS {peak_rss(path, cells) / 2**20:,.0f} MiB", flush=True)


if __name__ == "__main__":
    main()
