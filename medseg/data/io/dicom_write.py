"""Write volumes and radiographs as DICOM, the ways scanners do (for built-in data and tests).

Volumes ``(X, Y, Z)`` with a voxel -> RAS affine become an MR series: one file per slice (classic
MR Image Storage, in explicit or implicit VR) or one enhanced multi-frame file (Enhanced MR Image
Storage). Intensities are stored as unsigned 16-bit integers with RescaleSlope/RescaleIntercept.
File names are shuffled, as they often are on export, so that readers must sort by position.

Every file is meant to pass ``dciodvfy`` (dicom3tools) without errors: the type 1 and type 2
attributes of its IOD are written (acquisition parameters come from :data:`MR_PROTOCOLS`, chosen
by the series description, so a study holds varied but plausible series), and every decimal
string (DS) is formatted to at most 16 characters. DX images must have an identity modality LUT
(RescaleSlope 1, RescaleIntercept 0), so their stored values are the intensities themselves when
those are integers in 0..65535 and a linear map of them onto 0..65535 otherwise; CR and MR keep the
intensities through RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from medseg.data.io.dicom import LPS_TO_RAS

log = logging.getLogger(__name__)

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"
DX_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: Largest value of the unsigned 16-bit stored pixels.
STORED_MAX = 65535
#: Manufacturer of the built-in data. dcm2niix picks vendor-specific rules from the first two
#: letters (``ME`` is Mediso, ``PH`` Philips, ...), so the name starts with letters no vendor uses.
MANUFACTURER = "Synthetic (medseg)"
#: SNOMED CT codes (code, scheme, meaning) of the imaged regions.
BRAIN = ("12738006", "SCT", "Brain")
HEAD = ("69536005", "SCT", "Head")
ANTERO_POSTERIOR = ("399348003", "SCT", "antero-posterior")


@dataclass(frozen=True)
class MRProtocol:
    """Acquisition parameters recorded in an MR series (times in ms, flip angle in degrees)."""

    scanning_sequence: tuple[str, ...]
    sequence_variant: tuple[str, ...]
    scan_options: tuple[str, ...]
    acquisition: str
    repetition_time: float
    echo_time: float
    inversion_time: float | None
    echo_train: int
    flip_angle: float
    contrast: str
    sequence_name: str
    image_kind: str = "OTHER"


#: The built-in acquisitions: a localiser, FLAIR (turbo inversion recovery), MPRAGE (3D gradient
#: echo with an inversion pulse), a T1 turbo field echo (Philips 3D TFE: no inversion time
#: recorded), a T2 turbo spin echo and a T1 spin echo.
LOCALISER = MRProtocol(("GR",), ("SP",), (), "2D", 8.6, 4.0, None, 1, 20.0, "T1", "fl2d1", "LOCALIZER")
FLAIR_IR = MRProtocol(("SE", "IR"), ("SK", "SP", "MP"), ("SP",), "2D", 9000.0, 81.0, 2500.0, 16, 150.0,
                      "FLUID_ATTENUATED", "tir2d1_16")
MPRAGE = MRProtocol(("GR", "IR"), ("SK", "SP", "MP"), ("PFP",), "3D", 2300.0, 2.98, 900.0, 1, 9.0, "T1", "tfl3d1")
T1_TFE = MRProtocol(("GR",), ("SK", "SS", "MP"), (), "3D", 8.1, 3.7, None, 1, 8.0, "T1", "T1TFE")
T2_TSE = MRProtocol(("SE",), ("SK", "SP"), ("FS",), "2D", 4000.0, 100.0, None, 15, 150.0, "T2", "tse2d1_15")
#: The protocol of any other description: a T1-weighted spin echo.
T1_SPIN_ECHO = MRProtocol(("SE",), ("SP",), (), "2D", 500.0, 12.0, None, 1, 90.0, "T1", "se2d1")
#: (keywords any of which in the series description selects it, protocol); first match wins.
MR_PROTOCOLS: tuple[tuple[tuple[str, ...], MRProtocol], ...] = (
    (("LOC", "SCOUT"), LOCALISER),
    (("FLAIR",), FLAIR_IR),
    (("POST", "GD", "MPRAGE"), MPRAGE),
    (("T2",), T2_TSE),
)


def mr_protocol(description: str) -> MRProtocol:
    """The :data:`MR_PROTOCOLS` entry for a series description (T1 spin echo when none matches)."""
    upper = description.upper()
    return next((p for keys, p in MR_PROTOCOLS if any(k in upper for k in keys)), T1_SPIN_ECHO)


def decimal(value: float) -> str:
    """``value`` as a DICOM decimal string (DS): at most 16 characters, as precise as that allows."""
    return format_number_as_ds(float(value))


def _decimals(values: Sequence[float] | np.ndarray) -> list[str]:
    """Each value as a decimal string (a multi-valued DS)."""
    return [decimal(v) for v in values]


def _encode(keyword: str, value: Any) -> Any:
    """Numbers for a DS attribute become decimal strings; other values pass unchanged."""
    if dictionary_VR(keyword) != "DS":
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        return _decimals(value)
    return decimal(value)


def _assign(ds: Dataset, **attrs: Any) -> Dataset:
    """Set ``attrs`` on ``ds`` (DS numbers formatted to 16 characters); return ``ds``."""
    for keyword, value in attrs.items():
        setattr(ds, keyword, _encode(keyword, value))
    return ds


def _item(**attrs: Any) -> Dataset:
    """A sequence item holding ``attrs``."""
    return _assign(Dataset(), **attrs)


def _seq(**attrs: Any) -> DicomSequence:
    """A sequence of one item holding ``attrs``."""
    return DicomSequence([_item(**attrs)])


def _code(code: tuple[str, str, str]) -> DicomSequence:
    """A code sequence of one ``(value, scheme, meaning)`` code."""
    return _seq(CodeValue=code[0], CodingSchemeDesignator=code[1], CodeMeaning=code[2])


def _new_dataset(sop_class: str, transfer_syntax: str = ExplicitVRLittleEndian) -> Dataset:
    """An empty dataset of ``sop_class`` with its file meta information and a fresh SOPInstanceUID."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    return ds


@dataclass
class _Stored:
    """Stored pixels and the modality LUT that maps them back: output = slope * stored + intercept.

    ``gain``/``offset`` give that output as a function of the input intensities (to carry windows).
    """

    pixels: np.ndarray
    slope: float
    intercept: float
    gain: float
    offset: float


def _store(data: np.ndarray, identity: bool = False, invert: bool = False) -> _Stored:
    """Quantise ``data`` to uint16 (see the module docstring for ``identity``; ``invert`` for MONOCHROME1)."""
    lo, hi = float(data.min()), float(data.max())
    if identity:
        exact = lo >= 0 and hi <= STORED_MAX and bool(np.all(data == np.round(data)))
        a = 1.0 if exact else (STORED_MAX / (hi - lo) if hi > lo else 1.0)
        b = 0.0 if exact else -lo * a
        slope, intercept = 1.0, 0.0
        if not exact:
            log.debug("DX pixel values rescaled to 0..%d (the DX IOD allows no RescaleSlope)", STORED_MAX)
    else:
        slope = float(decimal((hi - lo) / STORED_MAX if hi > lo else 1.0))
        intercept = float(decimal(lo))
        a, b = 1.0 / slope, -intercept / slope
    if invert:
        a, b = -a, STORED_MAX - b
    pixels = np.clip(np.round(a * data + b), 0, STORED_MAX).astype(np.uint16)
    return _Stored(pixels, slope, intercept, gain=slope * a, offset=slope * b + intercept)


def _patient(ds: Dataset, ids: dict[str, str], frame_of_reference: bool = True) -> None:
    """Patient, study, series and equipment attributes (types 1 and 2 of the common modules)."""
    pid = ids.get("patient_id", "ANON")
    ds.PatientID, ds.PatientName = pid, f"{pid}^"
    ds.PatientBirthDate, ds.PatientSex = "", ids.get("patient_sex", "O")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = ids["study_uid"], ids["series_uid"]
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ids.get("study_date", "20260101")
    ds.StudyTime, ds.SeriesTime, ds.ContentTime = "090000", ids.get("series_time", "090500"), "090500"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    if ids.get("description"):  # type 3: left out rather than empty
        ds.SeriesDescription = ids["description"]
    ds.SeriesNumber = int(ids.get("series_number", 1))
    ds.Modality = ids.get("modality", "MR")
    if frame_of_reference:
        ds.FrameOfReferenceUID = ids.get("frame_of_reference") or generate_uid()
        ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, "medseg phantom"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "0", "medseg"


def _pixels(ds: Dataset, stored: np.ndarray) -> None:
    """Image Pixel module: unsigned 16-bit greyscale ``stored`` ``(rows, columns)`` or ``(frames, rows, columns)``."""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = ds.get("PhotometricInterpretation", "MONOCHROME2")
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


@dataclass
class _Grid:
    """A volume's plane geometry in LPS: orientation, pixel spacing, first position and slice step."""

    orientation: list[float]
    pixel_spacing: list[float]
    origin: np.ndarray
    step: np.ndarray

    @classmethod
    def from_affine(cls, affine: np.ndarray) -> _Grid:
        """The grid of a voxel -> RAS affine (PixelSpacing ordered as DICOM: between rows, then columns)."""
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
        c0, c1 = lps[:3, 0], lps[:3, 1]
        row, col = c0 / np.linalg.norm(c0), c1 / np.linalg.norm(c1)
        return cls(orientation=[float(v) for v in (*row, *col)],
                   pixel_spacing=[float(np.linalg.norm(c1)), float(np.linalg.norm(c0))],
                   origin=lps[:3, 3], step=lps[:3, 2])

    @property
    def thickness(self) -> float:
        """Slice thickness (mm): the length of the step, slices being contiguous."""
        return float(np.linalg.norm(self.step))

    def position(self, k: int) -> list[float]:
        """ImagePositionPatient (LPS mm) of slice ``k``."""
        return [float(v) for v in self.origin + k * self.step]


def _mr_image(ds: Dataset, protocol: MRProtocol) -> None:
    """The MR Image module's acquisition attributes of a classic (single-frame) MR image."""
    _assign(ds, ImageType=["ORIGINAL", "PRIMARY", protocol.image_kind],
            ScanningSequence=list(protocol.scanning_sequence), SequenceVariant=list(protocol.sequence_variant),
            ScanOptions=list(protocol.scan_options) or "", MRAcquisitionType=protocol.acquisition,
            SequenceName=protocol.sequence_name, RepetitionTime=protocol.repetition_time,
            EchoTime=protocol.echo_time, EchoTrainLength=protocol.echo_train, FlipAngle=protocol.flip_angle,
            MagneticFieldStrength=3.0, ImagingFrequency=123.2, PatientPosition="HFS", BodyPartExamined="HEAD")
    if protocol.inversion_time is not None:
        _assign(ds, InversionTime=protocol.inversion_time)


def _contrast_bolus(ds: Dataset, agent: str | None) -> None:
    """The Contrast/Bolus module of an image acquired after a contrast agent (its agent and route)."""
    if agent:
        ds.ContrastBolusAgent, ds.ContrastBolusRoute = agent, "IV"


def write_series(data: np.ndarray, affine: np.ndarray, out_dir: str | Path, ids: dict[str, str], *,
                 enhanced: bool = False, implicit_vr: bool = False, seed: int = 0,
                 protocol: MRProtocol | None = None) -> list[Path]:
    """Write a volume as one DICOM MR series.

    Args:
        data: ``(X, Y, Z)`` intensities (X = column, Y = row, Z = slice).
        affine: voxel -> RAS mm affine of ``data``.
        out_dir: folder for the files (created).
        ids: ``study_uid``, ``series_uid`` and optionally ``patient_id``, ``patient_sex``,
            ``description`` (also selects the :data:`MR_PROTOCOLS` entry), ``series_number``,
            ``frame_of_reference``, ``study_date``, ``series_time``, ``modality``, ``contrast_agent``
            (ContrastBolusAgent of a post-contrast series; classic files only).
        enhanced: write one Enhanced MR multi-frame file instead of one file per slice.
        implicit_vr: use the Implicit VR Little Endian transfer syntax.
        seed: shuffles the file names.
        protocol: the acquisition (``None``: chosen from the description, see :func:`mr_protocol`).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = _Grid.from_affine(affine)
    stored = _store(np.asarray(data, dtype=np.float64))
    syntax = ImplicitVRLittleEndian if implicit_vr else ExplicitVRLittleEndian
    protocol = protocol or mr_protocol(ids.get("description", ""))
    if enhanced:
        if ids.get("contrast_agent"):
            raise ValueError("a post-contrast series is written as classic files (no Enhanced Contrast/Bolus module)")
        return [_write_enhanced(stored, grid, out / "enhanced.dcm", ids, protocol, syntax)]
    names = np.random.default_rng(seed).permutation(data.shape[2])
    paths = []
    for k in range(data.shape[2]):
        ds = _new_dataset(MR_IMAGE_STORAGE, syntax)
        _patient(ds, ids)
        _mr_image(ds, protocol)
        _contrast_bolus(ds, ids.get("contrast_agent"))
        _assign(ds, Rows=data.shape[1], Columns=data.shape[0], ImagePositionPatient=grid.position(k),
                ImageOrientationPatient=grid.orientation, PixelSpacing=grid.pixel_spacing,
                SliceThickness=grid.thickness, InstanceNumber=k + 1, RescaleSlope=stored.slope,
                RescaleIntercept=stored.intercept)
        if protocol.acquisition == "3D":  # contiguous partitions: scanners record the step too
            _assign(ds, SpacingBetweenSlices=grid.thickness)
        _pixels(ds, stored.pixels[:, :, k].T)
        path = out / f"IM{int(names[k]):04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _write_enhanced(stored: _Stored, grid: _Grid, path: Path, ids: dict[str, str], protocol: MRProtocol,
                    syntax: str) -> Path:
    """One Enhanced MR Image file holding every slice as a frame."""
    nx, ny, nz = stored.pixels.shape
    ds = _new_dataset(ENHANCED_MR_IMAGE_STORAGE, syntax)
    _patient(ds, ids)
    ds.PatientPosition = "HFS"
    ds.Rows, ds.Columns, ds.NumberOfFrames, ds.InstanceNumber = ny, nx, nz, 1
    _enhanced_image(ds, protocol)
    _enhanced_pulse_sequence(ds, protocol)
    ds.SharedFunctionalGroupsSequence = DicomSequence([_enhanced_shared(stored, grid, protocol)])
    dimensions = generate_uid()
    ds.DimensionOrganizationSequence = _seq(DimensionOrganizationUID=dimensions)
    ds.DimensionIndexSequence = DicomSequence([
        _item(DimensionOrganizationUID=dimensions, DimensionIndexPointer=0x00209056,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="Stack ID"),
        _item(DimensionOrganizationUID=dimensions, DimensionIndexPointer=0x00209057,
              FunctionalGroupPointer=0x00209111, DimensionDescriptionLabel="In-Stack Position Number")])
    ds.PerFrameFunctionalGroupsSequence = DicomSequence([
        _item(FrameContentSequence=_seq(StackID="1", InStackPositionNumber=k + 1, DimensionIndexValues=[1, k + 1],
                                        FrameAcquisitionDateTime=f"{ds.StudyDate}090500",
                                        FrameReferenceDateTime=f"{ds.StudyDate}090500",
                                        FrameAcquisitionDuration=protocol.repetition_time),
              PlanePositionSequence=_seq(ImagePositionPatient=grid.position(k)))
        for k in range(nz)])
    _pixels(ds, np.stack([stored.pixels[:, :, k].T for k in range(nz)]))
    ds.save_as(path, enforce_file_format=True)
    return path


def _enhanced_image(ds: Dataset, protocol: MRProtocol) -> None:
    """Image-level attributes of the Enhanced MR Image module."""
    _assign(ds, ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], PixelPresentation="MONOCHROME",
            VolumetricProperties="VOLUME", VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
            AcquisitionContrast=protocol.contrast, BurnedInAnnotation="NO", LossyImageCompression="00",
            PresentationLUTShape="IDENTITY", ContentQualification="RESEARCH", ApplicableSafetyStandardAgency="IEC",
            AcquisitionNumber=1, AcquisitionDateTime=f"{ds.StudyDate}090500", AcquisitionDuration=60.0,
            ResonantNucleus="1H", KSpaceFiltering="NONE", MagneticFieldStrength=3.0,
            AcquisitionContextSequence=DicomSequence([]))


def _enhanced_pulse_sequence(ds: Dataset, protocol: MRProtocol) -> None:
    """The MR Pulse Sequence module (required for ORIGINAL images)."""
    spin = "SE" in protocol.scanning_sequence
    _assign(ds, PulseSequenceName=protocol.sequence_name, MRAcquisitionType=protocol.acquisition,
            EchoPulseSequence="SPIN" if spin else "GRADIENT",
            MultipleSpinEcho="YES" if spin and protocol.echo_train > 1 else "NO",
            MultiPlanarExcitation="YES" if protocol.acquisition == "2D" else "NO", PhaseContrast="NO",
            TimeOfFlightContrast="NO", SteadyStatePulseSequence="NONE",
            EchoPlanarPulseSequence="NO", SaturationRecovery="NO", SpectrallySelectedSuppression="NONE",
            OversamplingPhase="NONE", GeometryOfKSpaceTraversal="RECTILINEAR",
            SegmentedKSpaceTraversal="PARTIAL" if protocol.echo_train > 1 else "SINGLE",
            RectilinearPhaseEncodeReordering="LINEAR", NumberOfKSpaceTrajectories=1)
    if not spin:
        ds.Spoiling = "RF"
    if protocol.acquisition == "3D":
        ds.CoverageOfKSpace = "FULL"


def _enhanced_shared(stored: _Stored, grid: _Grid, protocol: MRProtocol) -> Dataset:
    """The functional groups every frame shares: geometry, rescale and acquisition parameters."""
    inversion = {} if protocol.inversion_time is None else {"InversionTimes": [protocol.inversion_time]}
    columns, rows, slices = stored.pixels.shape
    out_of_plane = {"MRAcquisitionPhaseEncodingStepsOutOfPlane": slices} if protocol.acquisition == "3D" else {}
    return _item(
        PixelMeasuresSequence=_seq(PixelSpacing=grid.pixel_spacing, SliceThickness=grid.thickness),
        PlaneOrientationSequence=_seq(ImageOrientationPatient=grid.orientation),
        PixelValueTransformationSequence=_seq(RescaleSlope=stored.slope, RescaleIntercept=stored.intercept,
                                              RescaleType="US"),
        FrameAnatomySequence=_seq(AnatomicRegionSequence=_code(BRAIN), FrameLaterality="U"),
        MRImageFrameTypeSequence=_seq(FrameType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"],
                                      PixelPresentation="MONOCHROME", VolumetricProperties="VOLUME",
                                      VolumeBasedCalculationTechnique="NONE", ComplexImageComponent="MAGNITUDE",
                                      AcquisitionContrast=protocol.contrast),
        MRTimingAndRelatedParametersSequence=_seq(
            RepetitionTime=protocol.repetition_time, FlipAngle=protocol.flip_angle,
            EchoTrainLength=protocol.echo_train, RFEchoTrainLength=protocol.echo_train,
            GradientEchoTrainLength=0 if "SE" in protocol.scanning_sequence else 1,
            GradientOutputType="DB_DT", GradientOutput=20.0,
            SpecificAbsorptionRateSequence=_seq(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                                SpecificAbsorptionRateValue=0.5),
            OperatingModeSequence=_seq(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")),
        MREchoSequence=_seq(EffectiveEchoTime=protocol.echo_time),
        MRModifierSequence=_seq(InversionRecovery="YES" if inversion else "NO", FlowCompensation="NONE",
                                T2Preparation="NO", SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
                                PartialFourier="NO", ParallelAcquisition="NO", **inversion),
        MRImagingModifierSequence=_seq(MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                                       TransmitterFrequency=123.2, PixelBandwidth=200.0),
        MRReceiveCoilSequence=_seq(ReceiveCoilName="HEAD", ReceiveCoilManufacturerName=MANUFACTURER,
                                   ReceiveCoilType="VOLUME", QuadratureReceiveCoil="YES"),
        MRTransmitCoilSequence=_seq(TransmitCoilName="BODY", TransmitCoilManufacturerName=MANUFACTURER,
                                    TransmitCoilType="BODY"),
        MRFOVGeometrySequence=_seq(InPlanePhaseEncodingDirection="ROW", MRAcquisitionFrequencyEncodingSteps=columns,
                                   MRAcquisitionPhaseEncodingStepsInPlane=rows, PercentSampling=100.0,
                                   PercentPhaseFieldOfView=100.0, **out_of_plane),
        MRAveragesSequence=_seq(NumberOfAverages=1.0))


def write_radiograph(image: np.ndarray, out_path: str | Path, ids: dict[str, str], *,
                     spacing: Sequence[float] = (0.5, 0.5), spacing_tag: str = "PixelSpacing",
                     magnification: float | None = None, monochrome1: bool = False,
                     window: tuple[float, float] | None = None, modality: str = "DX",
                     patient_orientation: Sequence[str] = ("R", "F")) -> Path:
    """Write a 2D image ``(X, Y)`` (X = column) as a DX or CR DICOM file.

    Args:
        image: intensities, higher = brighter (= more attenuation).
        out_path: file to write.
        ids: ``study_uid``, ``series_uid``, optionally ``patient_id``, ``patient_sex``, ``description``.
        spacing: pixel size (mm) between rows and between columns, as DICOM orders it.
        spacing_tag: ``PixelSpacing`` or ``ImagerPixelSpacing``. DX images always carry
            ImagerPixelSpacing (type 1); with ``PixelSpacing`` it is ``spacing`` times the magnification.
        magnification: EstimatedRadiographicMagnificationFactor to record.
        monochrome1: store inverted values with PhotometricInterpretation MONOCHROME1.
        window: optional (centre, width) VOI window, in the units of ``image``.
        modality: ``DX`` or ``CR``.
        patient_orientation: PatientOrientation, the patient directions of increasing column and
            row index (the built-in radiographs: columns to the right, rows to the feet).
    """
    ds = _new_dataset(DX_IMAGE_STORAGE if modality == "DX" else CR_IMAGE_STORAGE)
    _patient(ds, {**ids, "modality": modality}, frame_of_reference=False)
    stored = _store(np.asarray(image, dtype=np.float64).T, identity=modality == "DX", invert=monochrome1)
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.pixels.shape
    ds.InstanceNumber, ds.PatientOrientation = 1, list(patient_orientation)
    ds.BodyPartExamined, ds.ViewPosition = "HEAD", "AP"
    _radiograph_spacing(ds, spacing, spacing_tag, magnification, modality)
    _assign(ds, RescaleSlope=stored.slope, RescaleIntercept=stored.intercept, RescaleType="US")
    _window(ds, stored, window, required=modality == "DX")
    if modality == "DX":
        _dx_image(ds, monochrome1)
    _pixels(ds, stored.pixels)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return Path(out_path)


def _window(ds: Dataset, stored: _Stored, window: tuple[float, float] | None, required: bool) -> None:
    """Record ``window`` (input units) in modality-LUT output units; the full range when ``required``."""
    if window is not None:
        centre, width = stored.gain * window[0] + stored.offset, abs(stored.gain) * window[1]
    elif required:
        lo, hi = float(stored.pixels.min()), float(stored.pixels.max())
        centre, width = stored.slope * (lo + hi) / 2 + stored.intercept, stored.slope * max(hi - lo, 1.0)
    else:
        return
    _assign(ds, WindowCenter=centre, WindowWidth=width)
    if width < 1:  # a LINEAR window narrower than one unit is not allowed
        ds.VOILUTFunction = "LINEAR_EXACT"


def _radiograph_spacing(ds: Dataset, spacing: Sequence[float], tag: str, magnification: float | None,
                        modality: str) -> None:
    _assign(ds, **{tag: list(spacing)})
    if magnification is not None:
        _assign(ds, EstimatedRadiographicMagnificationFactor=magnification)
    if modality == "DX" and tag == "PixelSpacing":
        _assign(ds, ImagerPixelSpacing=[s * (magnification or 1.0) for s in spacing],
                PixelSpacingCalibrationType="GEOMETRY",
                PixelSpacingCalibrationDescription="radiographic magnification of the phantom geometry")


def _dx_image(ds: Dataset, monochrome1: bool) -> None:
    """The DX Series, DX Anatomy Imaged, DX Image, DX Detector and DX Positioning attributes."""
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ImageLaterality = "U"
    ds.AnatomicRegionSequence = _code(HEAD)
    ds.ViewCodeSequence = _code(ANTERO_POSTERIOR)
    ds.AcquisitionContextSequence = DicomSequence([])
    # stored values rise with attenuation (MONOCHROME2) or fall with it (MONOCHROME1)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1 if monochrome1 else -1
    ds.PresentationLUTShape = "INVERSE" if monochrome1 else "IDENTITY"
    ds.BurnedInAnnotation, ds.LossyImageCompression = "NO", "00"
    ds.DetectorType, ds.PositionerType = "SCINTILLATOR", "COLUMN"


def new_ids(patient_id: str, description: str, series_number: int, study_uid: str | None = None,
            frame_of_reference: str | None = None) -> dict[str, str]:
    """Fresh UIDs for a series (sharing ``study_uid``/``frame_of_reference`` when given)."""
    study = study_uid or generate_uid()
    return {"patient_id": patient_id, "description": description, "series_number": str(series_number),
            "study_uid": study, "series_uid": generate_uid(),
            "frame_of_reference": frame_of_reference or generate_uid()}
