"""Seeded mutation fuzzer over real TIFF and ONNX files.

Every mutated input must end in a result or a ``UnetDeployError`` -- never another exception,
never a crash. TIFF inputs go through ``segment_file`` (the CLI path: open, check, read, infer,
write); ONNX inputs through ``segment_array`` (read_onnx checks, ORT session, inference). The
ONNX cases run in a child process so an ONNX Runtime segfault is caught and reported (with the
case number, and the input kept) instead of killing the fuzzer.

Mutations (1-4 per input, seeded): bit flips (half of them in the first 512 bytes, where the
headers are), truncation, insertion of random bytes, deletion or duplication of a chunk, and
overwrites of TIFF IFD entry fields (type/count/value) with boundary values.

    python benchmarks/fuzz.py --tiff 2000 --onnx 500        # writes benchmarks/results/fuzz.md
    python benchmarks/fuzz.py --tiff 100 --onnx 0 --no-write

The CI test (tests/test_fuzz.py) imports this module and runs a bounded number of inputs.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "bbbc039_crop.tif"
RESULTS = ROOT / "benchmarks" / "results"
BOUNDARY = [0, 1, 2, 7, 8, 255, 256, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF]


# ------------------------------------------------------------------------------- mutations


def _ifd_entries(data: bytes) -> list[tuple[int, str]]:
    """(byte offset, byte order) of the 12-byte entries of the first classic-TIFF IFD."""
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return []
    bo = "<" if data[:2] == b"II" else ">"
    if struct.unpack(bo + "H", data[2:4])[0] != 42:
        return []
    off = struct.unpack(bo + "I", data[4:8])[0]
    if off + 2 > len(data):
        return []
    n = struct.unpack(bo + "H", data[off : off + 2])[0]
    return [(off + 2 + 12 * i, bo) for i in range(n) if off + 2 + 12 * (i + 1) <= len(data)]


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, list[str]]:
    buf = bytearray(data)
    ops = []
    for _ in range(int(rng.integers(1, 5))):
        op = rng.choice(["flip", "flip", "truncate", "insert", "delete", "dup", "field"])
        n = len(buf)
        if n == 0:
            buf += rng.bytes(int(rng.integers(1, 64)))
            ops.append("grow-empty")
            continue
        if op == "flip":
            hi = min(n, 512) if rng.random() < 0.5 else n
            i = int(rng.integers(0, hi))
            buf[i] ^= 1 << int(rng.integers(0, 8))
            ops.append(f"flip@{i}")
        elif op == "truncate":
            cut = int(rng.integers(0, n))
            del buf[cut:]
            ops.append(f"truncate@{cut}")
        elif op == "insert":
            i = int(rng.integers(0, n + 1))
            buf[i:i] = rng.bytes(int(rng.integers(1, 32)))
            ops.append(f"insert@{i}")
        elif op == "delete":
            i = int(rng.integers(0, n))
            del buf[i : i + int(rng.integers(1, 64))]
            ops.append(f"delete@{i}")
        elif op == "dup":
            i = int(rng.integers(0, n))
            chunk = bytes(buf[i : i + int(rng.integers(1, 256))])
            j = int(rng.integers(0, n + 1))
            buf[j:j] = chunk
            ops.append(f"dup@{i}->{j}")
        else:  # overwrite a field of an IFD entry (or any 4 bytes if not a TIFF)
            entries = _ifd_entries(bytes(buf))
            value = int(rng.choice(BOUNDARY)) if rng.random() < 0.7 else int(rng.integers(0, 2**32))
            if entries:
                pos, bo = entries[int(rng.integers(0, len(entries)))]
                which = int(rng.integers(0, 3))  # 0: type, 1: count, 2: value/offset
                if which == 0:
                    buf[pos + 2 : pos + 4] = struct.pack(bo + "H", value & 0xFFFF)
                else:
                    at = pos + 4 * which
                    buf[at : at + 4] = struct.pack(bo + "I", value)
                ops.append(f"field{which}@{pos}={value}")
            else:
                i = int(rng.integers(0, max(1, n - 4)))
                buf[i : i + 4] = struct.pack("<I", value)[: len(buf[i : i + 4])]
                ops.append(f"word@{i}={value}")
    return bytes(buf), ops


# ---------------------------------------------------------------------------------- seeds


def tiff_seeds(folder: Path) -> list[Path]:
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    img = tifffile.imread(EXAMPLE)
    rng = np.random.default_rng(0)
    seeds = {
        "crop.tif": (img[:160, :192], {}),
        "stack_zlib.tif": (np.stack([img[:48, :56]] * 3), {"compression": "zlib", "rowsperstrip": 16}),
        "tiled_lzw.tif": ((img[:96, :96] // 256).astype(np.uint8), {"compression": "lzw", "tile": (32, 32)}),
        "rgb.tif": (rng.integers(0, 255, (40, 44, 3), dtype=np.uint8), {"photometric": "rgb"}),
        "be_float.tif": (img[:50, :60].astype(">f4"), {"byteorder": ">"}),
    }
    paths = []
    for name, (data, kw) in seeds.items():
        p = folder / name
        if not p.exists():
            tifffile.imwrite(p, data, **kw)
        paths.append(p)
    paths.insert(0, EXAMPLE)
    return paths


def default_model(folder: Path) -> Path:
    path = folder / "fuzz_tiny.onnx"
    if not path.exists():
        from unet_deploy.testing import random_unet_onnx

        random_unet_onnx(path)
    return path


# ---------------------------------------------------------------------------------- targets


class Stats:
    def __init__(self, kind: str):
        self.kind = kind
        self.n = 0
        self.ok = 0
        self.errors: collections.Counter = collections.Counter()
        self.samples: dict[str, str] = {}  # first message per error class
        self.failures: list[dict] = []
        self.seconds = 0.0
        self.slowest = 0.0

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n": self.n, "ok": self.ok, "errors": dict(self.errors),
                "samples": self.samples,
                "failures": self.failures, "seconds": round(self.seconds, 2),
                "slowest_s": round(self.slowest, 3)}


def _one(stats: Stats, case: int, ops, fn, keep: Path | None, data: bytes) -> None:
    from unet_deploy.errors import UnetDeployError

    t0 = time.perf_counter()
    try:
        fn()
        stats.ok += 1
    except UnetDeployError as exc:
        stats.errors[type(exc).__name__] += 1
        stats.samples.setdefault(type(exc).__name__, str(exc)[:200])
    except Exception as exc:  # noqa: BLE001 - a finding
        entry = {"case": case, "ops": ops, "error": f"{type(exc).__name__}: {exc}"[:300],
                 "where": traceback.format_exc().strip().splitlines()[-3][:200]}
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            kept = keep / f"{stats.kind}-{case}.bin"
            kept.write_bytes(data)
            entry["input"] = str(kept)
        stats.failures.append(entry)
    dt = time.perf_counter() - t0
    stats.n += 1
    stats.seconds += dt
    stats.slowest = max(stats.slowest, dt)


def fuzz_tiff(n: int, seed: int, model: Path, work: Path, keep: Path | None = None,
              max_pixels: int = 400_000) -> Stats:
    """``n`` mutated TIFFs through ``segment_file``."""
    import logging

    from unet_deploy.pipeline import segment_file

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    seeds = [p.read_bytes() for p in tiff_seeds(work / "seeds")]
    rng = np.random.default_rng(seed)
    stats = Stats("tiff")
    for case in range(n):
        data, ops = mutate(seeds[case % len(seeds)], rng)
        inp = work / f"t{case}.tif"
        out = work / f"t{case}.out.tif"
        inp.write_bytes(data)

        def run():
            segment_file(inp, out, model, progress=False, max_pixels=max_pixels, batch_size=4)

        _one(stats, case, ops, run, keep, data)
        if inp.read_bytes() != data:
            stats.failures.append({"case": case, "ops": ops, "error": "input modified"})
        for p in (inp, out):
            p.unlink(missing_ok=True)
        for p in work.glob(f".t{case}.out.tif.*"):
            stats.failures.append({"case": case, "ops": ops, "error": f"left behind {p.name}"})
            p.unlink()
    return stats


def fuzz_onnx_inprocess(n: int, seed: int, model: Path, work: Path, start: int = 0,
                        keep: Path | None = None) -> Stats:
    """``n`` mutated copies of ``model`` through ``segment_array`` (prints each case number
    first, so a parent process knows which case crashed)."""
    import tifffile

    from unet_deploy.pipeline import segment_array

    image = tifffile.imread(EXAMPLE)[:60, :70]
    base = model.read_bytes()
    stats = Stats("onnx")
    for case in range(start, n):
        rng = np.random.default_rng([seed, case])
        data, ops = mutate(base, rng)
        path = work / f"m{case}.onnx"
        path.write_bytes(data)
        print(f"CASE {case}", flush=True)
        _one(stats, case, ops, lambda: segment_array(image, path), keep, data)
        path.unlink(missing_ok=True)
    return stats


def fuzz_onnx(n: int, seed: int, model: Path, work: Path, keep: Path | None = None,
              timeout: float = 600) -> Stats:
    """The ONNX cases in child processes; a crash (segfault/abort) is a failure and the
    fuzzer continues with the next case."""
    total = Stats("onnx")
    start = 0
    while start < n:
        cmd = [sys.executable, __file__, "--child-onnx", str(n), "--start", str(start),
               "--seed", str(seed), "--model", str(model), "--work", str(work)]
        if keep is not None:
            cmd += ["--keep", str(keep)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        lines = proc.stdout.splitlines()
        result = [ln for ln in lines if ln.startswith("RESULT ")]
        if proc.returncode == 0 and result:
            part = json.loads(result[-1][7:])
            total.n += part["n"]
            total.ok += part["ok"]
            total.errors.update(part["errors"])
            total.failures += part["failures"]
            total.seconds += part["seconds"]
            total.slowest = max(total.slowest, part["slowest_s"])
            break
        cases = [int(ln.split()[1]) for ln in lines if ln.startswith("CASE ")]
        crashed = cases[-1] if cases else start
        total.failures.append({"case": crashed, "error": f"child crashed (rc {proc.returncode}): "
                                                        f"{proc.stderr.strip()[-300:]}"})
        # count what the child finished before the crash as ok/error-unknown: rerun is costly,
        # so they are counted as run (their outcome was result or UnetDeployError).
        total.n += crashed - start + 1
        total.ok += crashed - start
        start = crashed + 1
    return total


# ------------------------------------------------------------------------------------ main


def report(stats: list[Stats], seed: int, wall: float) -> str:
    lines = ["# Mutation fuzzing", "",
             f"Seeded mutation loop (`python benchmarks/fuzz.py`, seed {seed}); every input must "
             "end in a result or a `UnetDeployError`.", "",
             "| target | inputs | results | UnetDeployError (by class) | other exceptions / crashes | s/input (mean) | slowest s |",
             "|---|---:|---:|---|---:|---:|---:|"]
    for s in stats:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(s.errors.items())) or "-"
        mean = s.seconds / s.n if s.n else 0
        lines.append(f"| {s.kind} | {s.n} | {s.ok} | {errs} | {len(s.failures)} | {mean:.3f} | {s.slowest:.2f} |")
    lines += ["", f"Total inputs: {sum(s.n for s in stats)}; wall time {wall:.0f} s on this machine "
              f"(2 cores shared with background training jobs)."]
    fails = [f for s in stats for f in s.failures]
    if fails:
        lines += ["", "## Findings", ""] + [f"- {json.dumps(f)}" for f in fails[:50]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiff", type=int, default=1000, help="mutated TIFF inputs")
    ap.add_argument("--onnx", type=int, default=300, help="mutated ONNX inputs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="ONNX model (default: tiny random)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", type=Path, default=None, help="folder to keep failing inputs")
    ap.add_argument("--no-write", action="store_true", help="do not write results/fuzz.md")
    ap.add_argument("--json", action="store_true", help="print a JSON summary line")
    ap.add_argument("--child-onnx", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="unet-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or default_model(work)
    if args.child_onnx is not None:
        s = fuzz_onnx_inprocess(args.child_onnx, args.seed, model, work, args.start, args.keep)
        print("RESULT " + json.dumps(s.to_dict()), flush=True)
        return 0
    t0 = time.perf_counter()
    stats = []
    if args.tiff:
        stats.append(fuzz_tiff(args.tiff, args.seed, model, work, args.keep))
    if args.onnx:
        stats.append(fuzz_onnx(args.onnx, args.seed, model, work, args.keep))
    text = report(stats, args.seed, time.perf_counter() - t0)
    print(text)
    if args.json:
        print("JSON " + json.dumps([s.to_dict() for s in stats]))
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "fuzz.md").write_text(text)
    return 1 if any(s.failures for s in stats) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())
