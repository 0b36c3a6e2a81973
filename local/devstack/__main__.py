"""``python -m devstack``: run the local stack (see devstack.stack)."""

import sys

from devstack.stack import main

sys.exit(main())
