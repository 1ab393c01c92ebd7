"""`python -m safeguard_flow.cli`: the same as the `safeguard-flow` command."""

import sys

from safeguard_flow.cli.main import main

sys.exit(main())
