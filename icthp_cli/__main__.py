import sys

from icthp_cli.main import main

sys.exit(main())
