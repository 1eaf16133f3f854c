#!/usr/bin/env python3
"""PyTorch figures for the FLAME benchmarks, measured the same way on the same GPU.

Prints one JSON line per measurement in the format of bench/bench_util.h (impl "torch"):
- matmul: torch.matmul TFLOP/s, bf16 and f32 without TF32, at 4096^3 and 8192^3 (CUDA events
  around each call, output allocation included, median of 30 after 5 warm-up runs), and the
  relative L2 error of sampled rows against float64;
- add / copy: torch.add of two 256 MiB f32 tensors (3 x 256 MiB moved) and a 256 MiB
  device-to-device copy_ (2 x 256 MiB), GB/s, median of 50;
- op_overhead: microseconds per torch.add of two 16-element f32 tensors, a host clock around
  10000 asynchronous ops and one synchronize, median of 7;
- cnn_step: milliseconds per training step (forward, F.cross_entropy, backward, AdamW step with
  the default foreach implementation, zero_grad) of bench/cnn_step_bench.cpp's CNN on a fixed
  batch of 256 1x28x28 inputs, CUDA events around each step, median of 100 after 10 warm-up
  steps; "f32" (no TF32) and "bf16" (f32 weights under torch.autocast(bfloat16)).
Exits 1 with a message when no CUDA device is present.
"""
import json
import math
import statistics
import sys
import time

import torch

MATMUL_WARMUP, MATMUL_RUNS = 5, 30
ADD_WARMUP, ADD_RUNS = 5, 50
ADD_ELEMENTS = 64 << 20
OVERHEAD_ELEMENTS, OVERHEAD_WARMUP, OVERHEAD_OPS, OVERHEAD_REPEATS = 16, 1000, 10000, 7
CHECK_ROWS = 64
CNN_BATCH, CNN_SIDE, CNN_CLASSES, CNN_WARMUP, CNN_RUNS = 256, 28, 10, 10, 100

DEVICE_NAME = ""


def emit(bench, dtype, size, value, unit, impl="torch"):
    print(json.dumps({"bench": bench, "impl": impl, "dtype": dtype, "size": size,
                      "value": float(f"{value:.6g}"), "unit": unit, "device": DEVICE_NAME}),
          flush=True)


def disable_tf32():
    """FLAME's f32 matmuls and convolutions never use TF32; neither do PyTorch's here."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):  # PyTorch 2.9+: setting allow_tf32 too would mix APIs
        matmul.fp32_precision = "ieee"
    else:
        matmul.allow_tf32 = False
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):
        conv.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False


def time_events(fn, warmup, runs):
    """Median milliseconds of fn() over `runs` calls, each bracketed by CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    pairs = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
             for _ in range(runs)]
    for start, stop in pairs:
        start.record()
        fn()
        stop.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(stop) for start, stop in pairs)


def bench_matmul():
    ok = True
    for dtype, name in ((torch.bfloat16, "bf16"), (torch.float32, "f32")):
        for n in (4096, 8192):
            size = f"{n}^3"
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            c = torch.matmul(a, b)
            ref = a[:CHECK_ROWS].double() @ b.double()
            err = ((c[:CHECK_ROWS].double() - ref).norm() / ref.norm()).item()
            emit("matmul_rel_err", name, size, err, "rel_l2_vs_f64")
            bound = 5e-5 if dtype == torch.float32 else 8e-3
            if not err < bound:
                print(f"torch_reference: torch.matmul {name} {size} relative error {err:.3g} "
                      f"over {bound:.3g} (TF32 left on?); not timed", file=sys.stderr)
                ok = False
                continue
            del c, ref
            ms = time_events(lambda: torch.matmul(a, b), MATMUL_WARMUP, MATMUL_RUNS)
            emit("matmul", name, size, 2.0 * n**3 / (ms * 1e-3) / 1e12, "TFLOP/s")
            del a, b
            torch.cuda.empty_cache()
    return ok


def bench_add():
    a = torch.randn(ADD_ELEMENTS, device="cuda")
    b = torch.randn(ADD_ELEMENTS, device="cuda")
    dst = torch.empty_like(a)
    if not torch.equal(torch.add(a, b).cpu(), a.cpu() + b.cpu()):
        print("torch_reference: torch.add disagrees with the host sum; not timed", file=sys.stderr)
        return False
    nbytes = a.numel() * a.element_size()
    ms = time_events(lambda: torch.add(a, b), ADD_WARMUP, ADD_RUNS)
    emit("add", "f32", "256MiB", 3.0 * nbytes / (ms * 1e-3) / 1e9, "GB/s")
    ms = time_events(lambda: dst.copy_(a), ADD_WARMUP, ADD_RUNS)
    emit("copy", "f32", "256MiB", 2.0 * nbytes / (ms * 1e-3) / 1e9, "GB/s")
    return True


def bench_op_overhead():
    a = torch.randn(OVERHEAD_ELEMENTS, device="cuda")
    b = torch.randn(OVERHEAD_ELEMENTS, device="cuda")
    for _ in range(OVERHEAD_WARMUP):
        torch.add(a, b)
    torch.cuda.synchronize()
    us_per_op = []
    for _ in range(OVERHEAD_REPEATS):
        start = time.perf_counter()
        for _ in range(OVERHEAD_OPS):
            torch.add(a, b)
        torch.cuda.synchronize()
        us_per_op.append((time.perf_counter() - start) * 1e6 / OVERHEAD_OPS)
    emit("op_overhead", "f32", "16", statistics.median(us_per_op), "us/op")


def make_cnn():
    """bench/cnn_step_bench.cpp's model, with PyTorch's default initialisation."""
    nn = torch.nn
    side = CNN_SIDE // 4
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(8 * side * side, CNN_CLASSES)).cuda()


def bench_cnn_step():
    ok = True
    for name, autocast in (("f32", False), ("bf16", True)):
        torch.manual_seed(0)
        model = make_cnn()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(CNN_BATCH, 1, CNN_SIDE, CNN_SIDE, device="cuda")
        y = torch.randint(0, CNN_CLASSES, (CNN_BATCH,), device="cuda")

        def step():
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss

        first = step().item()
        ms = time_events(step, CNN_WARMUP - 1, CNN_RUNS)
        last = step().item()
        print(f"torch_reference: cnn_step {name} loss {first:.4f} after the first step, {last:.4f} after "
              f"{CNN_WARMUP + CNN_RUNS + 1} steps", file=sys.stderr)
        emit("cnn_step", name, f"b{CNN_BATCH}", ms, "ms/step")
        if not (math.isfinite(last) and last < first):
            print(f"torch_reference: cnn_step {name}: the loss did not fall ({first} -> {last})",
                  file=sys.stderr)
            ok = False
        del model, optimizer, x, y
    return ok


def main():
    global DEVICE_NAME
    if not torch.cuda.is_available():
        print("torch_reference: no CUDA device is available to PyTorch; run this on the GPU machine",
              file=sys.stderr)
        return 1
    DEVICE_NAME = torch.cuda.get_device_name(0)
    disable_tf32()
    torch.manual_seed(0)
    ok = bench_matmul()
    ok = bench_add() and ok
    bench_op_overhead()
    ok = bench_cnn_step() and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
