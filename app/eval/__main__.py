"""`python -m app.eval`: see app.eval.cli."""

import sys

from app.eval.cli import main

sys.exit(main())
