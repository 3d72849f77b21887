"""The quantization x parallelism comparison: choose a model, GPU, dtypes and parallelism, see per-GPU
memory as stacked bars, throughput against latency (Pareto frontier) and the table; simulate one row
and open its dashboard, or, where the hardware is here, run it for real next to the prediction.
The view launches nothing itself: its actions call `llmlab.plan.grid` (`simulate_row`, `run_row`)."""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as W
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


def row_label(r: Any) -> str:
    return f"{r['num_gpus']}x{r['gpu']} tp{r['tp']} pp{r['pp']} {r['weights']}/kv {r['kv_dtype']}"


def table_html(table: PlanTable) -> str:
    """The table as HTML, numbers rounded for reading."""
    fmt = {
        "weights_gb": "{:.1f}".format,
        "kv_gb": "{:.1f}".format,
        "activation_gb": "{:.1f}".format,
        "free_gb": "{:.1f}".format,
        "throughput_tok_s": "{:,.0f}".format,
        "ttft_p50_s": "{:.3f}".format,
        "itl_p50_s": "{:.4f}".format,
        "cost_per_mtok": "${:.2f}".format,
        "shortfall_gb": "{:.1f}".format,
    }
    return table.to_html(formatters=fmt, na_rep="-", index=True, border=0)


class PlanView(W.VBox):
    """Controls that rebuild the plan, its memory bars, Pareto plot and table, and simulate/run actions."""

    def __init__(self, table: PlanTable) -> None:
        self.table = table
        self.last_run: Run | None = None
        self.last_measured: Run | None = None
        settings = table.attrs.get("plan", {})
        models = sorted({*SHAPES, settings.get("model", table["model"].iloc[0])})
        gpus = [*HARDWARE, "cpu"]
        first = table.iloc[0]
        workload_names = list(WORKLOADS)
        wl_name = settings.get("workload")
        if wl_name not in workload_names:
            workload_names = [wl_name, *workload_names]
        self.model = W.Dropdown(options=models, value=first["model"], description="model")
        self.gpu = W.Dropdown(options=gpus, value=first["gpu"] if first["gpu"] in gpus else gpus[0], description="GPU")
        self.num_gpus = W.Dropdown(options=[1, 2, 4, 8], value=int(first["num_gpus"]), description="GPUs")
        self.weights = W.SelectMultiple(
            options=["fp32", "bf16", "fp16", "fp8", "int8", "int4"],
            value=tuple(dict.fromkeys(table["weights"])),
            description="weights",
            rows=6,
        )
        self.kv = W.SelectMultiple(
            options=["auto", "bf16", "fp16", "fp8", "int8", "fp32"], value=("auto",), description="KV dtype", rows=6
        )
        self.pp = W.SelectMultiple(
            options=[1, 2, 4, 8], value=tuple(int(p) for p in dict.fromkeys(table["pp"])), description="pp", rows=4
        )
        self.workload = W.Dropdown(options=workload_names, value=wl_name, description="workload")
        price = settings.get("price_per_hour")
        self.price = W.FloatText(value=price if isinstance(price, int | float) else 0.0, description="$/GPU-h")
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
        price = self.price.value or None
        name = self.workload.value
        workload = name if name in WORKLOADS else self.table.attrs.get("workload_object")
        pps = list(self.pp.value) or [1]
        pps = [p for p in pps if self.num_gpus.value % p == 0] or [1]
        return dict(
            model=self.model.value,
            gpu=self.gpu.value,
            num_gpus=self.num_gpus.value,
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
        ok = t["throughput_tok_s"].notna()
        with self.pareto.batch_update():
            self.pareto.data = []
            self.pareto.add_scatter(
                x=(t.loc[ok, "itl_p50_s"] * 1e3).tolist(),
                y=t.loc[ok, "throughput_tok_s"].tolist(),
                text=[labels[i] for i in range(len(t)) if ok.iloc[i]],
                mode="markers",
                marker=dict(size=10, color=["#e15759" if f else "#4e79a7" for f in front[ok]]),
                name="configurations",
                hovertemplate="%{text}<br>ITL %{x:.2f} ms<br>%{y:,.0f} tok/s<extra></extra>",
            )
            fx = t.loc[front].sort_values("itl_p50_s")
            self.pareto.add_scatter(
                x=(fx["itl_p50_s"] * 1e3).tolist(),
                y=fx["throughput_tok_s"].tolist(),
                mode="lines",
                line=dict(width=3, color="#e15759"),
                name="Pareto frontier",
            )
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
