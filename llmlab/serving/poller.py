"""Poll a server's metrics endpoint on the client's event loop and turn each read into a `ServerSample`.

Prometheus text is parsed with prometheus-client's own parser; trtllm-serve's JSON iteration
stats are flattened. Values of one name with different labels are summed (e.g. per engine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from llmlab.core.records import ServerSample
from llmlab.serving.protocols import METRICS


def metric_base(name: str) -> str:
    """A sample's metric family name: without labels and without a counter's `_total`/`_created`."""
    name = name.split("{", 1)[0]
    for suffix in ("_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def only_families(text: str, names: set[str]) -> str:
    """The lines of a Prometheus page that belong to the families `names` (comments included).

    A cheap cut before the parser: a vLLM page is ~650 lines, mostly histogram buckets the samples
    do not use, and parsing all of it on the send loop 10 times a second took 15-30 ms a read."""
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE") and metric_base(parts[2]) in names:
                keep.append(line)
        elif line and metric_base(line.split(None, 1)[0]) in names:
            keep.append(line)
    return "\n".join(keep) + "\n"


def read_prometheus(text: str, names: set[str] | None = None) -> dict[str, float]:
    """Every sample in a Prometheus text page (or, given `names`, of those families only), keyed by
    name (counters without `_total`) and also by `name{label=value}` for each label; values of equal
    keys are summed."""
    from prometheus_client.parser import text_string_to_metric_families

    if names is not None:
        text = only_families(text, names)
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            name = s.name[: -len("_total")] if s.name.endswith("_total") else s.name
            keys = [name] + [f"{name}{{{k}={v}}}" for k, v in s.labels.items()]
            for key in keys:
                out[key] = out.get(key, 0.0) + float(s.value)
    return out


def read_json_stats(payload: Any) -> dict[str, float]:
    """trtllm-serve's `/metrics` (a list of iteration stats, or one): the latest, flattened with dots."""
    if isinstance(payload, list):
        if not payload:
            return {}
        payload = payload[-1]
    out: dict[str, float] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif isinstance(v, int | float) and not isinstance(v, bool):
                out[f"{prefix}{k}"] = float(v)

    walk(payload, "")
    return out


def sample_of(protocol: str, values: dict[str, float], t: float) -> ServerSample:
    """The `ServerSample` that `values` (one read of the metrics) stand for at time `t`."""
    sample = ServerSample(t=t)
    for name, fieldname in METRICS[protocol].items():
        if name in values and getattr(sample, fieldname) is None:
            setattr(sample, fieldname, values[name])
    if sample.kv_usage is None and sample.kv_used is not None and sample.kv_total:
        sample.kv_usage = sample.kv_used / sample.kv_total
    return sample


class Poller:
    """Reads `url` `hz` times a second, handing each sample to `on_sample`, until its task is cancelled."""

    def __init__(
        self,
        url: str,
        protocol: str,
        hz: float,
        clock: Callable[[], float],
        on_sample: Callable[[ServerSample], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.url, self.protocol, self.period = url, protocol, 1.0 / hz
        self.clock, self.on_sample, self.headers = clock, on_sample, headers or {}
        self.errors: list[str] = []
        self.families = {metric_base(name) for name in METRICS[protocol]}
        # no gzip: on loopback compressing each page only costs the server CPU
        self.headers = {"Accept-Encoding": "identity", **self.headers}

    async def poll(self, client: httpx.AsyncClient) -> None:
        """Poll as a task on the client's own event loop (no second thread contending for
        the GIL, which would delay sends by up to its switch interval); ends when cancelled."""

        while True:
            t0 = time.perf_counter()
            try:
                r = await client.get(self.url, headers=self.headers, timeout=2.0)
                r.raise_for_status()
                if self.protocol == "trtllm" and r.headers.get("content-type", "").startswith("application/json"):
                    values = read_json_stats(r.json())
                else:
                    values = read_prometheus(r.text, self.families)
                self.on_sample(sample_of(self.protocol, values, max(self.clock(), 0.0)))
            except Exception as exc:  # a missed sample; the run goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(max(0.0, self.period - (time.perf_counter() - t0)))
