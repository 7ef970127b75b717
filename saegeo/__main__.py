"""``python -m saegeo`` runs the command line."""

import sys

from saegeo.cli import main

sys.exit(main())
