"""Scores of generated videos (`svp eval`, a stage's `eval:` block): the curation scorers turned on a model's
output instead of its input.

`frames.py` needs no weights (temporal flickering, motion, imaging sanity, match to a conditioning image or
to the end of a continued clip);
`clip_metrics.py` needs local CLIP (and aesthetic-MLP) weights and is skipped with one line without them.
Every function takes frames as the generator returns them: (T, H, W, 3) uint8 RGB. This package is the one
door of curation that training may use besides `curation.format` (docs/architecture.md).
"""
