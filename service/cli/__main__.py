"""``python -m service.cli``: what the ``sleep-cds`` script runs."""

import sys

from service.cli.main import main

sys.exit(main())
