"""Text statistics: words, sentences, top words, reading time and a lexicon sentiment score.

Event: {"text": "...", "top": 5}
"""

import re
from collections import Counter

WORDS_PER_MINUTE = 238  # average silent reading speed of adults
WORD_RE = re.compile(r"[A-Za-z]+(?:'[A-Za-z]+)?")
SENTENCE_END_RE = re.compile(r"[.!?]+(?=\s|$)")

STOPWORDS = frozenset(
    """a an and are as at be been but by for from has have he her his i in is it its
    of on or our she so that the their them they this to was we were what when which
    who will with you your not no do does did can could would should than then there""".split()
)
POSITIVE = frozenset(
    """good great excellent amazing wonderful love loved like liked happy glad fast
    easy helpful clear nice best better enjoy enjoyed fantastic pleasant reliable
    success successful win improved improve impressive smooth delightful""".split()
)
NEGATIVE = frozenset(
    """bad poor terrible awful hate hated slow hard broken confusing sad angry worse
    worst fail failed failure bug bugs crash crashed annoying painful ugly wrong
    difficult frustrating problem problems""".split()
)
NEGATIONS = frozenset("not no never don't doesn't isn't wasn't aren't won't can't".split())


def sentiment(words):
    """Lexicon score in [-1, 1]; a negation just before a word flips it ("not good")."""
    hits, positive, negative = 0, [], []
    for i, word in enumerate(words):
        polarity = (word in POSITIVE) - (word in NEGATIVE)
        if not polarity:
            continue
        if i > 0 and words[i - 1] in NEGATIONS:
            polarity = -polarity
            word = f"{words[i - 1]} {word}"
        (positive if polarity > 0 else negative).append(word)
        hits += 1
    score = (len(positive) - len(negative)) / hits if hits else 0.0
    label = "positive" if score > 0.2 else "negative" if score < -0.2 else "neutral"
    return {"score": round(score, 3), "label": label, "positive": positive, "negative": negative}


def handler(event, context):
    text = event.get("text")
    if not isinstance(text, str):
        raise ValueError('event.text must be a string, e.g. {"text": "Hello world."}')
    top = int(event.get("top", 5))

    words = [w.lower() for w in WORD_RE.findall(text)]
    sentences = [s for s in SENTENCE_END_RE.split(text) if s.strip()]
    counts = Counter(w for w in words if w not in STOPWORDS and len(w) > 1)
    context.logger.info("tokenized", words=len(words), sentences=len(sentences))

    result = {
        "characters": len(text),
        "words": len(words),
        "unique_words": len(set(words)),
        "sentences": len(sentences),
        "avg_word_length": round(sum(map(len, words)) / len(words), 2) if words else 0,
        "avg_sentence_words": round(len(words) / len(sentences), 2) if sentences else 0,
        "reading_time_sec": round(len(words) / WORDS_PER_MINUTE * 60, 1),
        "top_words": [{"word": w, "count": c} for w, c in counts.most_common(top)],
        "sentiment": sentiment(words),
    }
    context.logger.info("sentiment", label=result["sentiment"]["label"], score=result["sentiment"]["score"])
    return result
