"""`python -m mailsvc` is the `mailsvc` command."""

import sys

from mailsvc.cli import main

sys.exit(main())
