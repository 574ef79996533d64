"""Answer normalisation of the official VQA evaluation (GT-Vision-Lab/VQA ``vqaEval.py``).

Re-implemented from the rules, quirks included (see ``shared/reference/scorers-and-tokenizer-facts.md``):

1. newlines and tabs become spaces, then the text is stripped;
2. (scorer only: answers are cleaned only when the ten are not all identical — not done here);
3. punctuation: each mark of :data:`PUNCTUATION` is deleted if the text has it next to a space or the
   text contains a ``digit,digit`` pattern anywhere, else replaced by a space; then periods not
   followed by a digit are removed, at most 32 of them (the official code passes ``re.UNICODE`` as
   the ``count`` argument of ``re.sub``);
4. words: lowercase, split on whitespace, number words ``none``/``zero``…``ten`` to digits, drop
   ``a``/``an``/``the``, apply the contractions table, join with single spaces.

BEiT-3 / ViLT build the answer vocabulary with the same rules (``glossary.normalize_word``, which skips
step 1 and ends with a no-op comma removal).
"""

from __future__ import annotations

import re

__all__ = [
    "ARTICLES",
    "CONTRACTIONS",
    "NUMBER_WORDS",
    "PUNCTUATION",
    "normalize_answer",
    "process_digit_article",
    "process_punctuation",
]

# The 2021 list: no apostrophe and no colon (older copies of vqaEval.py have both).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}

ARTICLES = frozenset({"a", "an", "the"})

# The official table, oddities kept: keys with capitals ("Im", "Ive", ...) never match because words
# are lower-cased first, and "somebody'd" maps to "somebodyd".
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've",
    "hasnt": "hasn't", "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've",
    "hes": "he's", "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't", "itd": "it'd", "itd've": "it'd've",
    "it'dve": "it'd've", "itll": "it'll", "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've", "mightve": "might've", "mustnt": "mustn't",
    "mustve": "must've", "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've",
    "twas": "'twas", "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've",
    "werent": "weren't", "whatll": "what'll", "whatre": "what're", "whats": "what's",
    "whatve": "what've", "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're",
    "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've", "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've",
    "youll": "you'll", "youre": "you're", "youve": "you've",
}

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
# A period not followed by a digit. (The official pattern starts with "(?!<=\d)", a mistyped
# look-behind that is a look-ahead for the literal "<=" and so never excludes anything.)
_PERIOD = re.compile(r"\.(?!\d)")
# The official call is `periodStrip.sub("", text, re.UNICODE)`: re.UNICODE (== 32) lands in `count`.
_MAX_PERIODS_REMOVED = 32


def process_punctuation(text: str) -> str:
    """Step 3 of the official normaliser: punctuation marks and periods (case is kept)."""
    delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        # The adjacency test looks at the input text, not at the partly cleaned output (as upstream).
        if delete_all or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD.sub("", out, count=_MAX_PERIODS_REMOVED)


def process_digit_article(text: str) -> str:
    """Step 4 of the official normaliser: lowercase, number words, articles, contractions."""
    words = []
    for word in text.lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word not in ARTICLES:
            words.append(CONTRACTIONS.get(word, word))
    return " ".join(words)


def normalize_answer(text: str) -> str:
    """Normalise one VQA answer (ground truth or prediction) exactly as the official scorer does.

    Args:
        text: raw answer string.

    Returns:
        The normalised answer, e.g. ``"Two dogs."`` → ``"2 dogs"``, ``"1,000"`` → ``"1000"``.
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize_answer expects a str, got {type(text).__name__}: {text!r}")
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(text))
