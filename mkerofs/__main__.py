import sys

from .cli.mkfs import main

sys.exit(main())
