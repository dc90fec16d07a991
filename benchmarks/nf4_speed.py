"""Reference NF4 quantizer (labkit.quant.codebook) vs bitsandbytes' CPU quantize_4bit, side by side.

Target (issue): labkit's readable, vectorised NF4 within 3x of bitsandbytes on a 4096x4096
float32 matrix. Both run in the same process, interleaved, on the same input; the outputs are
also checked to be bit-identical. Prints a Markdown table; exits 1 if the target is missed.

    .venv/bin/python benchmarks/nf4_speed.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from labkit import hardware
from labkit.quant import codebook


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="matrix is size x size float32")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (printed)")
    parser.add_argument("--target", type=float, default=3.0, help="max allowed labkit/bnb ratio")
    args = parser.parse_args(argv)

    hardware.quiet_logs()
    import bitsandbytes
    import bitsandbytes.functional as bnbf

    threads = hardware.set_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.size, args.size) * 0.02

    def run_bnb():
        return bnbf.quantize_4bit(x, quant_type="nf4", blocksize=64, compress_statistics=False)

    def run_labkit():
        return codebook.nf4_quantize(x, blocksize=64)

    (p_b, st), (p_l, a_l) = run_bnb(), run_labkit()  # warm-up, and the exactness check
    identical = torch.equal(p_b, p_l) and torch.equal(st.absmax, a_l)
    times: dict[str, list[float]] = {"bitsandbytes": [], "labkit": []}
    for _ in range(args.repeats):
        for name, fn in (("bitsandbytes", run_bnb), ("labkit", run_labkit)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["labkit"] / med["bitsandbytes"]

    print(
        f"NF4 quantize, {args.size}x{args.size} float32, blocksize 64, torch {torch.__version__}, "
        f"bitsandbytes {bitsandbytes.__version__}, {threads} thread(s), median of {args.repeats}"
    )
    print()
    print("| quantizer | median ms | min ms | vs bitsandbytes |")
    print("|---|---:|---:|---:|")
    for name in ("bitsandbytes", "labkit"):
        print(
            f"| {name} | {med[name] * 1e3:.1f} | {min(times[name]) * 1e3:.1f} | "
            f"{med[name] / med['bitsandbytes']:.2f}x |"
        )
    print()
    print(
        f"bit-identical output: {identical}; target ratio <= {args.target}: "
        f"{'met' if ratio <= args.target else 'MISSED'} ({ratio:.2f}x)"
    )
    return 0 if identical and ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
