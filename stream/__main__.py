"""``python -m stream`` runs the emostream command line."""

import sys

from stream.cli import entry

sys.exit(entry())
