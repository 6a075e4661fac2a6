"""``python -m patchmix`` runs the command line."""

import sys

from patchmix.cli import main

sys.exit(main())
