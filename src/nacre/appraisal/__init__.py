"""Layer 4: appraisal of verified evidence. Accepts only :class:`VerifiedEvidence`."""

from __future__ import annotations

from nacre.appraisal.baseline import BaselinePolicy, appraise_baseline

__all__ = ["BaselinePolicy", "appraise_baseline"]
