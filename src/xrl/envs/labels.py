"""Per-pixel ground-truth label maps ``(H, W)`` int8 at the model-input resolution.

DIGR (section 4.4) scores saliency against three kinds of pixels: those certainly important for
the decision, those certainly unimportant, and those whose role is uncertain (left out).
"""
IMPORTANT = 1
UNIMPORTANT = 0
EXCLUDED = -1
