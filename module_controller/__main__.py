"""`python -m module_controller ...`: the same as the `module-controller` command."""

import sys

from module_controller.cli import main

sys.exit(main())
