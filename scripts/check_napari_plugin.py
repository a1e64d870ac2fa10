"""Manual check of the napari plugin in a real viewer (not run by CI: needs napari and a Qt
binding). Under a virtual display:

    pip install "unet-deploy[napari]" PyQt5
    QT_QPA_PLATFORM=xcb xvfb-run -a python scripts/check_napari_plugin.py

Docks the widget, segments the example with the nuclei model through the worker while the
event loop keeps running, compares the Labels layer with segment_array, and opens a pyramidal
result through the reader."""
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "xcb")
import numpy as np, tifffile, napari
from qtpy.QtWidgets import QApplication

EXAMPLE = str(Path(__file__).parents[1] / "examples" / "bbbc039_crop.tif")
viewer = napari.Viewer(show=False)
layer = viewer.add_image(tifffile.imread(EXAMPLE), name="crop")
dock, widget = viewer.window.add_plugin_dock_widget("unet-deploy", "Segment (U-Net)")
print("widget:", type(widget).__name__, [w.name for w in widget])
widget.image.value = layer
widget.model.value = "nuclei"
app = QApplication.instance()
t0 = time.perf_counter()
widget()  # the call button's action: starts the worker and returns
t_call = time.perf_counter() - t0
ticks = 0
while len(viewer.layers) < 2 and time.perf_counter() - t0 < 180:
    app.processEvents(); ticks += 1; time.sleep(0.02)
print(f"call returned in {t_call:.3f} s; event loop ticked {ticks} times while the worker ran; "
      f"layers: {[(l.name, type(l).__name__) for l in viewer.layers]}")
labels = viewer.layers[-1].data
print("labels:", labels.shape, labels.dtype, "objects:", len(np.unique(labels)) - 1)
from unet_deploy.pipeline import segment_array
print("equals segment_array:", np.array_equal(labels, segment_array(tifffile.imread(EXAMPLE), "nuclei", output="instances")))
# reader: a pyramidal result
lab = labels.astype(np.uint32)
path = str(Path(tempfile.mkdtemp()) / "crop.instances.tif")
with tifffile.TiffWriter(path, bigtiff=True) as tif:
    tif.write(lab, subifds=1, tile=(64, 64)); tif.write(lab[::2, ::2], subfiletype=1, tile=(64, 64))
new = viewer.open(path, plugin="unet-deploy")
print("reader:", [(l.name, type(l).__name__, l.multiscale) for l in new])
viewer.close()
