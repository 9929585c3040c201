"""`python -m nncaption ...` runs the command line, the same as the `nncaption` script in the venv."""

import sys

from nncaption.cli import main

sys.exit(main())
