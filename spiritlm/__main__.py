"""``python -m spiritlm ...``: the same as the ``spiritlm`` console script."""

import sys

from spiritlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
