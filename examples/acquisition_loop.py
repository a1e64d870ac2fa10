"""Segment frames while a microscope acquires them, without ever blocking the acquisition.

Two ways to hook in:

* **Image-processor hook** (Micro-Manager / pycro-manager style): ``SegmentingProcessor`` is a
  callable ``(image, metadata) -> (image, metadata)``. It hands the frame to a ``Segmenter``
  job queue and returns at once; results arrive in a callback (saved as TIFF and/or logged).
  With pycro-manager::

      from pycromanager import Acquisition
      with Segmenter("nuclei") as seg:
          proc = SegmentingProcessor(seg, out_dir="labels/")
          with Acquisition(directory="data", name="run", image_process_fn=proc) as acq:
              acq.acquire(events)
          proc.drain()

* **Watch folder**: ``--watch DIR`` segments every new ``*.tif`` that appears in DIR (written
  by any acquisition program) into ``DIR/labels/NAME.labels.tif``.

Runs here on simulated frames (synthetic nuclei + noise), no microscope needed::

    python examples/acquisition_loop.py --simulate 20 --model nuclei
    python examples/acquisition_loop.py --simulate 20 --model path/to/model.onnx --out /tmp/labels

Back-pressure: at most ``--max-pending`` frames wait for segmentation; when the queue is full a
frame is *skipped* (logged), never queued without bound and never blocking the camera.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("acquisition")


class SegmentingProcessor:
    """pycro-manager ``image_process_fn``: queue the frame, return it unchanged."""

    def __init__(self, seg, out_dir: str | Path | None = None, max_pending: int = 4,
                 on_result=None):
        self.seg = seg
        self.out_dir = Path(out_dir) if out_dir else None
        if self.out_dir:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_pending = max_pending
        self.on_result = on_result
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.done = 0
        self.skipped = 0
        self.failed = 0

    def __call__(self, image: np.ndarray, metadata: dict):
        with self._lock:
            if self._pending >= self.max_pending:
                self.skipped += 1
                log.warning("segmentation queue full: frame %s skipped", _frame_id(metadata))
                return image, metadata
            self._pending += 1
        t0 = time.perf_counter()
        meta = dict(metadata)
        self.seg.submit(image, callback=lambda fut: self._finished(fut, meta, t0))
        return image, metadata

    def _finished(self, fut, metadata: dict, t0: float) -> None:
        from unet_deploy.errors import UnetDeployError

        try:
            labels = fut.result()
        except UnetDeployError as exc:  # bad frame or backend failure: log, keep acquiring
            self.failed += 1
            log.error("frame %s not segmented: %s (health: %s)", _frame_id(metadata), exc,
                      self.seg.health()["status"])
        except Exception as exc:  # noqa: BLE001 - cancelled etc.; never raise into the host
            self.failed += 1
            log.error("frame %s not segmented: %r", _frame_id(metadata), exc)
        else:
            self.done += 1
            ms = (time.perf_counter() - t0) * 1e3
            foreground = float((labels > 0).mean())
            log.info("frame %s: %dx%d segmented in %.0f ms, foreground %.1f%%",
                     _frame_id(metadata), labels.shape[1], labels.shape[0], ms, 100 * foreground)
            if self.out_dir:
                _save_atomically(self.out_dir / f"{_frame_id(metadata)}.labels.tif", labels)
            if self.on_result:
                self.on_result(labels, metadata)
        finally:
            with self._lock:
                self._pending -= 1
                self._idle.notify_all()

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every queued frame is segmented."""
        with self._lock:
            self._idle.wait_for(lambda: self._pending == 0, timeout)


def _frame_id(metadata: dict) -> str:
    axes = metadata.get("Axes") or {}
    if axes:
        return "_".join(f"{k}{v}" for k, v in sorted(axes.items()))
    return str(metadata.get("frame", metadata.get("ImageNumber", "frame")))


def _save_atomically(path: Path, array: np.ndarray) -> None:
    import tifffile

    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{threading.get_ident()}")
    tifffile.imwrite(tmp, array, compression="zlib")
    os.replace(tmp, path)


# ----------------------------------------------------------------------- simulated camera


def simulated_frames(n: int, size: tuple[int, int] = (512, 512), seed: int = 0):
    """Yield (image uint16, metadata) like a camera: bright discs (nuclei) on noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    for t in range(n):
        img = rng.normal(300, 30, size)
        for _ in range(int(rng.integers(10, 40))):
            cy, cx = rng.uniform(0, size[0]), rng.uniform(0, size[1])
            r = rng.uniform(6, 18)
            img += 1500 * np.exp(-(((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r)) ** 2)
        yield np.clip(img, 0, 65535).astype(np.uint16), {"Axes": {"time": t}, "frame": t}


def run_simulation(args) -> int:
    from unet_deploy import Segmenter

    with Segmenter(args.model, backend=args.backend, batch_size=args.batch_size) as seg:
        log.info("loaded %s (%s), health %s", seg.model_path, seg.backend_name,
                 seg.health()["status"])
        proc = SegmentingProcessor(seg, args.out, max_pending=args.max_pending)
        t0 = time.perf_counter()
        for image, metadata in simulated_frames(args.simulate):
            proc(image, metadata)  # what the acquisition engine calls per frame
            time.sleep(args.interval)  # the camera's frame interval
        proc.drain()
        secs = time.perf_counter() - t0
    log.info("%d frames: %d segmented, %d skipped (queue full), %d failed, %.1f s",
             args.simulate, proc.done, proc.skipped, proc.failed, secs)
    return 0 if proc.failed == 0 else 1


def run_watch(args) -> int:
    """Poll DIR for new TIFFs (complete: size stable for one poll) and segment them."""
    from unet_deploy import Segmenter
    from unet_deploy.errors import UnetDeployError

    folder = Path(args.watch)
    out = Path(args.out) if args.out else folder / "labels"
    seen: dict[Path, int] = {}
    done: set[Path] = set()
    import tifffile

    with Segmenter(args.model, backend=args.backend, batch_size=args.batch_size) as seg:
        proc = SegmentingProcessor(seg, out, max_pending=args.max_pending)
        log.info("watching %s (Ctrl-C to stop)", folder)
        try:
            while True:
                for p in sorted(folder.glob("*.tif")):
                    if p in done or p.name.startswith("."):
                        continue
                    size = p.stat().st_size
                    if seen.get(p) != size:  # still being written
                        seen[p] = size
                        continue
                    done.add(p)
                    try:
                        image = tifffile.imread(p)
                    except Exception as exc:  # noqa: BLE001
                        log.error("%s: cannot read (%s); skipped", p, exc)
                        continue
                    try:
                        proc(image, {"frame": p.stem})
                    except UnetDeployError as exc:
                        log.error("%s: %s", p, exc)
                time.sleep(args.interval or 1.0)
        except KeyboardInterrupt:
            proc.drain()
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--simulate", type=int, metavar="N", help="simulate N camera frames")
    mode.add_argument("--watch", metavar="DIR", help="segment new TIFFs appearing in DIR")
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--out", default=None, help="folder for label TIFFs (default: none / DIR/labels)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between frames")
    ap.add_argument("--max-pending", type=int, default=4)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from unet_deploy.errors import UnetDeployError

    try:
        return run_simulation(args) if args.simulate else run_watch(args)
    except UnetDeployError as exc:
        log.error("%s", exc)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
