import sys

from pretrain.recipe import main

sys.exit(main())
