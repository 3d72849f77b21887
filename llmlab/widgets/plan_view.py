"""The quantization x parallelism comparison: choose a model, GPU, dtypes and parallelism, see per-GPU
memory as stacked bars, throughput against latency (Pareto frontier) and the table; simulate one row
and open its dashboard, or, where the hardware is here, run it for real next to the prediction.
The view launches nothing itself: its actions call `llmlab.plan.grid` (`simulate_row`, `run_row`)."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
import pandas as pd
import plotly.graph_objects as go

from llmlab.models.shapes import SHAPES
from llmlab.plan.calibrate import measured_vs_predicted
from llmlab.plan.grid import WORKLOADS, PlanTable, is_local, pareto_mask, plan, run_row, simulate_row
from llmlab.plan.hardware import HARDWARE
from llmlab.session.run import Run

MEMORY_PARTS = [
    ("weights_gb", "weights", "#4e79a7"),
    ("kv_gb", "KV cache", "#59a14f"),
    ("activation_gb", "activations + workspace", "#f28e2b"),
    ("free_gb", "unused", "#d9d9d9"),
]


# the table's columns as the widget shows them: short headers, so the cost column fits a notebook
TABLE_COLUMNS = {
    "gpu": "GPU",
    "num_gpus": "GPUs",
    "tp": "tp",
    "pp": "pp",
    "weights": "weights",
    "kv_dtype": "KV",
    "weights_gb": "weights GB",
    "kv_gb": "KV GB",
    "max_concurrency": "max seqs",
    "throughput_tok_s": "tok/s",
    "ttft_p50_s": "TTFT p50 s",
    "itl_p50_s": "ITL p50 ms",
    "cost_per_mtok": "$/M tok",
    "note": "note",
}
PAD = 0.08  # share of each axis span left around the Pareto points so none is clipped


def row_label(r: Any) -> str:
    return f"{r['num_gpus']}x{r['gpu']} tp{r['tp']} pp{r['pp']} {r['weights']}/kv {r['kv_dtype']}"


def table_html(table: PlanTable) -> str:
    """The table as compact HTML that fits a notebook: fewer, short-headed columns, numbers rounded,
    a note that wraps, and a horizontal scroll bar rather than a cut column on a narrow page."""
    fmt = {
        "weights_gb": "{:.1f}".format,
        "kv_gb": "{:.1f}".format,
        "throughput_tok_s": "{:,.0f}".format,
        "ttft_p50_s": "{:.2f}".format,
        "itl_p50_s": "{:.1f}".format,
        "cost_per_mtok": "${:.2f}".format,
    }
    shown = table[list(TABLE_COLUMNS)].copy()
    shown["itl_p50_s"] = shown["itl_p50_s"] * 1e3
    body = pd.DataFrame(shown).to_html(formatters=fmt, na_rep="-", index=True, border=0)
    for col, header in TABLE_COLUMNS.items():
        body = body.replace(f"<th>{col}</th>", f"<th>{html.escape(header)}</th>")
    style = "<style>.llmlab-plan td,.llmlab-plan th{padding:2px 6px;font-size:12px;white-space:nowrap}</style>"
    return f"{style}<div class='llmlab-plan' style='max-width:100%;overflow-x:auto'>{body}</div>"


def price_text(price: Any, gpus: list[str]) -> str:
    """The $/GPU-h control's text: one number, or `GPU=price` per GPU with "n/a" where no price is known."""
    if isinstance(price, int | float):
        return f"{price:g}"
    prices = price if isinstance(price, dict) else {}
    parts = []
    for g in gpus:
        p = prices.get(g, HARDWARE[g].price_per_hour if g in HARDWARE else None)
        parts.append(f"{g}={'n/a' if p is None else f'{p:g}'}")
    return ", ".join(parts)


def parse_price(text: str) -> float | dict[str, float] | None:
    """Read the $/GPU-h control back: a number, `GPU=price, ...` (n/a skipped), or empty for the catalogue's."""
    text = text.strip()
    if not text or text == "n/a":
        return None
    if "=" not in text:
        try:
            return float(text)
        except ValueError:
            hint = "give a number, or GPU=price pairs such as 'H100-SXM=3, A100-80GB=1.8'"
            raise ValueError(f"$/GPU-h {text!r}: {hint}") from None
    prices = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if value in ("", "n/a"):
            continue
        try:
            prices[name] = float(value)
        except ValueError:
            raise ValueError(f"$/GPU-h {part.strip()!r}: the price after '=' must be a number or n/a") from None
    return prices or None


def padded_range(values: list[float], pad: float = PAD) -> list[float]:
    """An axis range around `values` with `pad` of their span (or of their size, for one value) each side."""
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad or abs(hi) * pad or 1.0
    return [lo - margin, hi + margin]


class PlanView(W.VBox):
    """Controls that rebuild the plan, its memory bars, Pareto plot and table, and simulate/run actions."""

    def __init__(self, table: PlanTable) -> None:
        self.table = table
        self.last_run: Run | None = None
        self.last_measured: Run | None = None
        settings = table.attrs.get("plan", {})
        models = sorted({*SHAPES, settings.get("model", table["model"].iloc[0])})
        gpus = list(dict.fromkeys([*HARDWARE, "cpu", *table["gpu"]]))
        first = table.iloc[0]
        workload_names = list(WORKLOADS)
        wl_name = settings.get("workload")
        if wl_name not in workload_names:
            workload_names = [wl_name, *workload_names]
        self.model = W.Dropdown(options=models, value=first["model"], description="model")
        self.gpu = W.SelectMultiple(
            options=gpus, value=tuple(dict.fromkeys(table["gpu"])), description="GPU", rows=min(6, len(gpus))
        )
        counts = sorted({1, 2, 4, 8, *(int(n) for n in table["num_gpus"])})
        self.num_gpus = W.SelectMultiple(
            options=counts, value=tuple(sorted({int(n) for n in table["num_gpus"]})), description="GPUs", rows=4
        )
        self.weights = W.SelectMultiple(
            options=["fp32", "bf16", "fp16", "fp8", "int8", "int4"],
            value=tuple(dict.fromkeys(table["weights"])),
            description="weights",
            rows=6,
        )
        kv_given = settings.get("kv_dtype")  # None: each weight dtype's own KV dtype ("auto")
        kv_value = ("auto",) if kv_given is None else tuple(dict.fromkeys(table["kv_dtype"]))
        self.kv = W.SelectMultiple(
            options=list(dict.fromkeys(["auto", "bf16", "fp16", "fp8", "int8", "fp32", *kv_value])),
            value=kv_value,
            description="KV dtype",
            rows=6,
        )
        self.pp = W.SelectMultiple(
            options=[1, 2, 4, 8], value=tuple(int(p) for p in dict.fromkeys(table["pp"])), description="pp", rows=4
        )
        self.workload = W.Dropdown(options=workload_names, value=wl_name, description="workload")
        self.price = W.Text(
            value=price_text(settings.get("price_per_hour"), list(self.gpu.value)),
            description="$/GPU-h",
            placeholder="n/a",
            layout=W.Layout(width="420px"),
        )
        self.compare_button = W.Button(description="compare", button_style="primary", icon="table")
        self.compare_button.on_click(lambda _: self.on_compare())

        self.memory = go.FigureWidget(layout=dict(barmode="stack", height=340, title="memory per GPU (GB)"))
        self.pareto = go.FigureWidget(
            layout=dict(
                height=340,
                title="throughput vs latency (frontier in bold)",
                xaxis_title="ITL p50 (ms)",
                yaxis_title="output tokens/s",
            )
        )
        self.table_view = W.HTML()
        self.row = W.Dropdown(description="row")
        self.simulate_button = W.Button(description="simulate", icon="play")
        self.simulate_button.on_click(lambda _: self.on_simulate())
        self.run_button = W.Button(description="run for real", icon="bolt")
        self.run_button.on_click(lambda _: self.on_run())
        self.status = W.HTML()
        self.result = W.VBox()
        controls = W.VBox(
            [
                W.HBox([self.model, self.gpu, self.num_gpus]),
                W.HBox([self.weights, self.kv, self.pp]),
                W.HBox([self.workload, self.price, self.compare_button]),
            ]
        )
        actions = W.HBox([self.row, self.simulate_button, self.run_button])
        super().__init__(
            [controls, W.HBox([self.memory, self.pareto]), self.table_view, actions, self.status, self.result]
        )
        self.draw()

    # building the table ------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """The plan() arguments the controls describe."""
        kv = [k for k in self.kv.value if k != "auto"] or None
        price = parse_price(self.price.value)
        name = self.workload.value
        workload = name if name in WORKLOADS else self.table.attrs.get("workload_object")
        counts = list(self.num_gpus.value) or [1]
        pps = list(self.pp.value) or [1]
        pps = [p for p in pps if all(n % p == 0 for n in counts)] or [1]
        return dict(
            model=self.model.value,
            gpu=list(self.gpu.value) or ["H100-SXM"],
            num_gpus=counts,
            weights=list(self.weights.value) or ["bf16"],
            kv_dtype=kv,
            pp=pps,
            workload=workload,
            price_per_hour=price,
        )

    def on_compare(self) -> None:
        """Rebuild the table from the controls; a bad choice shows its error instead."""
        self.status.value = "computing..."
        try:
            self.table = plan(**self.settings())
        except ValueError as exc:
            self.status.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return
        self.status.value = ""
        self.draw()

    # drawing -----------------------------------------------------------------------------
    def draw(self) -> None:
        t = self.table
        labels = [row_label(r) for _, r in t.iterrows()]
        with self.memory.batch_update():
            self.memory.data = []
            for col, name, colour in MEMORY_PARTS:
                self.memory.add_bar(x=labels, y=t[col].tolist(), name=name, marker_color=colour)
        front = pareto_mask(t)
        ok = t["throughput_tok_s"].notna() & t["itl_p50_s"].notna()
        xs = (t.loc[ok, "itl_p50_s"] * 1e3).tolist()
        ys = t.loc[ok, "throughput_tok_s"].tolist()
        with self.pareto.batch_update():
            self.pareto.data = []
            self.pareto.add_scatter(
                x=xs,
                y=ys,
                text=[labels[i] for i in range(len(t)) if ok.iloc[i]],
                mode="markers",
                marker=dict(size=9, color="#4e79a7"),
                name="configurations",
                hovertemplate="%{text}<br>ITL %{x:.2f} ms<br>%{y:,.0f} tok/s<extra></extra>",
            )
            # the frontier: a bold line through its points, drawn over them (lines+markers so that a
            # one-point frontier still shows)
            fx = t.loc[front].sort_values("itl_p50_s")
            self.pareto.add_scatter(
                x=(fx["itl_p50_s"] * 1e3).tolist(),
                y=fx["throughput_tok_s"].tolist(),
                mode="lines+markers",
                line=dict(width=4, color="#e15759"),
                marker=dict(size=12, color="#e15759"),
                name="Pareto frontier",
                hoverinfo="skip",
            )
            if xs:
                self.pareto.update_xaxes(range=padded_range(xs), autorange=False)
                self.pareto.update_yaxes(range=padded_range(ys), autorange=False)
        self.table_view.value = table_html(t)
        options = [(f"{i}: {labels[i]}" + ("" if t["fits"].iloc[i] else " (does not fit)"), i) for i in range(len(t))]
        self.row.options = options
        fitting = [i for i in range(len(t)) if t["fits"].iloc[i]]
        self.row.value = fitting[0] if fitting else 0
        self.run_button.disabled = not any(is_local(r) for _, r in t.iterrows())

    # actions -----------------------------------------------------------------------------
    def on_simulate(self) -> Run | None:
        """Simulate the chosen row on the plan's workload and open its dashboard below."""
        i = self.row.value
        try:
            run = simulate_row(self.table, i)
        except ValueError as exc:
            self.status.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return None
        self.last_run = run
        self.status.value = f"simulated row {i}: {html.escape(repr(run))}"
        self.result.children = [run.show()]
        return run

    def on_run(self, workload: Any = None) -> Run | None:
        """Run the chosen row for real (local CPU rows only, `llmlab.plan.grid.run_row`), then show the
        measured summary next to the prediction on the same workload and KV pool."""
        i = self.row.value
        self.status.value = f"running row {i} on this CPU..."
        try:
            measured, predicted = run_row(self.table, i, workload)
        except ValueError as exc:  # not a local row, or a knob the native engine refuses
            self.status.value = f"<span style='color:#c00'>{html.escape(str(exc))}</span>"
            return None
        self.last_run, self.last_measured = predicted, measured
        table = measured_vs_predicted(measured, predicted)
        self.status.value = f"measured next to predicted, row {i}:" + table.to_html(float_format="{:.4g}".format)
        self.result.children = [
            W.HTML("<b>measured</b>"),
            measured.show(),
            W.HTML("<b>predicted</b>"),
            predicted.show(),
        ]
        return measured
