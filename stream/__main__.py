"""``python -m stream`` runs the emostream command line."""

import sys

from stream.commands import entry

sys.exit(entry())
