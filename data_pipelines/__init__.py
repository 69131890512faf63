"""Data pipelines behind `seq2seq data ...` (see docs/data.md).

- `sources`: the raw datasets, their sha256 and licences, and `fetch` (local copy or download).
- `records`, `readers`: reading raw files with one bad-input policy; typed items that carry their split.
- `splits`: nanoGPT's Tiny Shakespeare split and the hash split shared with the data's SOURCE.md rule.
- `tokenizer_training`: `seq2seq data tokenizer` (the tokenizer itself is `seq2seq.tokenizer`).
- `corpus`: `seq2seq data corpus`, pretraining token arrays; `load_corpus`.
- `schema`, `builders`, `mixture`: `seq2seq data build`, the fine-tuning JSONL; `load_mixture`.
- `offensive`: the word-list filter for joke and sarcasm texts (`offensive_words.txt`).
"""
