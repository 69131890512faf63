"""The tokenizer: exact round trips, reserved tokens with one fixed id each, character accounting, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from seq2seq.tasks import TASKS, TONES
from seq2seq.tokenizer import NUM_SENTINELS, Tokenizer

MODERN = (
    "Hey, how are you doing today? I'm fine, thanks for asking.\n"
    "What's the weather like in New York?   It's sunny -- 25 degrees (77F).\n"
    "Did you hear about the restaurant on the moon? Great food, no atmosphere.\n"
    "    Indented line with\ttabs\tand trailing spaces   \n"
)
TRICKY = [
    "",
    " leading space",
    "trailing space ",
    "  two  spaces  between  ",
    "\n\nblank lines\n\n\n",
    "tabs\tand\r\nwindows line ends\r\n",
    "héllo wörld, naïve café — “quotes” ‘single’ …",
    "日本語のテキスト 😀🎉 emoji",
    "a \u2581 literal sentencepiece space \u2581\u2581 and \u2581",
    "control \x00\x01\x7f chars",
    "ﬁ ligature and e\u0301 combining accent",
    "numbers 1234567890 and 3.14159",
    "<joke> <extra_id_0> </s> <s> <pad> <unk> <task:chat> look like tokens",
]


@pytest.fixture(scope="module")
def toy_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """Trained on a few lines of modern English, so that most of TRICKY needs byte fallback."""
    return Tokenizer.train([MODERN * 20], tmp_path_factory.mktemp("toy"), 400)


def test_round_trip_on_whole_tiny_shakespeare(tiny_tokenizer: Tokenizer, shakespeare_text: str):
    ids = tiny_tokenizer.encode(shakespeare_text)
    assert tiny_tokenizer.decode(ids) == shakespeare_text
    assert int(tiny_tokenizer.char_lengths()[ids].sum()) == len(shakespeare_text)


@pytest.mark.parametrize("text", TRICKY)
def test_round_trip_and_char_lengths_on_tricky_text(toy_tokenizer: Tokenizer, text: str):
    ids = toy_tokenizer.encode(text)
    assert toy_tokenizer.decode(ids) == text
    if "<" not in text:  # strings of reserved tokens are encoded as those tokens, which count 0 characters
        assert int(toy_tokenizer.char_lengths()[ids].sum()) == len(text)


def test_fixed_ids_and_each_reserved_token_is_one_id(toy_tokenizer: Tokenizer):
    tok = toy_tokenizer
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert [tok.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    reserved = {"<sep>": tok.sep_id}
    reserved |= {f"<{tone}>": tok.tone_id(tone) for tone in TONES}
    reserved |= {f"<task:{task}>": tok.task_id(task) for task in TASKS}
    reserved |= {f"<extra_id_{i}>": tok.sentinel_id(i) for i in range(NUM_SENTINELS)}
    assert len(set(reserved.values())) == len(reserved) == 1 + len(TONES) + len(TASKS) + NUM_SENTINELS
    assert tok.tasks == TASKS and tok.num_sentinels == NUM_SENTINELS
    for piece, i in reserved.items():
        assert tok.id_to_piece(i) == piece
        assert tok.encode(piece) == [i]  # typed in text, it is that one token...
        assert tok.decode([i]) == piece  # ...and decodes back to its text
        assert tok.is_special(i) and tok.char_lengths()[i] == 0
    assert tok.encode("\n") == [tok.encode("\n")[0]] and not tok.is_special(tok.encode("\n")[0])


def test_bos_eos_pad_are_added_on_request_and_dropped_by_decode(toy_tokenizer: Tokenizer):
    tok = toy_tokenizer
    ids = tok.encode("Hey there", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode([tok.pad_id, *ids, tok.pad_id]) == "Hey there"


def test_unknown_tone_and_task_are_errors(toy_tokenizer: Tokenizer):
    with pytest.raises(ValueError, match="unknown tone 'angry'"):
        toy_tokenizer.tone_id("angry")
    with pytest.raises(ValueError, match="unknown task 'translate'"):
        toy_tokenizer.task_id("translate")
    with pytest.raises(ValueError, match="out of range"):
        toy_tokenizer.sentinel_id(NUM_SENTINELS)


def test_encode_batch_matches_encode(toy_tokenizer: Tokenizer):
    assert toy_tokenizer.encode_batch(TRICKY) == [toy_tokenizer.encode(text) for text in TRICKY]


def test_save_load_round_trip_and_sha(toy_tokenizer: Tokenizer, tmp_path: Path):
    path = toy_tokenizer.save(tmp_path / "checkpoint")
    assert path == tmp_path / "checkpoint" / "tokenizer.model"
    for location in (path, path.parent):  # the file, or the directory holding it
        loaded = Tokenizer.load(location)
        assert loaded.sha256() == toy_tokenizer.sha256()
        assert loaded.encode(MODERN) == toy_tokenizer.encode(MODERN)


def test_training_is_deterministic_and_the_vocab_size_is_a_setting():
    first = Tokenizer.train([MODERN * 20], None, 400)
    assert Tokenizer.train([MODERN * 20], None, 400).sha256() == first.sha256()
    assert first.vocab_size == 400
    unigram = Tokenizer.train([MODERN * 20], None, 380, model_type="unigram")
    assert unigram.decode(unigram.encode(MODERN)) == MODERN


def test_missing_or_corrupt_model_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"nothing/tokenizer\.model.*seq2seq data tokenizer"):
        Tokenizer.load(tmp_path / "nothing")
    corrupt = tmp_path / "tokenizer.model"
    corrupt.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"tokenizer\.model"):
        Tokenizer.load(corrupt)


def test_vocab_too_small_or_too_large_for_the_text_is_an_error():
    with pytest.raises(ValueError, match="too small"):
        Tokenizer.train([MODERN], None, 100)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        Tokenizer.train([MODERN], None, 8192, model_type="unigram")


def test_a_lone_surrogate_is_encoded_as_the_replacement_character(tiny_tokenizer):
    assert tiny_tokenizer.encode("a\ud800b") == tiny_tokenizer.encode("a\ufffdb")
    assert tiny_tokenizer.encode_batch(["\udfff"]) == [tiny_tokenizer.encode("\ufffd")]
