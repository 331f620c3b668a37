"""`python -m harmonia` runs the command line."""

import sys

from harmonia.cli import main

if __name__ == "__main__":
    sys.exit(main())
