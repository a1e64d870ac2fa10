"""Physical pixel size: read from every input format, written into every output format.

``PhysicalSize`` holds micrometres per pixel (x, y, optional z spacing) and where they came
from. Readers: TIFF resolution tags (inch/centimetre, or ImageJ's ``unit`` for unitless tags),
ImageJ ``spacing``/``unit``, OME-XML ``PhysicalSizeX/Y/Z`` (+ units), Aperio SVS ``MPP``, and
NGFF ``coordinateTransformations`` scales (+ axis units). Writers: TIFF resolution tags (pixels
per centimetre), OME-XML attributes (µm), NGFF scales (micrometer).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import Any

# length units → micrometres (OME's symbols, NGFF/UDUNITS names, ImageJ's spellings)
_UM = {
    "pm": 1e-6, "picometer": 1e-6, "å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "nanometer": 1e-3,
    "nanometre": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0,
    "micrometer": 1.0, "micrometre": 1.0, "\\u00b5m": 1.0, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "dm": 1e5,
    "decimeter": 1e5, "m": 1e6, "meter": 1e6, "metre": 1e6, "in": 25400.0, "inch": 25400.0,
    "ft": 304800.0, "foot": 304800.0,
}


def um_per_unit(unit: Any) -> float | None:
    """Micrometres in one ``unit`` (a name or symbol), or None when it is not a length."""
    if not isinstance(unit, str):
        return None
    return _UM.get(unit.strip().lower())


def _positive(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _tidy(v: float | None) -> float | None:
    """12 significant digits: 1 / (1 / 0.65) is 0.65 again, not 0.6499999999999999."""
    return None if v is None else float(f"{v:.12g}")


@dataclass(frozen=True)
class PhysicalSize:
    """Micrometres per pixel along x and y (and z spacing); None when unknown."""

    x: float | None = None
    y: float | None = None
    z: float | None = None
    source: str = ""  # e.g. "OME-XML", "Aperio MPP", "TIFF resolution tags"

    def __post_init__(self):
        for name in ("x", "y", "z"):
            object.__setattr__(self, name, _tidy(getattr(self, name)))

    @property
    def known(self) -> bool:
        return self.x is not None and self.y is not None

    def scaled(self, fy: float, fx: float) -> "PhysicalSize":
        """The pixel size after sampling every ``fy``-th row / ``fx``-th column."""
        if not self.known:
            return self
        return replace(self, x=self.x * fx, y=self.y * fy)

    def tiff_resolution(self) -> dict[str, Any]:
        """TIFF resolution tags as ``TiffBandWriter``'s ``resolution`` dict (pixels per cm)."""
        if not self.known:
            return {}
        return {"xresolution": 1e4 / self.x, "yresolution": 1e4 / self.y, "resolutionunit": 3}

    def ome(self) -> dict[str, Any]:
        """OME-XML Pixels attributes."""
        out: dict[str, Any] = {}
        if self.known:
            out.update(PhysicalSizeX=self.x, PhysicalSizeXUnit="µm",
                       PhysicalSizeY=self.y, PhysicalSizeYUnit="µm")
        if self.z is not None:
            out.update(PhysicalSizeZ=self.z, PhysicalSizeZUnit="µm")
        return out

    def __str__(self) -> str:
        if not self.known:
            return "pixel size unknown"
        return f"{self.x:.6g} x {self.y:.6g} µm/pixel ({self.source})"


UNKNOWN = PhysicalSize()


def from_tiff_tags(xres: Any, yres: Any, unit: int | None, imagej_unit: Any = None,
                   spacing: Any = None) -> PhysicalSize:
    """From XResolution/YResolution (pixels per unit) and ResolutionUnit (1 none, 2 inch,
    3 cm); unitless tags count when ImageJ names the unit. ``spacing``: ImageJ z spacing."""
    x, y = _positive(xres), _positive(yres)
    per = {2: 25400.0, 3: 1e4}.get(int(unit) if unit is not None else 2)
    source = "TIFF resolution tags"
    ij = um_per_unit(imagej_unit)
    if ij is not None and (unit in (None, 1) or per is None):
        per, source = ij, "ImageJ resolution and unit"
    if x is None or y is None or per is None:
        return UNKNOWN
    z = _positive(spacing)
    return PhysicalSize(per / x, per / y, z * ij if (z is not None and ij is not None) else None,
                        source)


def from_svs_description(description: str) -> PhysicalSize:
    """Aperio SVS: ``MPP = 0.4990`` (micrometres per pixel) in the ImageDescription."""
    m = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description or "")
    mpp = _positive(m.group(1)) if m else None
    return PhysicalSize(mpp, mpp, None, "Aperio MPP") if mpp else UNKNOWN


def from_ome_xml(xml: str, image_index: int = 0) -> PhysicalSize:
    """OME-XML ``Pixels`` PhysicalSizeX/Y/Z (+ ...Unit, default µm) of image ``image_index``."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return UNKNOWN
    pixels = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"]
    if not pixels:
        return UNKNOWN
    px = pixels[image_index] if image_index < len(pixels) else pixels[0]

    def size(axis: str) -> float | None:
        v = _positive(px.get(f"PhysicalSize{axis}"))
        per = um_per_unit(px.get(f"PhysicalSize{axis}Unit", "µm"))
        return v * per if v is not None and per is not None else None

    x, y, z = size("X"), size("Y"), size("Z")
    if x is None or y is None:
        return PhysicalSize(z=z, source="OME-XML") if z else UNKNOWN
    return PhysicalSize(x, y, z, "OME-XML")


def from_ngff(axes: list[dict], scale: list[float]) -> PhysicalSize:
    """NGFF: the scale of the y/x (and z) axes, in their declared units (micrometres when a
    unit is missing are not assumed: unknown)."""
    found: dict[str, float] = {}
    for ax, s in zip(axes, scale):
        name = ax.get("name") if isinstance(ax, dict) else str(ax)
        per = um_per_unit(ax.get("unit")) if isinstance(ax, dict) else None
        v = _positive(s)
        if name in ("x", "y", "z") and per is not None and v is not None:
            found[name] = v * per
    if "x" not in found or "y" not in found:
        return UNKNOWN
    return PhysicalSize(found["x"], found["y"], found.get("z"), "NGFF scale")
