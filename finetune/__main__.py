import sys

from finetune.recipe import main

sys.exit(main())
