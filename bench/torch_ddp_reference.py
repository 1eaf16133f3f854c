#!/usr/bin/env python3
"""PyTorch DDP figures for bench/ddp_scaling_bench.cpp, same models, batch and step, same run.

Run under Open MPI, one rank per GPU:
    mpirun -np 1 python3 bench/torch_ddp_reference.py [--model cnn|mlp|all] [--batch N] [--reduce f32|bf16]
    mpirun -np 2 python3 bench/torch_ddp_reference.py ...
The rank and world size come from Open MPI's environment; the process group uses NCCL with a TCP
rendezvous on 127.0.0.1 (one node). Models (f32, batch 256 per rank, a different random batch per
rank; 256 unless --batch says otherwise): flame-train's Fashion-MNIST CNN (launch/train/models.h) and
Linear(1024,4096)-ReLU-Linear(4096,4096)-ReLU-Linear(4096,10). A step: zero_grad(set_to_none=True), forward, F.cross_entropy, backward (DDP with
its defaults: 25 MiB buckets, gradient_as_bucket_view=True to match FLAME's bucket views; with
--reduce bf16 its bf16_compress_hook, as FLAME's DdpOptions::reduce_dtype = bf16),
AdamW.step() (foreach). 10 warm-up steps, then the median of 50 steps, each bracketed by CUDA
events. Rank 0 prints one JSON line per model:
    {"bench": "ddp_step", "impl": "torch", "model": ..., "world": W, "nccl_calls": "torch",
     "dtype": "f32", "reduce": "f32"|"bf16", "size": "b<batch>", "value": <ms>, "unit": "ms/step",
     "device": ...}
Exit status 1 when the loss does not fall (the step would be wrong).
"""
import argparse
import json
import math
import os
import statistics
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

SIDE = 28
CLASSES = 10
WARMUP = 10
RUNS = 50


def make_model(kind):
    nn = torch.nn
    if kind == "mlp":
        return nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                             nn.Linear(4096, CLASSES))
    side = SIDE // 4
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, CLASSES))


def run_case(kind, batch, reduce, rank, world, device):
    torch.manual_seed(0)
    model = make_model(kind).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index], gradient_as_bucket_view=True)
    if reduce == "bf16":
        ddp.register_comm_hook(dist.group.WORLD, default_hooks.bf16_compress_hook)
    optimizer = torch.optim.AdamW(ddp.parameters(), lr=1e-3)
    torch.manual_seed(1000 + rank)
    shape = (batch, 1, SIDE, SIDE) if kind == "cnn" else (batch, 1024)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        optimizer.step()
        return loss

    first = step().item()
    for _ in range(WARMUP - 1):
        step()
    torch.cuda.synchronize(device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(RUNS)]
    stops = [torch.cuda.Event(enable_timing=True) for _ in range(RUNS)]
    loss = None
    for i in range(RUNS):
        starts[i].record()
        loss = step()
        stops[i].record()
    torch.cuda.synchronize(device)
    ms = statistics.median(s.elapsed_time(e) for s, e in zip(starts, stops))
    last = loss.item()
    if rank == 0:
        print(json.dumps({"bench": "ddp_step", "impl": "torch", "model": kind, "world": world, "nccl_calls": "torch",
                          "dtype": "f32", "reduce": reduce, "size": f"b{batch}", "value": round(ms, 6),
                          "unit": "ms/step",
                          "device": torch.cuda.get_device_name(device)}), flush=True)
        print(f"torch_ddp_reference: {kind} world {world}: loss {first:.4f} -> {last:.4f}", file=sys.stderr)
    return math.isfinite(last) and last < first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("cnn", "mlp", "all"), default="all")
    parser.add_argument("--batch", type=int, default=256, help="per rank")
    parser.add_argument("--reduce", choices=("f32", "bf16"), default="f32")
    args = parser.parse_args()
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    if not torch.cuda.is_available():
        print("torch_ddp_reference: no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29541", rank=rank, world_size=world,
                            device_id=device)
    ok = True
    for kind in ("cnn", "mlp") if args.model == "all" else (args.model,):
        ok = run_case(kind, args.batch, args.reduce, rank, world, device) and ok
    dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
