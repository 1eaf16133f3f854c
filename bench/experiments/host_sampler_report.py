#!/usr/bin/env python3
"""Resolves the stacks host_sampler.cpp wrote and prints each function's inclusive and self share.

Usage: host_sampler_report.py SAMPLES [FOCUS]
FOCUS: substrings separated by '|'; only samples with a frame whose name contains one are counted
(e.g. "::time_phases|::median_ms" for the benchmark's timed steps). Functions of FLAME's binaries are
named with addr2line; frames in libcuda, cuDNN, NCCL and cuBLAS by their library.
"""
import collections, subprocess, sys
path = sys.argv[1]
focus = sys.argv[2] if len(sys.argv) > 2 else None   # only samples with a frame containing this
samples, maps = [], []
for line in open(path):
    if line.startswith("S"):
        samples.append([int(a, 16) for a in line.split()[1:]])
    elif line.startswith("M "):
        parts = line[2:].split()
        if len(parts) >= 6 and "x" in parts[1]:
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            maps.append((lo, hi, int(parts[2], 16), parts[5]))
def module(addr):
    for lo, hi, off, name in maps:
        if lo <= addr < hi: return name, addr - lo + off
    return "?", addr
addrs = sorted({a for s in samples for a in s})
by_module = collections.defaultdict(list)
loc = {}
for a in addrs:
    name, off = module(a - 1)
    loc[a] = (name, off)
    by_module[name].append(off)
names = {}
for name, offs in by_module.items():
    base = name.rsplit("/", 1)[-1]
    if "libcuda" in base or "libcudnn" in base or "libnccl" in base or "libcublas" in base or name == "?":
        for o in offs: names[(name, o)] = base
        continue
    uniq = sorted(set(offs))
    try:
        res = subprocess.run(["addr2line", "-f", "-C", "-e", name] + [hex(o) for o in uniq],
                             capture_output=True, text=True, timeout=300).stdout.split("\n")
        for i, o in enumerate(uniq):
            fn = res[2 * i] if 2 * i < len(res) else "??"
            names[(name, o)] = fn if fn != "??" else base
    except Exception as e:
        for o in uniq: names[(name, o)] = base
def short(fn):
    fn = fn.replace("(anonymous namespace)", "anon")
    fn = fn.split("(")[0] if not fn.startswith("operator") else fn
    return fn[:110]
total = 0
incl, self_ = collections.Counter(), collections.Counter()
for s in samples:
    fns = [short(names[loc[a]]) for a in s]
    if focus and not any(x in f for f in fns for x in focus.split("|")): continue
    total += 1
    self_[fns[0] if fns else "?"] += 1
    for f in set(fns): incl[f] += 1
print(f"samples {len(samples)}, in focus {total}")
print("--- inclusive")
for f, c in incl.most_common(70): print(f"{100*c/max(total,1):6.1f}% {f}")
print("--- self")
for f, c in self_.most_common(40): print(f"{100*c/max(total,1):6.1f}% {f}")
