"""`python -m desktop_agent ...`: the same command line as the `cortex-agent` console script.

Layering: the package's public entry point for processes started without the console script on PATH
(the server's `--demo` node, tests); it only hands over to desktop_agent.cli.
"""

import sys

from desktop_agent.cli import main

sys.exit(main())
