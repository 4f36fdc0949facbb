"""This machine's limits: the fp32 matrix-multiply rate and the memory bandwidth that every other figure is read
against (decoding is bound by reading the weights, training by matrix multiplication).

    python bench/limits.py --threads 2 --repeats 7

- **Matmul rate**: `torch.mm` of two square fp32 matrices (`--size`, default 2048), 2 n^3 FLOPs each, on
  `--threads` threads (default: all cores). Printed in GFLOP/s.
- **Memory bandwidth**: copies of a fp32 buffer far larger than any cache (`--megabytes`, default 512), counted as
  bytes read plus bytes written. Printed in GB/s (10^9 bytes). `Tensor.copy_` is what the decoding loop's weight
  reads look like to the memory system (streaming, no reuse); a read-only reduction (`sum`) is printed beside it.

Each is run `--repeats` times after one warm-up; min, median and max of the rates are printed. Other benches import
`matmul_rate` and `memory_bandwidth` to print their figures as fractions of these limits (a CPU MFU and a share of
the bandwidth), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _rates(work: float, run, repeats: int) -> list[float]:
    """`work` units / seconds of each of `repeats` timed calls of `run`, after one warm-up call."""
    run()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(work / (time.perf_counter() - start))
    return rates


def matmul_rate(*, size: int = 2048, repeats: int = 5) -> list[float]:
    """FLOP/s of fp32 `torch.mm` on two `size` x `size` matrices (2 size^3 FLOPs per product)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen)
    b = torch.randn(size, size, generator=gen)
    out = torch.empty(size, size)
    return _rates(2.0 * size**3, lambda: torch.mm(a, b, out=out), repeats)


def memory_bandwidth(*, megabytes: int = 512, repeats: int = 5) -> dict[str, list[float]]:
    """Bytes/s of a streaming copy (read + write counted) and of a read-only sum over a fp32 buffer."""
    numel = megabytes * 2**20 // 4
    source = torch.ones(numel)
    target = torch.empty(numel)
    nbytes = numel * 4
    return {
        "copy": _rates(2.0 * nbytes, lambda: target.copy_(source), repeats),
        "read": _rates(float(nbytes), lambda: source.sum(), repeats),
    }


def _line(name: str, rates: list[float], scale: float, unit: str) -> str:
    low, mid, high = min(rates) / scale, statistics.median(rates) / scale, max(rates) / scale
    return f"{name:<24} min {low:9.1f}  median {mid:9.1f}  max {high:9.1f} {unit}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--size", type=int, default=2048, help="matrix side of the matmul")
    parser.add_argument("--megabytes", type=int, default=512, help="buffer of the bandwidth test")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
    print(_line(f"matmul fp32 {args.size}^2", matmul_rate(size=args.size, repeats=args.repeats), 1e9, "GFLOP/s"))
    bandwidth = memory_bandwidth(megabytes=args.megabytes, repeats=args.repeats)
    print(_line(f"copy {args.megabytes} MiB", bandwidth["copy"], 1e9, "GB/s (read + write)"))
    print(_line(f"sum {args.megabytes} MiB", bandwidth["read"], 1e9, "GB/s (read)"))


if __name__ == "__main__":
    main()
