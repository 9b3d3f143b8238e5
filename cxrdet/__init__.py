"""cxrdet: detect and localise thoracic abnormalities on chest X-rays (VinBigData / VinDr-CXR)."""

import os

# albumentations asks the internet for a newer version on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
