"""The napari plugin without napari or Qt: the npe2 manifest validates (its commands import),
the widget's work runs in a worker and hands the viewer a Labels layer, the reader opens our
outputs (pyramid levels as multiscale) and declines anything else."""

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from unet_deploy.napari_plugin.reader import get_reader, read_result, result_kind
from unet_deploy.napari_plugin.widget import layer_image, start_segmentation
from unet_deploy.pipeline import segment_array

EXAMPLE = Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif"


def test_manifest_validates_with_imports(tmp_path):
    pytest.importorskip("npe2")
    # run outside the repo: a stale unet_deploy.egg-info there (in-tree builds) must not be
    # mistaken for the installed distribution
    code = ("from npe2 import PluginManifest as P; pm = P.from_distribution('unet-deploy'); "
            "pm.validate_imports(); print(pm.name, sorted(c.id for c in pm.contributions.commands))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[0] == "unet-deploy"
    assert "unet-deploy.segment_widget" in res.stdout and "unet-deploy.read_output" in res.stdout
    exe = shutil.which("npe2") or str(Path(sys.executable).with_name("npe2"))
    res = subprocess.run([exe, "validate", "unet-deploy", "--imports"], capture_output=True,
                         text=True, cwd=tmp_path)
    assert res.returncode == 0 and "valid" in res.stdout + res.stderr, res.stdout + res.stderr


class Signal:
    def __init__(self):
        self.slots = []

    def connect(self, fn):
        self.slots.append(fn)

    def emit(self, value):
        for fn in self.slots:
            fn(value)


class ThreadWorker:
    """What napari's create_worker gives: returned/errored signals and start()."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args
        self.returned, self.errored = Signal(), Signal()
        self.thread = None

    def start(self):
        def run():
            try:
                value = self.fn(*self.args)
            except Exception as exc:  # noqa: BLE001
                self.errored.emit(exc)
            else:
                self.returned.emit(value)
        self.thread = threading.Thread(target=run)
        self.thread.start()


class Viewer:
    def __init__(self):
        self.added = []

    def add_labels(self, data, **meta):
        self.added.append(("labels", data, meta))

    def add_image(self, data, **meta):
        self.added.append(("image", data, meta))


class Layer:
    def __init__(self, data, name="cells", rgb=False):
        self.data, self.name, self.rgb, self.scale = data, name, rgb, (1.0, 1.0)


def test_widget_segments_in_a_worker_and_adds_labels(tiny_model):
    image = tifffile.imread(EXAMPLE)[:120, :140]
    viewer, layer = Viewer(), Layer(image)
    started = time.perf_counter()
    worker = start_segmentation(viewer, layer, str(tiny_model), None, ThreadWorker)
    assert time.perf_counter() - started < 0.5  # returns at once; the work is in the thread
    worker.thread.join(60)
    ((kind, data, meta),) = viewer.added
    assert kind == "labels" and meta["name"] == "cells instances"
    np.testing.assert_array_equal(data, segment_array(image, tiny_model, output="instances"))


def test_widget_probabilities_and_errors(tiny_model):
    image = tifffile.imread(EXAMPLE)[:60, :60]
    viewer = Viewer()
    start_segmentation(viewer, Layer(image), str(tiny_model), "probabilities",
                       ThreadWorker).thread.join(60)
    ((kind, data, meta),) = viewer.added
    assert kind == "image" and data.shape == (60, 60, 2) and meta["channel_axis"] == -1
    errors = []
    start_segmentation(viewer, Layer(image), "no-such-model", None, ThreadWorker,
                       on_error=errors.append).thread.join(60)
    assert errors and "no-such-model" in str(errors[0])


def test_layer_image_takes_level_zero_and_first_plane():
    stack = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert layer_image(stack).shape == (4, 5)
    assert layer_image([stack[0, 0], stack[0, 0, ::2, ::2]]).shape == (4, 5)
    assert layer_image(np.zeros((2, 6, 7, 3)), rgb=True).shape == (6, 7, 3)


def test_reader_opens_pyramids_as_multiscale(tmp_path):
    labels = np.zeros((256, 320), np.uint32)
    labels[20:80, 30:90] = 1
    labels[100:200, 150:300] = 2
    path = tmp_path / "x.instances.tif"
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        tif.write(labels, subifds=2, tile=(64, 64))
        tif.write(labels[::2, ::2], subfiletype=1, tile=(64, 64))
        tif.write(labels[::4, ::4], subfiletype=1, tile=(64, 64))
    reader = get_reader(str(path))
    assert reader is read_result
    ((data, meta, kind),) = reader(str(path))
    assert kind == "labels" and meta["multiscale"]
    assert [tuple(np.asarray(level).shape) for level in data] == [(256, 320), (128, 160),
                                                                  (64, 80)]
    np.testing.assert_array_equal(np.asarray(data[0]), labels)
    flat = tmp_path / "y.probabilities.tif"
    tifffile.imwrite(flat, np.zeros((32, 32, 3), np.float32), photometric="minisblack",
                     planarconfig="contig")
    ((data, meta, kind),) = read_result(str(flat))
    assert kind == "image" and not meta["multiscale"] and meta["channel_axis"] == -1
    assert np.asarray(data).shape == (32, 32, 3)


@pytest.mark.parametrize("name", ["raw.tif", "x.labels.png", "notes.txt"])
def test_reader_declines_other_files(tmp_path, name):
    p = tmp_path / name
    p.write_bytes(b"x")
    assert get_reader(str(p)) is None and result_kind(p) is None
