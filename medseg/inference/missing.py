"""Cases that lack a contrast: which channel subsets a model accepts, and the one-line refusal.

A model trained with channel dropout (``train.augment.channel_dropout_prob``) records the channel
subsets it was trained to accept in its artifact's metadata, ``input.accepted_subsets`` (a list of
channel-name lists, the full set first; an artifact without the key accepts only the full set).
Every reader that finds a case lacking a contrast — ``predict``'s dataset sources (a BraTS folder
without a file, a DICOM study without a series), ``medseg-predict``'s folder layouts — asks
:func:`missing_channel_policy` whether the model takes what is present; an accepted case is
predicted with the missing channels set to zero (their value after normalisation in training) and
marked ``missing_channels`` in ``predictions.json``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: the artifact metadata key (under ``input``) holding the accepted channel subsets
ACCEPTED_SUBSETS_KEY = "accepted_subsets"


@dataclass(frozen=True)
class ChannelPolicy:
    """What a model does with a case: ``missing`` channels (model order), whether it is
    ``accepted``, and the one-line ``message`` of a refusal (``None`` when accepted)."""

    missing: tuple[str, ...]
    accepted: bool
    message: str | None = None


def accepted_subsets(metadata: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The channel subsets an artifact accepts (its full channel list when it records none)."""
    inputs = metadata.get("input") or {}
    channels = tuple(str(c) for c in inputs.get("channels") or ())
    recorded = inputs.get(ACCEPTED_SUBSETS_KEY) or [channels]
    return [tuple(str(c) for c in s) for s in recorded]


def missing_channel_policy(artifact_metadata: Mapping[str, Any], present_channels: Sequence[str]) -> ChannelPolicy:
    """Whether a model accepts a case holding only ``present_channels``.

    Args:
        artifact_metadata: the artifact's ``metadata.json`` (``input.channels`` and
            ``input.accepted_subsets``).
        present_channels: the channels the case has (names as the model lists them; others are
            ignored).

    Returns:
        The :class:`ChannelPolicy`; a refusal's message names the missing contrasts and what the
        model was trained to accept.

    Example:
        >>> meta = {"input": {"channels": ["FLAIR", "T1w"], "accepted_subsets": [["FLAIR", "T1w"], ["FLAIR"]]}}
        >>> missing_channel_policy(meta, ["FLAIR"]).accepted
        True
        >>> missing_channel_policy(meta, ["T1w"]).message
        'lacks the contrast FLAIR; this model was trained only for cases missing T1w (input.accepted_subsets)'
    """
    channels = [str(c) for c in (artifact_metadata.get("input") or {}).get("channels") or ()]
    present = {str(c) for c in present_channels}
    missing = tuple(c for c in channels if c not in present)
    if not missing:
        return ChannelPolicy((), True)
    subsets = accepted_subsets(artifact_metadata)
    if any(set(s) == set(channels) - set(missing) for s in subsets):
        return ChannelPolicy(missing, True)
    trained = sorted({"+".join(c for c in channels if c not in s) for s in subsets} - {""})
    what = (f"for cases missing {' or '.join(trained)}" if trained else "for cases with every contrast")
    noun = "contrast" if len(missing) == 1 else "contrasts"
    return ChannelPolicy(missing, False, f"lacks the {noun} {', '.join(missing)}; this model was trained only "
                                         f"{what} (input.{ACCEPTED_SUBSETS_KEY})")
