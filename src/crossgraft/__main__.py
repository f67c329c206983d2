import sys

from crossgraft.cli import main

sys.exit(main())
