import sys

from jaxshape.convert.cli import main

sys.exit(main())
