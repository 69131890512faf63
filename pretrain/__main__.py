"""`python -m pretrain` is `seq2seq pretrain`."""

import sys

from seq2seq.cli import main

sys.exit(main(["pretrain", *sys.argv[1:]]))
