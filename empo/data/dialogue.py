"""The data layer's leaf types: a dialogue, and the raw ED column layout (DESIGN §3)."""
from __future__ import annotations

from dataclasses import dataclass

ED_COLUMNS = ("conv_id", "utterance_idx", "context", "prompt", "speaker_idx", "utterance",
              "selfeval", "tags")
ED_HEADER = ",".join(ED_COLUMNS)

@dataclass(slots=True)
class Dialogue:
    """One conversation: turn 0 is the speaker ("user"), turns alternate with the listener."""

    conv_id: str
    emotion: str
    situation: str
    turns: list[str]
