"""``python -m cxrdet <tool>``: the same as the ``cxrdet`` command."""

import sys

from cxrdet.cli import main

sys.exit(main())
