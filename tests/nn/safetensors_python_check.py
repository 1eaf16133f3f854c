#!/usr/bin/env python3
"""Interop check between FLAME's safetensors files and the Python safetensors library.

    safetensors_python_check.py write PATH [TORCH_PATH]
        Writes the expected tensors (all but bf16) to PATH with safetensors.numpy and, when torch
        is importable, all of them (bf16 included) to TORCH_PATH with safetensors.torch.
    safetensors_python_check.py read PATH
        Checks that PATH, written by FLAME, holds exactly the expected tensors (bf16 included)
        and the metadata {"writer": "flame", "note": "interop"}. Exits 1 on a mismatch.

The expected tensors are closed forms; tests/nn/safetensors_test.cpp (SafetensorsPython) builds
the same ones and runs this script.
"""
import json
import struct
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

try:
    import torch
    from safetensors.torch import load_file as torch_load_file
    from safetensors.torch import save_file as torch_save_file
except ImportError:
    torch = None

BF16_VALUES = [1.5, -2.0, 0.09375]


def expected_numpy():
    """Every expected tensor that numpy can hold (all but bf16)."""
    return {
        "f32": (np.arange(6, dtype=np.float32) * 0.5 - 1.0).reshape(2, 3),
        "f64": np.arange(4, dtype=np.float64) / 3.0,
        "f16": (np.arange(5) * 0.25 - 0.5).astype(np.float16),
        "i32": (np.arange(6, dtype=np.int32) - 3).reshape(3, 2),
        "i64": np.array([-(2**40), 0, 2**40 + 7], dtype=np.int64),
        "u8": np.arange(250, 256, dtype=np.uint8),
        "bool": np.array([True, False, True]),
        "scalar": np.array(2.5, dtype=np.float32),
        "empty": np.zeros((0, 3), dtype=np.float32),
    }


def raw_bf16(path, name):
    """The bf16 tensor `name` of `path` as float32, decoded from the file's bytes."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        entry = header[name]
        begin, end = entry["data_offsets"]
        f.seek(8 + length + begin)
        bits = np.frombuffer(f.read(end - begin), dtype="<u2").astype(np.uint32) << 16
    return entry["dtype"], entry["shape"], bits.view(np.float32)


def fail(message):
    print(f"safetensors_python_check: {message}")
    sys.exit(1)


def write(path, torch_path):
    save_file(expected_numpy(), path, metadata={"writer": "safetensors.numpy", "note": "interop"})
    if torch is None:
        print("torch is not importable: no bf16 file written")
        return
    tensors = {name: torch.from_numpy(array.copy()) for name, array in expected_numpy().items()}
    tensors["bf16"] = torch.tensor(BF16_VALUES, dtype=torch.bfloat16)
    torch_save_file(tensors, torch_path, metadata={"writer": "safetensors.torch", "note": "interop"})


def read(path):
    expected = expected_numpy()
    with safe_open(path, framework="numpy") as f:
        keys = sorted(f.keys())
        if keys != sorted(list(expected) + ["bf16"]):
            fail(f"{path}: tensor names {keys}")
        if f.metadata() != {"writer": "flame", "note": "interop"}:
            fail(f"{path}: metadata {f.metadata()}")
        for name, want in expected.items():
            got = f.get_tensor(name)
            if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                fail(f"{path}: tensor '{name}' is {got.dtype}{list(got.shape)} {got.tolist()}, "
                     f"expected {want.dtype}{list(want.shape)} {want.tolist()}")
    dtype, shape, values = raw_bf16(path, "bf16")
    if dtype != "BF16" or shape != [3] or values.tolist() != BF16_VALUES:
        fail(f"{path}: tensor 'bf16' is {dtype}{shape} {values.tolist()}")
    if torch is not None:
        got = torch_load_file(path)["bf16"]
        if got.dtype != torch.bfloat16 or got.float().tolist() != BF16_VALUES:
            fail(f"{path}: torch reads 'bf16' as {got}")
    print(f"{path}: all {len(keys)} tensors and the metadata match" + ("" if torch else " (torch not importable)"))


def main(argv):
    if len(argv) >= 3 and argv[1] == "write":
        write(argv[2], argv[3] if len(argv) > 3 else argv[2] + ".torch")
    elif len(argv) == 3 and argv[1] == "read":
        read(argv[2])
    else:
        fail("usage: safetensors_python_check.py write PATH [TORCH_PATH] | read PATH")


if __name__ == "__main__":
    main(sys.argv)
