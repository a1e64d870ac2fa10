"""The napari plugin (npe2 manifest ``napari.yaml``, registered as ``unet-deploy``): a widget
that segments the selected image layer in a worker thread and adds a Labels layer
(``widget``), and a reader for unet-deploy outputs, pyramid levels as multiscale (``reader``).
Neither module imports napari or Qt at import time, so both are tested without them."""
