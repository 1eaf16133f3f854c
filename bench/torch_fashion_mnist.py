#!/usr/bin/env python3
"""PyTorch's figure for flame-train's Fashion-MNIST CNN run (configs/fashion_mnist_cnn.toml), same run.

Run under Open MPI, one rank per GPU (rank and world size from Open MPI's environment; NCCL process
group, TCP rendezvous on 127.0.0.1):
    mpirun -np 1 python3 bench/torch_fashion_mnist.py
    mpirun -np 2 python3 bench/torch_fashion_mnist.py
The same CNN, batch 128 per rank, 3 epochs, AdamW (lr 2e-3, weight decay 0.01) with 100 warm-up steps
then cosine decay to 0, inputs scaled to [0, 1] and normalised (0.2860, 0.3530), a fresh permutation
per epoch split strided among ranks (the last partial batch dropped), DDP with its defaults, f32,
TF32 off, evaluation on the 10000 test images every 200 steps and at the end. The data is read from
the idx files (FLAME_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist) and held on the GPU, so
PyTorch pays nothing for loading. Rank 0 prints one JSON line:
    {"bench": "train_fashion_mnist", "impl": "torch", "world": W, "time_to_90_s": ..., "samples_per_s": ...,
     "test_accuracy": ..., "steps": ..., "train_s": ..., "device": ...}
time_to_90_s counts from the first step to the end of the first evaluation at >= 90% (null if none).
"""
import gzip
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

BATCH = 128
EPOCHS = 3
LR = 2e-3
WARMUP = 100
EVAL_EVERY = 200


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def make_cnn():
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def lr_at(step, total):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    r = (step - WARMUP) / max(1, total - WARMUP)
    return LR * (1 + math.cos(math.pi * min(r, 1.0))) / 2


def main():
    rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", "0"))
    world = int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    local = int(os.environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device("cuda", local)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method="tcp://127.0.0.1:29542", rank=rank, world_size=world,
                            device_id=device)
    source = os.environ.get("FLAME_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")

    def load(images, labels):
        x = torch.from_numpy(read_idx(os.path.join(source, images)).copy()).to(device)
        y = torch.from_numpy(read_idx(os.path.join(source, labels)).astype(np.int64)).to(device)
        return ((x.float().unsqueeze(1) / 255.0) - 0.2860) / 0.3530, y

    train_x, train_y = load("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    test_x, test_y = load("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(make_cnn().to(device), device_ids=[local])
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    per_rank = len(train_x) // world
    batches = per_rank // BATCH
    total = EPOCHS * batches

    def evaluate():
        model.eval()
        correct = torch.zeros((), device=device)
        with torch.no_grad():
            share = torch.arange(rank, len(test_x), world, device=device)
            for i in range(0, len(share), 1000):
                idx = share[i:i + 1000]
                correct += (model(test_x[idx]).argmax(1) == test_y[idx]).sum()
        dist.all_reduce(correct)
        model.train()
        return correct.item() / (len(test_x) // world * world)

    generator = torch.Generator(device="cpu")
    step, time_to_90, accuracy = 0, None, 0.0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for epoch in range(EPOCHS):
        generator.manual_seed(1000 + epoch)
        order = torch.randperm(len(train_x), generator=generator)[:per_rank * world][rank::world].to(device)
        for b in range(batches):
            idx = order[b * BATCH:(b + 1) * BATCH]
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(train_x[idx]), train_y[idx]).backward()
            optimizer.step()
            step += 1
            if step % EVAL_EVERY == 0 or step == total:
                accuracy = evaluate()
                if time_to_90 is None and accuracy >= 0.9:
                    time_to_90 = time.perf_counter() - start
    torch.cuda.synchronize()
    train_s = time.perf_counter() - start
    if rank == 0:
        print(json.dumps({"bench": "train_fashion_mnist", "impl": "torch", "world": world,
                          "time_to_90_s": time_to_90, "samples_per_s": step * BATCH * world / train_s,
                          "test_accuracy": accuracy, "steps": step, "train_s": train_s,
                          "device": torch.cuda.get_device_name(device)}), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
