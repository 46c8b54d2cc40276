"""The built-in synthetic multi-domain dataset: the default data of every study.

Small RGB images of K shape classes in a natural "photo" style and rendition
styles (sketch, clipart, painting, quickdraw), on backgrounds correlated with the
class; splits for training (with planted near-duplicates of test images), a
reference set (ImageNet-train's role) and test sets (with planted domain
contamination, common vs counter backgrounds). See :func:`generate`, :class:`Collection`,
:func:`summarize`, :func:`contact_sheet`. Tested in ``tests/unit/test_synth.py``.
"""

from clipaudit.synth.collection import COLLECTION_FILE, Collection, SplitInfo
from clipaudit.synth.generate import GENERATOR_VERSION, SAMPLE_FIELDS, GenerationReport, generate
from clipaudit.synth.presets import PRESETS, Preset, resolve_preset
from clipaudit.synth.preview import contact_sheet
from clipaudit.synth.render import DOMAINS, NATURAL_BACKGROUNDS, RENDITION_STYLES
from clipaudit.synth.shapes import ALL_CLASSES, DEFAULT_CLASSES
from clipaudit.synth.summary import format_summary, summarize

__all__ = [
    "generate", "GenerationReport", "Collection", "SplitInfo", "COLLECTION_FILE", "GENERATOR_VERSION",
    "SAMPLE_FIELDS", "Preset", "PRESETS", "resolve_preset", "summarize", "format_summary", "contact_sheet",
    "DOMAINS", "RENDITION_STYLES", "NATURAL_BACKGROUNDS", "ALL_CLASSES", "DEFAULT_CLASSES",
]
