#!/usr/bin/env python3
"""Mutate a model and run every `tflm-patch` command on each mutant, in process.

    python tools/fuzz_cli.py MODEL.tflite [--count N] [--seed S] [--original ORIG.tflite]

Mutations: random bytes of the file, or fields through the schema object API (tensor
shapes, types, buffers, buffer lengths, scales, zero points, operator inputs, builtin
options, opcode indices, graph inputs/outputs). For each mutant: analyze (no
measurement), plan, convert, export, and validate (the mutant against its conversion,
or ORIG against the mutant when --original is given: a mutated patched model).

Findings: any exception escaping `main` (a traceback), any exit code 3 (internal error),
any stderr that is not exactly one `error:` line on failure, and any convert that exits 0
with a model that does not validate against the mutant. Prints a summary and exits 1
when there is a finding.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import logging
import random
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tflm_patch.cli import main
from tflm_patch.model import model_to_bytes
from tflm_patch.schema import schema

PLAN = ["--objective", "memory", "--min-saving", "0"]
VALUES = [0, -1, 1, 2, 3, 7, 255, 1 << 30, (1 << 31) - 1]
SCALES = [0.0, -1.0, float("nan"), float("inf"), 1e-45, 1e30]


def _tensor_field(rng: random.Random, obj: Any) -> None:
    sg = obj.subgraphs[0]
    t = rng.choice(sg.tensors)
    kind = rng.randrange(6)
    if kind == 0:
        rank = len(t.shape) if t.shape is not None and len(t.shape) else 1
        t.shape = [rng.choice([0, -1, 1, 3, 7, 1 << 30, (1 << 31) - 1]) for _ in range(rank)]
    elif kind == 1:
        t.shape = []
    elif kind == 2:
        t.type = rng.choice([0, 1, 2, 3, 7, 9, 10, 17])
    elif kind == 3:
        t.buffer = rng.choice([0, len(obj.buffers), 10**6, rng.randrange(len(obj.buffers))])
    elif kind == 4:
        buf = obj.buffers[t.buffer]
        if buf.data is not None and len(buf.data):
            buf.data = buf.data[:rng.randrange(len(buf.data))]
    elif t.quantization is not None and t.quantization.scale is not None:
        t.quantization.scale = [rng.choice(SCALES) for _ in t.quantization.scale]


def _operator_field(rng: random.Random, obj: Any) -> None:
    sg = obj.subgraphs[0]
    op = rng.choice(sg.operators)
    kind = rng.randrange(3)
    if kind == 0 and op.inputs is not None and len(op.inputs):
        op.inputs = list(op.inputs)
        op.inputs[rng.randrange(len(op.inputs))] = rng.choice([-1, 0, len(sg.tensors), -5])
    elif kind == 1 and op.builtinOptions is not None:
        for name in vars(op.builtinOptions):
            if rng.random() < 0.5:
                setattr(op.builtinOptions, name, rng.choice(VALUES))
    else:
        op.opcodeIndex = rng.choice([0, 1, len(obj.operatorCodes)])


def _graph_field(rng: random.Random, obj: Any) -> None:
    sg = obj.subgraphs[0]
    n = len(sg.tensors)
    if rng.random() < 0.5:
        sg.outputs = rng.choice([[], [*sg.outputs, rng.randrange(n)], [n]])
    else:
        sg.inputs = rng.choice([[], [*sg.inputs, rng.randrange(n)]])


MUTATORS: list[Callable[[random.Random, Any], None]] = [_tensor_field, _operator_field,
                                                       _graph_field]


def mutate(raw: bytes, rng: random.Random) -> bytes | None:
    if rng.random() < 0.3:
        data = bytearray(raw)
        for _ in range(rng.randrange(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    obj = schema().ModelT.InitFromPackedBuf(raw, 0)
    for _ in range(rng.randrange(1, 3)):
        rng.choice(MUTATORS)(rng, obj)
    try:
        return model_to_bytes(obj)
    except Exception:  # the object API cannot even serialize it: not a file to test
        return None


def run(argv: list[str]) -> tuple[int | str, str]:
    """(exit code or the escaped exception, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            return main(argv), err.getvalue()
        except BaseException as e:  # what the fuzzer looks for
            where = traceback.extract_tb(e.__traceback__)[-1]
            return f"{type(e).__name__} at {Path(where.filename).name}:{where.lineno}", ""


def commands(model: Path, work: Path, original: Path | None) -> list[list[str]]:
    out = work / f"{model.stem}.out.tflite"
    return [["analyze", str(model), "--no-measure"], ["plan", str(model), *PLAN],
            ["convert", str(model), "-o", str(out), *PLAN],
            ["export", str(model), "--c-array", str(work / f"{model.stem}.c")],
            ["validate", str(original), str(model), "--random", "1"] if original else
            ["validate", str(model), str(out), "--random", "1"]]


def finding(argv: list[str], code: int | str, err: str, converted: bool) -> str | None:
    lines = err.splitlines()
    if isinstance(code, str):
        return f"traceback: {code}"
    if code == 3:
        return lines[-1] if lines else "exit 3"
    if code not in (0, 1) and (len(lines) != 1 or not lines[0].startswith("error: ")):
        return f"exit {code} with {len(lines)} stderr lines"
    if argv[0] == "validate" and converted and code != 0:
        return f"a converted model does not validate (exit {code}): {err.strip()[:100]}"
    return None


def main_fuzz() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--original", type=Path, help="the unpatched model of a patched MODEL")
    args = p.parse_args()
    logging.disable(logging.CRITICAL)
    raw, rng = args.model.read_bytes(), random.Random(args.seed)
    codes: collections.Counter[tuple[str, int | str]] = collections.Counter()
    findings: dict[str, list[str]] = collections.defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for k in range(args.count):
            data = mutate(raw, rng)
            if data is None:
                continue
            model = work / f"m{k}.tflite"
            model.write_bytes(data)
            converted = False
            for argv in commands(model, work, args.original):
                code, err = run(argv)
                codes[(argv[0], code if isinstance(code, int) else "exception")] += 1
                problem = finding(argv, code, err, converted and not args.original)
                if problem:
                    findings[problem].append(f"mutant {k}: {' '.join(argv[:2])}")
                converted = converted or (argv[0] == "convert" and code == 0)
    for (command, code), n in sorted(codes.items(), key=str):
        print(f"{command:<9} exit {code}: {n}")
    for problem, where in findings.items():
        print(f"FINDING x{len(where)}: {problem} (first: {where[0]})")
    print(f"{len(findings)} kinds of finding")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main_fuzz())
