#!/usr/bin/env python3
"""Fit the Cortex-M4 cost model (tflm_patch/cost.py) to instructions measured on QEMU.

Every case (a model, original or patched by one planner request) is run with
tools/m4_speed.py (Arduino_TensorFlowLite with CMSIS-NN on QEMU mps2-an386, instructions
per Invoke and per operator from TFLM's MicroProfiler); each operator gives one equation
features . coefficients = measured instructions, and each case one more for its total
per Invoke. The equations are weighted by 1 / the case's measured total (every case counts
alike, whatever its size) and solved by non-negative least squares (scipy.optimize.nnls),
with a weak pull of every coefficient towards its current value (so that a feature few
operators exercise keeps a sensible one). Features no case has keep their coefficients.

    python tools/calibrate_m4_costs.py                 # fit, print predicted vs measured
    python tools/calibrate_m4_costs.py --check         # the current table only, no fit
    python tools/calibrate_m4_costs.py --write         # fit and write the table into cost.py
    python tools/calibrate_m4_costs.py --models zoo:odd_stride2 --requests original memory

Needs ARDUINO_TENSORFLOWLITE_SRC, arm-none-eabi-gcc and qemu-system-arm (m4_speed.reason()).
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import m4_speed

from tflm_patch import cost
from tflm_patch.model import load_model
from tflm_patch.planner import PlanRequest, patched_model_object, plan
from tflm_patch.rewrite import to_checked_bytes

log = logging.getLogger("calibrate_m4_costs")

COST_PY = Path(cost.__file__)
PRIOR_WEIGHT = 0.005  # of one case's weight, per coefficient, relative to its current value

# planner requests a case can use; "original" is the model itself
REQUESTS: dict[str, PlanRequest | None] = {
    "original": None,
    "default": PlanRequest(),
    "memory": PlanRequest(objective="memory"),
    "memory-10%": PlanRequest(objective="memory", max_overhead=0.10),
    "single-stage": PlanRequest(objective="memory", multi_stage=False),
    "latency-100%": PlanRequest(max_latency=1.0),
    "latency-300%": PlanRequest(max_latency=3.0),
}
DEFAULT_REQUESTS = ("original", "default", "memory", "single-stage", "latency-100%")


@dataclass
class Case:
    model: str
    request: str
    data: bytes
    measured_total: int
    measured_ops: list[int]  # per operator of `data`
    features: list[cost.Features]  # per operator of `data`

    @property
    def label(self) -> str:
        return f"{self.model} [{self.request}]"

    def predicted(self, coefficients: Mapping[str, float]) -> int:
        return cost.estimate(cost.total(self.features), coefficients)


def variant(data: bytes, request: str) -> bytes | None:
    """The model patched by the named request (None when the planner leaves it)."""
    req = REQUESTS[request]
    if req is None:
        return data
    model = load_model(data)
    result = plan(model, req)
    if result.chosen is None:
        log.info("  %s: no plan (%s)", request, result.message)
        return None
    return to_checked_bytes(patched_model_object(model, result))


def measure(name: str, bench: m4_speed.BenchModel, request: str) -> Case | None:
    data = variant(bench.data, request)
    if data is None:
        return None
    prof = m4_speed.profile(data, bench.inputs)
    model = load_model(data)
    per_op = [0] * len(model.operators)
    for o in prof.per_op:
        per_op[o.index] += o.instructions
    features = [cost.op_features(model, op) for op in model.operators]
    log.info("  %s: %s instructions per Invoke", request, f"{prof.total:,}")
    return Case(name, request, data, prof.total, per_op, features)


def bench_models(names: Sequence[str] | None) -> list[tuple[str, m4_speed.BenchModel]]:
    if names:
        # a path is named by its file's stem (the table's stamp names no local paths)
        return [(n if n.startswith("zoo:") else Path(n).stem, m4_speed.load_bench_model(n))
                for n in names]
    out: list[tuple[str, m4_speed.BenchModel]] = []
    person = m4_speed.shared_person_detect()
    if isinstance(person, str):
        log.warning("%s", person)
    else:
        out.append(("person_detect", person))
    out.extend((b.label, b) for b in m4_speed.zoo_models())
    return out


def fit(cases: Sequence[Case], prior: Mapping[str, float]) -> dict[str, float]:
    """Non-negative least squares over per-operator and per-case equations."""
    from scipy.optimize import nnls

    names = sorted({k for c in cases for f in c.features for k, v in f.items() if v})
    rows, rhs = [], []
    for c in cases:
        w = 1.0 / max(c.measured_total, 1)
        for f, measured in zip(c.features, c.measured_ops, strict=True):
            rows.append([w * f.get(n, 0) for n in names])
            rhs.append(w * measured)
        whole = cost.total(c.features)
        rows.append([w * whole.get(n, 0) for n in names])
        rhs.append(w * c.measured_total)
    for j, n in enumerate(names):  # pull towards the current value, relative to it
        scale = PRIOR_WEIGHT / max(prior.get(n, 1.0), 1e-6)
        rows.append([scale if k == j else 0.0 for k in range(len(names))])
        rhs.append(scale * prior.get(n, 0.0))
    x, _ = nnls(np.asarray(rows, dtype=np.float64), np.asarray(rhs, dtype=np.float64),
                maxiter=50 * len(names))
    fitted = dict(prior)
    fitted.update({n: float(round(v, 4)) for n, v in zip(names, x, strict=True)})
    return fitted


def print_table(cases: Sequence[Case], before: Mapping[str, float],
                after: Mapping[str, float] | None) -> None:
    head = f"{'case':<44} {'measured':>13} {'predicted':>13} {'error':>7}"
    print(head + (f" {'fitted':>13} {'error':>7}" if after is not None else ""))
    for c in cases:
        p = c.predicted(before)
        line = (f"{c.label:<44} {c.measured_total:>13,} {p:>13,} "
                f"{p / c.measured_total - 1:>+7.1%}")
        if after is not None:
            q = c.predicted(after)
            line += f" {q:>13,} {q / c.measured_total - 1:>+7.1%}"
        print(line)
    for label, co in (("current", before), ("fitted", after)):
        if co is None:
            continue
        errors = [abs(c.predicted(co) / c.measured_total - 1) for c in cases]
        print(f"{label}: worst |error| {max(errors):.1%}, mean {np.mean(errors):.1%} "
              f"over {len(cases)} cases")


def print_per_op(cases: Sequence[Case], co: Mapping[str, float]) -> None:
    for c in cases:
        model = load_model(c.data)
        print(f"{c.label}:")
        for op, f, m in zip(model.operators, c.features, c.measured_ops, strict=True):
            p = cost.estimate(f, co)
            print(f"  {op.index:>3} {op.name:<20} measured {m:>11,} predicted {p:>11,} "
                  f"{(p / m - 1) if m else 0:>+7.1%}")


def write_table(co: Mapping[str, float], cases: Sequence[Case]) -> None:
    """Replace the values between the BEGIN/END COEFFICIENTS markers of cost.py."""
    text = COST_PY.read_text()
    begin, end = text.index("# BEGIN COEFFICIENTS"), text.index("# END COEFFICIENTS")
    block = text[begin:end]

    def value(m: re.Match[str]) -> str:
        return f'"{m.group(1)}": {co.get(m.group(1), float(m.group(2)))!r},'

    block = re.sub(r'"(\w+)": ([0-9.e+-]+),', value, block)
    models = ", ".join(sorted({c.model for c in cases}))
    requests = ", ".join(sorted({c.request for c in cases}))
    stamp = "".join(f"# {line}\n" for line in textwrap.wrap(
        f"Fitted {date.today().isoformat()} by tools/calibrate_m4_costs.py on {len(cases)} "
        f"cases: {models}; requests {requests}.", 96))
    block = re.sub(r"(?<=# BEGIN COEFFICIENTS\n)(#.*\n)*", "", block)  # the old stamp
    block = block.replace("# BEGIN COEFFICIENTS\n", "# BEGIN COEFFICIENTS\n" + stamp, 1)
    COST_PY.write_text(text[:begin] + block + text[end:])
    print(f"wrote {len(co)} coefficients into {COST_PY}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", help="zoo:NAME or .tflite (default: person_detect "
                    "and every zoo model whose arena fits the board)")
    ap.add_argument("--requests", nargs="*", default=list(DEFAULT_REQUESTS),
                    choices=sorted(REQUESTS), help="planner requests per model")
    ap.add_argument("--check", action="store_true", help="no fit: the current table only")
    ap.add_argument("--write", action="store_true", help="write the fit into cost.py")
    ap.add_argument("--per-op", action="store_true", help="also per operator")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    why = m4_speed.reason()
    if why:
        print(f"cannot measure: {why}", file=sys.stderr)
        return 2
    cases = []
    for name, bench in bench_models(args.models):
        log.info("%s", name)
        for request in args.requests:
            case = measure(name, bench, request)
            if case is not None:
                cases.append(case)
    before = dict(cost.COEFFICIENTS)
    after = None if args.check else fit(cases, before)
    print_table(cases, before, after)
    if args.per_op:
        print_per_op(cases, after or before)
    if after is not None:
        width = max(len(k) for k in after)
        print("fitted coefficients (current -> fitted):")
        for k in after:
            print(f"  {k:<{width}} {before.get(k, 0.0):>10.4f} -> {after[k]:>10.4f}")
        if args.write:
            write_table(after, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
