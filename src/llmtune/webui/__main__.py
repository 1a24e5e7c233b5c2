"""``python -m llmtune.webui [--host H] [--port P] [--share]``: the same as ``llmtune webui``."""

import sys

from llmtune.cli import main

sys.exit(main(["webui", *sys.argv[1:]]))
