"""python -m deploy.chaos: the nats-chaos command."""

import sys

from deploy.chaos.cli import main

sys.exit(main())
