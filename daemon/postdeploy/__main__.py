"""`python -m postdeploy` is the `postdeploy` command."""

import sys

from postdeploy.cli import main

sys.exit(main())
