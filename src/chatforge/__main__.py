"""`python -m chatforge ...`: the same as the `chatforge` command; torchrun starts each rank this way (`-m chatforge`)."""

import sys

from chatforge.cli import main

if __name__ == "__main__":
    sys.exit(main())
