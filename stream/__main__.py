"""``python -m stream`` runs the emostream command line."""

import sys

from stream.cli import main

sys.exit(main())
