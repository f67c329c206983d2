"""How long the command line takes to answer before any work: help, --version and an argument error, each in a
fresh interpreter, against `python -c pass` measured in the same run (the interpreter's own start-up).

    python benchmarks/cli_bench.py [--repeat 5]

Prints, per command line, the median wall time and its ratio to `python -c pass`. Help, --version and argument
errors load neither torch nor transformers, except `llava train`'s (its flags are transformers' TrainingArguments).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("python -c pass", ["-c", "pass"]),
    ("crossgraft --help", ["-m", "crossgraft", "--help"]),
    ("crossgraft --version", ["-m", "crossgraft", "--version"]),
    ("crossgraft anomaly --help", ["-m", "crossgraft", "anomaly", "--help"]),
    ("crossgraft anomaly train --help", ["-m", "crossgraft", "anomaly", "train", "--help"]),
    ("crossgraft anomaly train --datset x", ["-m", "crossgraft", "anomaly", "train", "--datset", "x"]),
    ("crossgraft anomaly test --data_root /missing", ["-m", "crossgraft", "anomaly", "test", "--data_root", "/nope"]),
    ("crossgraft llava --help", ["-m", "crossgraft", "llava", "--help"]),
    ("crossgraft llava evaluate --help", ["-m", "crossgraft", "llava", "evaluate", "--help"]),
    ("crossgraft llava train --help", ["-m", "crossgraft", "llava", "train", "--help"]),
]


def wall_time(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], capture_output=True, check=False)
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs per command line; the median is printed")
    args = parser.parse_args(argv)
    baseline = None
    print(f"{'command line':<48}{'median s':>10}{'x python -c pass':>18}")
    for name, arguments in CASES:
        median = statistics.median(wall_time(arguments) for _ in range(args.repeat))
        baseline = baseline or median
        print(f"{name:<48}{median:>10.3f}{median / baseline:>18.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
