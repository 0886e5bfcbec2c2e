"""`python -m moai_export.train ...` (e.g. under torchrun): the same command as `moai-export train`."""

import sys

from ..commands.export_cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]], prog_name="python -m moai_export.train")
