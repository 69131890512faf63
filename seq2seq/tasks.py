"""The tasks, tones and label words the model is trained and prompted with, and the questions that phrase them.
One place for all of them: the tokenizer reserves a marker per task and a token per tone from here, the data
pipelines build the mixture with these templates, and fine-tuning, `classify` and `eval` prompt with them.

A mixture example's `task` names the task marker the encoder input starts with; its tone token (what the encoder
sees after the marker) follows from the task and the example's labels (`tone_of`). Classification is text to
text: the response is a fixed label word, "yes" or "no", so a classifier scores log p("yes") against log p("no")
and the same decoder serves both.
"""

from __future__ import annotations

from typing import Any

TONES = ("plain", "joke", "sarcastic")  # each a reserved token, e.g. <plain>
AUTO_TONE = "auto"  # chat and serving: pick the tone from the classifiers' reading of the prompt

# Fine-tuning tasks (the `task` field of the mixture's JSONL) and the two pretraining objectives; each a reserved
# task marker, e.g. <task:chat>.
TASKS = (
    "chat",  # conversation context -> next turn; jokes_qa question -> punchline under the <joke> tone
    "speaker",  # Shakespeare: a scene and a line in it -> who says it
    "next_turn",  # Shakespeare: one speaker's turn -> the reply that follows
    "continue",  # Shakespeare: a passage -> the lines that follow
    "headline",  # a few keywords -> a headline, under the <plain> or <sarcastic> tone
    "is_joke",  # text -> "yes" / "no"
    "is_sarcastic",  # headline -> "yes" / "no"
    "prefix_lm",  # pretraining: a prefix of a document -> its continuation
    "span_corruption",  # pretraining: T5 span corruption with sentinels
)
CHAT_TASK = "chat"
PRETRAINING_TASK = "prefix_lm"  # a pretrained-only checkpoint continues whatever text follows this marker
SPAN_CORRUPTION_TASK = "span_corruption"

LABELS = ("joke", "sarcasm")  # the labels an example carries (true, false or null)
LABEL_WORDS = {True: "yes", False: "no"}  # a classification example's response
# Classifier name (a label) -> its classification task.
CLASSIFIERS = {"joke": "is_joke", "sarcasm": "is_sarcastic"}
CLASSIFICATION_TASKS = {task: label for label, task in CLASSIFIERS.items()}
# Tasks whose responses come from a small closed set (label words, speaker names): a response shared between
# train and test is expected there and is not leakage.
CLOSED_RESPONSE_TASKS = frozenset({*CLASSIFICATION_TASKS, "speaker"})

# The questions each classification and Shakespeare task is phrased with ({text}, {line}, ... are filled in).
# A checkpoint's classifiers phrase a text as the first question of their task does.
IS_JOKE_QUESTIONS = (
    "Is this a joke? {text}",
    "Is the following meant to be funny?\n{text}",
    "Joke or not? Answer yes or no.\n{text}",
    "Would you call this a joke: {text}",
)
IS_SARCASTIC_QUESTIONS = (
    "Is this headline sarcastic? {text}",
    "Is the following headline meant sarcastically?\n{text}",
    "Sarcastic or not? Answer yes or no.\n{text}",
    "Would you call this headline sarcastic: {text}",
)
CLASSIFIER_QUESTIONS = {"is_joke": IS_JOKE_QUESTIONS, "is_sarcastic": IS_SARCASTIC_QUESTIONS}
SPEAKER_QUESTIONS = (
    "Who says: '{line}'?",
    'Which character says "{line}"?',
    "Who speaks this line: {line}",
    'In the play, who said "{line}"?',
    "Name the speaker: {line}",
)
NEXT_TURN_QUESTIONS = (
    "{speaker}:\n{speech}\n\nHow does {replier} reply?",
    "Reply as {replier} would to {speaker}:\n{speech}",
    '{speaker} says: "{speech}"\nWhat does {replier} answer?',
    "{speech}\n\nWhat is said next?",  # answered with "REPLIER:\n..." (data_pipelines/builders/shakespeare.py)
)


def tone_of(example: dict[str, Any]) -> str:
    """The tone token for a mixture example: classification is always <plain>; otherwise <sarcastic> if the
    response is sarcastic, <joke> if it is a joke, else <plain>."""
    if example["task"] in CLASSIFICATION_TASKS:
        return "plain"
    labels = example["labels"]
    if labels["sarcasm"] is True:
        return "sarcastic"
    if labels["joke"] is True:
        return "joke"
    return "plain"


def classifier_specs(tasks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The classifiers a model fine-tuned on the mixture has, for the task markers its tokenizer knows, as
    `inference.json` lists them (seq2seq.prompting.InferenceSpec)."""
    return {label: {"task": task, "tone": "plain", "template": CLASSIFIER_QUESTIONS[task][0],
                    "labels": {"true": LABEL_WORDS[True], "false": LABEL_WORDS[False]}}
            for label, task in CLASSIFIERS.items() if task in tasks}
