"""Which MR contrast a DICOM series is, read from its acquisition, and cases lacking a contrast.

**Identification** (:func:`identify_study`). Each series of a study is given one of the four
contrasts of a brain-tumour study — FLAIR, T1, T1 post-contrast, T2 — from its DICOM attributes
first, its SeriesDescription second:

- *not an input*: ImageType marks a localiser (``LOCALIZER``), a derived image (value 1
  ``DERIVED``) or a projection/reformat (``PROJECTION IMAGE``, ``MIP``, ``MPR``, ...); or the
  SeriesDescription names a localiser where ImageType does not (GE writes ``ORIGINAL\\PRIMARY\\OTHER``
  for ``3-PLANE LOC``, ``FAST LOCALIZER``, ``T/S/C RF FAST PILOT``; Philips ``Survey``, Siemens
  ``AAHead_Scout``), :data:`LOCALISER_DESCRIPTION`;
- *weighting*: enhanced MR's AcquisitionContrast (``FLUID_ATTENUATED``, ``T1``, ``T2``) when
  present; else an inversion-recovery sequence (``IR`` in ScanningSequence, or InversionRecovery
  ``YES``) with InversionTime >= 1500 ms is FLAIR (fluid nulled), 300-1500 ms is T1 (MPRAGE-like
  preparation), <= 300 ms is STIR (not an input); else RepetitionTime/EchoTime: TR < 1000 and
  TE < 30 ms is T1 (a gradient echo with TE >= 15 ms is T2*, not an input), TR >= 2000 and
  TE >= 60 ms is T2, TR >= 2000 and TE < 30 ms is proton density (not an input);
- *post-contrast* (T1 only): the series records ContrastBolusAgent (or ContrastBolusRoute); or it
  was acquired (SeriesTime, then SeriesNumber) after the first series of the study that records
  one; a series acquired before it is pre-contrast. When no series of the study records an agent,
  the description decides (a T1 is post-contrast only if its description matches the post-contrast
  channel's pattern);
- *description*: the channel patterns (``data.series_patterns``) only break ties between series of
  the same contrast, and name the contrast of a series whose attributes are inconclusive (no
  TR/TE); a description contradicting the attributes is noted and ignored.

The mapping file (``data.series_mapping``) overrides all of this for the channels it names (the
others are identified among the series it leaves). Every chosen series carries its
reasons (the attributes that decided); two series left for one channel are reported naming both
and the attributes that tie them.

**Missing contrasts**. A case may lack a channel (a study without that series, a BraTS folder
without that file): :func:`stand_in` keeps the grid of a present channel in its slot and
:func:`zero_channels` zeroes it once loaded — the value that a dropped channel has after
normalisation in training (:mod:`medseg.data.augment`) and that the predictor feeds.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.data.io.dicom import SeriesInfo

if TYPE_CHECKING:
    from medseg.data.sources.base import CaseRef


class Contrast(str, Enum):
    """The contrasts a channel can be."""

    flair = "FLAIR"
    t1 = "T1"
    t1_post = "T1 post-contrast"
    t2 = "T2"


#: channel names (lower case, without ``_``/``-``) -> contrast, for BraTS/MSD/nnU-Net namings
CHANNEL_CONTRASTS: dict[str, Contrast] = {
    **dict.fromkeys(("flair", "t2f", "t2flair"), Contrast.flair),
    **dict.fromkeys(("t1", "t1w", "t1n", "t1pre", "t1native"), Contrast.t1),
    **dict.fromkeys(("t1gd", "t1ce", "t1c", "t1post", "t1gad", "t1+c", "t1wgd", "t1wce"), Contrast.t1_post),
    **dict.fromkeys(("t2", "t2w"), Contrast.t2),
}
#: ImageType values of series that are not acquisitions of a contrast
NOT_INPUT_TYPES = {"LOCALIZER": "a localiser", "PROJECTION IMAGE": "a projection image", "MIP": "a projection (MIP)",
                   "MNIP": "a projection (MinIP)", "MPR": "a reformat (MPR)", "REFORMATTED": "a reformat"}
#: SeriesDescriptions of localiser (scout, survey, pilot) series, whatever their ImageType says
LOCALISER_DESCRIPTION = re.compile(r"locali[sz]er|scout|survey|pilot|(?<![a-z])loc(?![a-z])", re.IGNORECASE)
_ACQUISITION_CONTRAST = {"FLUID_ATTENUATED": "FLAIR", "T1": "T1", "T2": "T2", "PROTON_DENSITY": "PD"}
_NO_AGENT = {"", "NONE", "NO", "N/A", "NA", "0"}


def channel_contrast(channel: str) -> Contrast | None:
    """The contrast a channel name stands for (``None``: not one of the four; matched by pattern only)."""
    return CHANNEL_CONTRASTS.get(re.sub(r"[_\-\s]", "", channel.lower()))


@dataclass
class SeriesContrast:
    """What a series was identified as, and why."""

    series: SeriesInfo
    channel: str | None = None
    contrast: str | None = None
    reasons: list[str] = field(default_factory=list)
    hint: list[str] = field(default_factory=list)

    def label(self) -> str:
        """``series N 'description' (UID)``."""
        return f"series {self.series.series_number} {self.series.description!r} ({self.series.series_uid})"

    def explain(self) -> str:
        """The series and the attributes that identified it."""
        return f"{self.label()}: {self.contrast or 'not identified'} ({'; '.join(self.reasons)})"


def _fmt(value: float | None) -> str:
    return "absent" if value is None else f"{value:g}"


def not_an_input(a: Mapping[str, Any]) -> str | None:
    """Why a series is no contrast acquisition (from ImageType), or ``None``."""
    types = list(a.get("ImageType") or [])
    shown = "\\".join(types)
    for value, what in NOT_INPUT_TYPES.items():
        if value in types:
            return f"ImageType {shown}: {what}"
    if types and types[0] == "DERIVED":
        return f"ImageType {shown}: a derived image"
    return None


def weighting(a: Mapping[str, Any]) -> tuple[str | None, list[str]]:
    """``(FLAIR | T1 | T2 | PD | STIR | T2* | None, reasons)`` from the acquisition attributes."""
    enhanced = _ACQUISITION_CONTRAST.get(str(a.get("AcquisitionContrast") or ""))
    if enhanced:
        return enhanced, [f"AcquisitionContrast {a['AcquisitionContrast']}"]
    tr, te, ti = a.get("RepetitionTime"), a.get("EchoTime"), a.get("InversionTime")
    seq = "\\".join(a.get("ScanningSequence") or []) or "absent"
    inversion = "IR" in (a.get("ScanningSequence") or []) or a.get("InversionRecovery") == "YES"
    if inversion and ti:
        why = f"inversion recovery (ScanningSequence {seq}) with InversionTime {ti:g} ms"
        if ti >= 1500:
            return "FLAIR", [f"{why} >= 1500 (fluid nulled)"]
        if ti <= 300:
            return "STIR", [f"{why} <= 300 (fat nulled)"]
        return "T1", [f"{why} in 300-1500 (T1 preparation)"]
    if tr is None or te is None:
        return None, [f"RepetitionTime {_fmt(tr)}, EchoTime {_fmt(te)}: the weighting is unknown"]
    times = f"RepetitionTime {tr:g} ms, EchoTime {te:g} ms"
    gradient = "GR" in (a.get("ScanningSequence") or []) or a.get("EchoPulseSequence") == "GRADIENT"
    if gradient and te >= 15:
        return "T2*", [f"gradient echo (ScanningSequence {seq}) with {times} (TE >= 15)"]
    if tr < 1000 and te < 30:
        return "T1", [f"ScanningSequence {seq}, {times} (TR < 1000, TE < 30)"]
    if tr >= 2000 and te >= 60:
        return "T2", [f"ScanningSequence {seq}, {times} (TR >= 2000, TE >= 60)"]
    if tr >= 2000 and te < 30:
        return "PD", [f"ScanningSequence {seq}, {times} (TR >= 2000, TE < 30: proton density)"]
    return None, [f"ScanningSequence {seq}, {times}: between the T1, T2 and PD ranges"]


def _agent(a: Mapping[str, Any]) -> str | None:
    for key in ("ContrastBolusAgent", "ContrastBolusRoute"):
        value = str(a.get(key) or "").strip()
        if value.upper() not in _NO_AGENT:
            return f"{key} {value!r}"
    return None


def _order(s: SeriesInfo) -> tuple[str, int]:
    return str(s.acquisition.get("SeriesTime") or ""), s.series_number


def post_contrast(s: SeriesInfo, members: Sequence[SeriesInfo]) -> tuple[bool | None, str]:
    """Whether ``s`` was acquired after a contrast agent (``None``: the study records no agent)."""
    own = _agent(s.acquisition)
    if own:
        return True, own
    agents = sorted((m for m in members if _agent(m.acquisition)), key=_order)
    if not agents:
        return None, "no series of the study records ContrastBolusAgent"
    first = agents[0]
    when = "SeriesTime, then SeriesNumber"
    where = f"series {first.series_number} {first.description!r}, the first to record {_agent(first.acquisition)}"
    if _order(s) > _order(first):
        return True, f"acquired after {where} ({when})"
    return False, f"acquired before {where} ({when})"


def _contrast_of(s: SeriesInfo, members: Sequence[SeriesInfo], post_hint: bool) -> tuple[str | None, list[str]]:
    """The contrast of one series from its attributes (``None`` with the reasons when there is none)."""
    skip = not_an_input(s.acquisition)
    if skip:
        return None, [skip]
    described = str(s.acquisition.get("SeriesDescription") or "")  # never ProtocolName: one for every series
    if LOCALISER_DESCRIPTION.search(described):
        return None, [f"SeriesDescription {described!r}: a localiser"]
    if s.modality and s.modality != "MR":
        return None, [f"Modality {s.modality}: not MR"]
    weight, reasons = weighting(s.acquisition)
    if weight in ("FLAIR", "T2"):
        return Contrast(weight).value, reasons
    if weight != "T1":
        return None, reasons + ([f"{weight}: not one of the input contrasts"] if weight else [])
    post, why = post_contrast(s, members)
    if post is None:
        post = post_hint
        why += "; the description " + ("says" if post else "does not say") + " post-contrast"
    return (Contrast.t1_post if post else Contrast.t1).value, reasons + [why]


def identify_series(members: Sequence[SeriesInfo], channels: Sequence[str],
                    patterns: Mapping[str, re.Pattern[str]]) -> list[SeriesContrast]:
    """Identify every series of one study as one of ``channels`` (or none), with the reasons."""
    kinds = {c: channel_contrast(c) for c in channels}
    post_channels = [c for c in channels if kinds[c] == Contrast.t1_post]
    out = []
    for s in members:
        hint = [c for c in channels if patterns[c].search(s.description)]
        contrast, reasons = _contrast_of(s, members, any(c in hint for c in post_channels))
        channel = next((c for c in channels if kinds[c] is not None and kinds[c].value == contrast), None)
        if contrast is None and not not_an_input(s.acquisition) and reasons and "weighting is unknown" in reasons[0]:
            channel = next((c for c in hint if kinds[c] is not None), None)  # attributes inconclusive
            if channel is not None:
                contrast = kinds[channel].value
                reasons = reasons + [f"SeriesDescription {s.description!r} matches {patterns[channel].pattern!r}"]
        if channel is None and contrast is None and len(hint) == 1 and kinds[hint[0]] is None:
            channel, contrast = hint[0], hint[0]  # a channel that is not one of the four: by pattern
            reasons = [f"SeriesDescription {s.description!r} matches {patterns[channel].pattern!r}"]
        elif channel is not None and s.description:
            reasons = reasons + [_hint_note(s.description, channel, hint)]
        out.append(SeriesContrast(s, channel, contrast, reasons, hint))
    return out


def _hint_note(description: str, channel: str, hint: Sequence[str]) -> str:
    if channel in hint:
        return f"SeriesDescription {description!r} agrees"
    if hint:
        return f"SeriesDescription {description!r} suggests {hint} (ignored: the attributes decide)"
    return f"SeriesDescription {description!r} matches no channel pattern"


def choose(identified: Sequence[SeriesContrast], channel: str) -> tuple[SeriesContrast | None, str | None]:
    """The one series for ``channel``: ``(series, None)``, or ``(None, why not)``.

    Several candidates are narrowed to those whose description matches the channel's pattern;
    if more than one is left the reason names them all and what ties them.
    """
    cands = [x for x in identified if x.channel == channel]
    if len(cands) > 1:
        agreeing = [x for x in cands if channel in x.hint]
        if agreeing:
            cands = agreeing
    if len(cands) == 1:
        return cands[0], None
    if not cands:
        return None, "no series is identified as it"
    hint = ("each description matches the channel pattern" if all(channel in x.hint for x in cands)
            else "no description matches the channel pattern")
    tie = f"all identified as {cands[0].contrast} from their acquisition attributes, and {hint}"
    return None, (f"{len(cands)} series are candidates ({tie}): " + "; ".join(x.explain() for x in cands)
                  + "; name one in data.series_mapping")


def identification_record(channel: str, x: SeriesContrast) -> tuple[str, str, int, str, tuple[str, ...]]:
    """The :attr:`CaseRef.identification` entry of a chosen series."""
    return channel, x.series.series_uid, x.series.series_number, x.series.description, tuple(x.reasons)


def identification_json(ref: CaseRef) -> dict[str, dict[str, Any]]:
    """``{channel: {series_uid, series_number, description, reasons}}`` of a DICOM case."""
    return {c: {"series_uid": uid, "series_number": n, "description": d, "reasons": list(r)}
            for c, uid, n, d, r in ref.identification}


def stand_in(ref: CaseRef, channels: Sequence[str], missing: Sequence[str]) -> CaseRef:
    """``ref`` with each ``missing`` channel's files replaced by the first present channel's (its
    grid only is used: :func:`zero_channels` zeroes the channel once loaded).

    Works for one file per channel (``images``) and one series per channel (``series``).
    """
    idx = [channels.index(c) for c in missing]
    present = next(i for i in range(len(channels)) if i not in idx)
    if ref.series:
        series = tuple(ref.series[present] if i in idx else g for i, g in enumerate(ref.series))
        return replace(ref, series=series, images=tuple(f for g in series for f in g), missing=tuple(missing))
    images = tuple(ref.images[present] if i in idx else f for i, f in enumerate(ref.images))
    return replace(ref, images=images, missing=tuple(missing))


def missing_files(ref: CaseRef, channels: Sequence[str]) -> list[str]:
    """Channels whose file (one file per channel) or series (DICOM) the case lacks."""
    if ref.missing:
        return list(ref.missing)
    if ref.series:
        return [c for c, g in zip(channels, ref.series) if not g]
    if len(ref.images) == len(channels) > 1:
        return [c for c, f in zip(channels, ref.images) if not f.exists()]
    return []


def zero_channels(image: np.ndarray, channels: Sequence[str], missing: Sequence[str]) -> np.ndarray:
    """Set the ``missing`` channels of a ``(C, ...)`` image to zero (in place; returned)."""
    for c in missing:
        image[list(channels).index(c)] = 0.0
    return image
