"""The napari widget: segment the selected image layer with a chosen model in a worker thread
(napari stays responsive) and add the result as a Labels layer (an Image for probabilities).

``segment_layer_data`` is the pure computation; ``start_segmentation`` runs it through a worker
factory (napari's ``thread_worker`` by default, any callable in tests) and hands the layer to
the viewer when it is done; ``make_segment_widget`` builds the magicgui widget napari shows.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

OUTPUTS = ("instances", "labels", "probabilities")


def model_choices() -> list[str]:
    from ..model_store import shipped_models

    return list(shipped_models())


def layer_image(data, rgb: bool = False) -> np.ndarray:
    """The 2-D image (H, W) or (H, W, C) of a layer's data: an RGB layer keeps its colour
    axis, a multiscale layer gives its full-resolution level, a stack its current first plane."""
    if isinstance(data, (list, tuple)):  # multiscale: level 0
        data = data[0]
    arr = np.asarray(data)
    while arr.ndim > (3 if rgb else 2):
        arr = arr[0]
    return arr


def segment_layer_data(data, model: str | None = None, output: str | None = None,
                       rgb: bool = False, batch_size: int = 1, tile: int | None = None,
                       threads: int = 0) -> tuple[np.ndarray, str]:
    """(result, output kind) for a layer's data; ``output`` None = the model's default."""
    from ..backends import open_backend
    from ..pipeline import segment_array

    image = layer_image(data, rgb)
    with open_backend(model or None, threads=threads) as be:
        kind = output or be.info.default_output_kind
        result = segment_array(image, backend=be, batch_size=batch_size, tile=tile,
                               output=kind)
    return result, kind


def layer_tuple(result: np.ndarray, kind: str, name: str) -> tuple:
    """napari's LayerDataTuple for a result: Labels for labels/instances, else an Image with
    one channel per class."""
    if kind == "probabilities":
        return result, {"name": f"{name} probabilities", "channel_axis": -1}, "image"
    return result, {"name": f"{name} {kind}"}, "labels"


def start_segmentation(viewer, layer, model: str | None = None, output: str | None = None,
                       worker_factory: Callable | None = None, on_error: Callable | None = None):
    """Start segmenting ``layer`` in a worker; the layer is added to ``viewer`` when done.
    Returns the started worker (napari's ``thread_worker`` unless ``worker_factory`` is
    given: a function(fn, *args, **kwargs) returning an object with ``returned`` and
    ``errored`` signals (``.connect``) and ``.start()``)."""
    if worker_factory is None:
        from napari.qt.threading import create_worker as worker_factory  # noqa: N813

    worker = worker_factory(segment_layer_data, layer.data, model, output,
                            bool(getattr(layer, "rgb", False)))

    def done(value):
        result, kind = value
        data, meta, kind_name = layer_tuple(result, kind, layer.name)
        meta = {**meta, "scale": getattr(layer, "scale", None)} if kind_name == "labels" \
            else meta
        if meta.get("scale") is None:
            meta.pop("scale", None)
        getattr(viewer, f"add_{kind_name}")(data, **meta)

    worker.returned.connect(done)
    if on_error is not None:
        worker.errored.connect(on_error)
    worker.start()
    return worker


def make_segment_widget():
    """The magicgui widget napari docks (imports magicgui and napari only when opened)."""
    import napari
    from magicgui import magicgui

    @magicgui(call_button="Segment",
              model={"choices": model_choices(), "label": "model"},
              output={"choices": ["default", *OUTPUTS], "label": "output"})
    def segment_widget(viewer: napari.Viewer, image: napari.layers.Image,
                       model: str = "nuclei", output: str = "default"):
        if image is None:
            napari.utils.notifications.show_warning("select an image layer first")
            return

        def failed(exc):
            napari.utils.notifications.show_error(f"unet-deploy: {exc}")

        start_segmentation(viewer, image, model, None if output == "default" else output,
                           on_error=failed)

    return segment_widget
