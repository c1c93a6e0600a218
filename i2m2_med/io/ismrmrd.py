"""The ISMRMRD XML header stored in fastMRI h5 files (``ismrmrd_header``), written and parsed.

Namespace ``http://www.ismrm.org/ISMRMRD``. fastMRI knee files carry: the encoded matrix
(x = 640 readout samples, y = W phase-encoding columns), the reconstruction matrix (320 x 320),
``encodingLimits/kspace_encoding_step_1`` (centre and maximum: the acquired columns; the rest of
the W columns are zero padding), sequence parameters in ms (TR, TE, TI) and degrees (flip
angle), and the system's vendor, model and field strength in tesla.

fastMRI's padding convention (also used by its SliceDataset)::

    padding_left  = encoded_y // 2 - center
    padding_right = padding_left + maximum + 1
"""

from __future__ import annotations

import math

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

NS = "http://www.ismrm.org/ISMRMRD"
_Q = "{" + NS + "}"


@dataclass(frozen=True)
class HeaderParams:
    """What a fastMRI-style ISMRMRD header states; the defaults are a 3 T Siemens Skyra PD."""

    encoded_y: int = 368
    encoded_x: int = 640
    recon_x: int = 320
    recon_y: int = 320
    enc_center: int | None = None     # default: encoded_y // 2 (no padding)
    enc_maximum: int | None = None    # default: encoded_y - 1
    n_slices: int = 35
    n_coils: int = 1
    tr_ms: float = 2750.0
    te_ms: float = 27.0
    ti_ms: float = 100.0
    flip_angle_deg: float = 140.0
    field_strength_t: float = 2.89362
    vendor: str = "SIEMENS"
    model: str = "Skyra"
    protocol: str = "CORPD_FBK"
    fov_readout_mm: float = 280.0
    fov_phase_mm: float = 140.0
    slice_thickness_mm: float = 3.0


_MAX_HEADER_NUMBER = 1e9
"""The largest magnitude a header number may have (matrix sizes, TR, coils ...)."""

def build_header(p: HeaderParams) -> bytes:
    """Serialise ``p`` as an ISMRMRD header (UTF-8 XML bytes, as fastMRI stores it)."""
    ET.register_namespace("", NS)
    root = ET.Element(_Q + "ismrmrdHeader")

    def sub(parent: ET.Element, tag: str, text: Any | None = None) -> ET.Element:
        el = ET.SubElement(parent, _Q + tag)
        if text is not None:
            el.text = str(text)
        return el

    def xyz(parent: ET.Element, tag: str, x: Any, y: Any, z: Any) -> None:
        el = sub(parent, tag)
        sub(el, "x", x)
        sub(el, "y", y)
        sub(el, "z", z)

    mi = sub(root, "measurementInformation")
    sub(mi, "patientPosition", "HFS")
    sub(mi, "protocolName", p.protocol)
    asi = sub(root, "acquisitionSystemInformation")
    sub(asi, "systemVendor", p.vendor)
    sub(asi, "systemModel", p.model)
    sub(asi, "systemFieldStrength_T", f"{p.field_strength_t:g}")
    sub(asi, "receiverChannels", p.n_coils)
    ec = sub(root, "experimentalConditions")
    sub(ec, "H1resonanceFrequency_Hz", int(round(42.577478e6 * p.field_strength_t)))

    enc = sub(root, "encoding")
    es = sub(enc, "encodedSpace")
    xyz(es, "matrixSize", p.encoded_x, p.encoded_y, 1)
    xyz(es, "fieldOfView_mm", p.fov_readout_mm, p.fov_phase_mm, p.slice_thickness_mm * 1.5)
    rs = sub(enc, "reconSpace")
    xyz(rs, "matrixSize", p.recon_x, p.recon_y, 1)
    xyz(rs, "fieldOfView_mm", p.fov_phase_mm, p.fov_phase_mm, p.slice_thickness_mm)
    sub(enc, "trajectory", "cartesian")
    lims = sub(enc, "encodingLimits")
    center = p.encoded_y // 2 if p.enc_center is None else p.enc_center
    maximum = p.encoded_y - 1 if p.enc_maximum is None else p.enc_maximum
    for name, (lo, hi, ce) in {
        "kspace_encoding_step_1": (0, maximum, center),
        "kspace_encoding_step_2": (0, 0, 0),
        "average": (0, 0, 0),
        "slice": (0, max(p.n_slices - 1, 0), p.n_slices // 2),
        "contrast": (0, 0, 0),
        "phase": (0, 0, 0),
        "repetition": (0, 0, 0),
        "set": (0, 0, 0),
        "segment": (0, 0, 0),
    }.items():
        el = sub(lims, name)
        sub(el, "minimum", lo)
        sub(el, "maximum", hi)
        sub(el, "center", ce)
    seq = sub(root, "sequenceParameters")
    sub(seq, "TR", f"{p.tr_ms:g}")
    sub(seq, "TE", f"{p.te_ms:g}")
    sub(seq, "TI", f"{p.ti_ms:g}")
    sub(seq, "flipAngle_deg", f"{p.flip_angle_deg:g}")
    sub(seq, "sequence_type", "TurboSpinEcho")
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8")


def parse_header(xml: bytes | str) -> dict[str, Any]:
    """Parse an ISMRMRD header into the standard study tags (see :mod:`i2m2_med.io.study`).

    Raises ``ValueError`` with a one-line reason on malformed XML, a missing encoding block or a
    number that is infinite, NaN or beyond 10^9 in magnitude (a header must not be able to claim
    an impossible matrix); fields that are simply absent are left out of the result.
    """
    if isinstance(xml, str):
        xml = xml.encode("utf-8")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"ismrmrd_header is not valid XML ({exc})") from None

    def find(*path: str) -> str | None:
        el = root.find("/".join(_Q + t for t in path))
        return None if el is None or el.text is None else el.text.strip()

    def num(*path: str) -> float | None:
        text = find(*path)
        try:
            value = None if text is None else float(text)
        except ValueError:
            return None
        if value is not None and not (math.isfinite(value) and abs(value) <= _MAX_HEADER_NUMBER):
            raise ValueError(f"ismrmrd_header: {'/'.join(path)} is {text[:40]!r}, not a finite number of sensible size")
        return value

    out: dict[str, Any] = {}
    enc_x = num("encoding", "encodedSpace", "matrixSize", "x")
    enc_y = num("encoding", "encodedSpace", "matrixSize", "y")
    if enc_x is None or enc_y is None:
        raise ValueError("ismrmrd_header has no encoding/encodedSpace/matrixSize")
    enc_z = num("encoding", "encodedSpace", "matrixSize", "z") or 1
    out["encoded_matrix"] = [int(enc_x), int(enc_y), int(enc_z)]
    rx = num("encoding", "reconSpace", "matrixSize", "x")
    ry = num("encoding", "reconSpace", "matrixSize", "y")
    if rx is not None and ry is not None:
        rz = num("encoding", "reconSpace", "matrixSize", "z") or 1
        out["recon_matrix"] = [int(rx), int(ry), int(rz)]
    center = num("encoding", "encodingLimits", "kspace_encoding_step_1", "center")
    maximum = num("encoding", "encodingLimits", "kspace_encoding_step_1", "maximum")
    if center is not None and maximum is not None:
        out["enc_center"] = int(center)
        out["enc_maximum"] = int(maximum)
        out["padding_left"] = int(enc_y) // 2 - int(center)
        out["padding_right"] = out["padding_left"] + int(maximum) + 1
    for key, path in {
        "tr_ms": ("sequenceParameters", "TR"),
        "te_ms": ("sequenceParameters", "TE"),
        "ti_ms": ("sequenceParameters", "TI"),
        "flip_angle_deg": ("sequenceParameters", "flipAngle_deg"),
        "field_strength_t": ("acquisitionSystemInformation", "systemFieldStrength_T"),
    }.items():
        value = num(*path)
        if value is not None:
            out[key] = value
    for key, path in {
        "vendor": ("acquisitionSystemInformation", "systemVendor"),
        "model": ("acquisitionSystemInformation", "systemModel"),
        "protocol": ("measurementInformation", "protocolName"),
    }.items():
        value = find(*path)
        if value:
            out[key] = value
    coils = num("acquisitionSystemInformation", "receiverChannels")
    if coils is not None:
        out["receiver_channels"] = int(coils)
    return out
