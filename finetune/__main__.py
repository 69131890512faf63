"""`python -m finetune` is `seq2seq finetune`."""

import sys

from seq2seq.cli import main

sys.exit(main(["finetune", *sys.argv[1:]]))
