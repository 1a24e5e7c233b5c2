"""``python -m llmtune`` is the ``llmtune`` command."""

import sys

from llmtune.cli import main

sys.exit(main())
