"""A small seeded English grammar for the demo corpus and the mini-benchmarks built from it.

    g = Grammar(seed=0)
    g.sentence()                 # 'The small dog sleeps near the river.'
    g.minimal_pair()             # MinimalPair(good=..., bad=..., phenomenon='sv_agreement')
    g.nonword(), g.wuggy_pair()  # 'bloat...' / ('garden', 'gorden')       -> mini-sWUGGY
    g.story()                    # Story: 4 context sentences, coherent + incoherent endings
    g.sentiment_sentence("negative")  # SentimentSentence(text, label)     -> mini sentiment
    LEXICON                      # every word form the grammar can produce (lowercase)

Design for the benchmarks:

* minimal pairs (mini-sBLIMP): agreement (subject-verb, across an attractor, determiner-noun,
  reflexive), argument structure and word order; ``bad`` is ungrammatical by construction.
* non-words (mini-sWUGGY) are never in :data:`LEXICON` nor in a list of common English words;
  :meth:`Grammar.wuggy_pair` mutates one vowel group or the onset of a real word, like Wuggy.
* stories (mini-StoryCloze / Topic-StoryCloze): each topic has a fixed cast (a character, a
  friend or relative, a place, an object) that recurs in all 5 sentences; sentence 4 decides the
  arc (``good``/``bad``) and the coherent ending follows that arc. ``wrong_ending`` is the other
  arc's ending of the same topic (same entities, contradicts sentence 4); ``other_topic_ending``
  is an ending of a different topic with the same character.
* sentiment sentences are built from polar lexicon words; :func:`sentiment_of` re-derives the
  label from the lexicon alone.

Held-out material: :func:`split_of` hashes a document's normalised text; about
``heldout_fraction`` of all possible documents are "heldout". The text corpus never contains a
heldout document, so a benchmark built only from heldout items is unseen in training. Story and
single-sentence templates are disjoint, so a story never contains a benchmark sentence either.
"""

from __future__ import annotations

import functools
import hashlib
import random
import re
from pathlib import Path
from dataclasses import dataclass

from spiritlm.corpus import lexicon as L

GRAMMAR_VERSION = 2  # 2: non-words are also checked against the CMU dictionary
SENTIMENT_LABELS = ("positive", "negative", "neutral")
PHENOMENA = ("sv_agreement", "attractor_agreement", "det_noun_agreement", "anaphor_agreement",
             "argument_structure", "word_order")

_WORD_RE = re.compile(r"[A-Za-z]+")


def words_of(text: str) -> list[str]:
    """The word tokens of a text (letters only; punctuation dropped, case kept)."""
    return _WORD_RE.findall(text)


def normalize(text: str) -> str:
    return " ".join(w.lower() for w in words_of(text))


def split_of(text: str, heldout_fraction: float = 0.1) -> str:
    """'heldout' for a fixed pseudo-random ``heldout_fraction`` of documents, else 'train'."""
    h = hashlib.blake2b(normalize(text).encode(), digest_size=8).digest()
    return "heldout" if int.from_bytes(h, "big") / 2.0**64 < heldout_fraction else "train"


@dataclass(frozen=True)
class MinimalPair:
    good: str
    bad: str
    phenomenon: str


@dataclass(frozen=True)
class SentimentSentence:
    text: str
    label: str


@dataclass(frozen=True)
class Story:
    topic: str
    arc: str  # "good" or "bad": decided by context sentence 4
    character: str
    context: tuple[str, ...]  # 4 sentences
    ending: str  # coherent
    wrong_ending: str  # same topic and entities, opposite arc
    other_topic: str
    other_topic_ending: str  # another topic's ending, same character

    @property
    def text(self) -> str:
        return " ".join(self.context + (self.ending,))

    @property
    def sentences(self) -> tuple[str, ...]:
        return self.context + (self.ending,)


# --- stories ------------------------------------------------------------------------------
# Slots: {N} name, {he}/{He} pronoun, {his}/{His}, {him}, {F} friend's name, {R} relative,
# {P} place, {O} object, {A} animal, {C} color, {D} day, {X} food, {Fr} fruits, {S} sport,
# {Sub} school subject, {Rm} room, {Fu} furniture. Each entry lists template variants.
TOPICS: dict[str, dict] = {
    "lost_pet": dict(
        ctx=(("{N} had a little {A} that lived in the garden.", "{N} had a small {A} at home."),
             ("One {D} the {A} ran away from the house.", "One morning the {A} was not in the garden."),
             ("{N} looked for the {A} near the {P}.", "{He} searched for the {A} all around the {P}.")),
        good=("After a long time {he} heard the {A} behind a tree.", "Then {he} saw the {A} sitting near the {P}."),
        bad=("{He} looked all day but the {A} was gone.", "It got dark and {he} could not find the {A}."),
        end_good=("{N} was very happy to bring the {A} home.", "{N} hugged the {A} and carried it home."),
        end_bad=("{N} went home alone and cried.", "{N} was very sad without the {A}.")),
    "baking": dict(
        ctx=(("{N} wanted to bake a cake for {F}.", "{N} decided to make a cake for {F}."),
             ("{He} bought eggs and flour at the market.", "{He} got milk and sugar from the shop."),
             ("In the kitchen {he} mixed everything in a bowl.", "{He} put the cake in the oven.")),
        good=("The cake came out of the oven soft and sweet.", "The cake rose and smelled very good."),
        bad=("{He} forgot the cake and it burned in the oven.", "The oven was too hot and the cake burned."),
        end_good=("{F} ate the cake and thanked {N}.", "{F} loved the cake and asked for more."),
        end_bad=("{N} had to throw the black cake away.", "{N} threw the burned cake in the bin.")),
    "fishing": dict(
        ctx=(("{N} went fishing at the lake with {his} {R}.", "{N} and {his} {R} went to the river to fish."),
             ("They sat in a small boat.", "They sat on the bank with their rods."),
             ("They waited quietly for a long time.", "The water was calm and they waited.")),
        good=("Suddenly a big fish pulled on the line.", "At last {N} caught a big silver fish."),
        bad=("No fish came and it started to rain.", "The fish did not bite and a cold wind came."),
        end_good=("That evening they cooked the fish for dinner.", "They carried the fish home for dinner."),
        end_bad=("They went home wet and hungry.", "They went home with an empty bucket.")),
    "garden": dict(
        ctx=(("{N} planted {C} flowers in the garden.", "{N} put some seeds in the garden."),
             ("{His} {R} gave {him} a green watering can.", "{His} {R} showed {him} how to plant them."),
             ("The spring sun was warm.", "The seeds were small and brown.")),
        good=("Every day {he} gave the plants some water.", "{He} watered the plants every morning."),
        bad=("{He} forgot to water the plants.", "{He} never watered the plants at all."),
        end_good=("Soon the garden was full of {C} flowers.", "In summer the flowers were tall and bright."),
        end_bad=("The little plants dried up and died.", "The plants turned brown and died.")),
    "school_test": dict(
        ctx=(("{N} had a big test at school on {D}.", "On {D} {N} had an important test."),
             ("The test was about {Sub}.", "The teacher said the test was about {Sub}."),
             ("{F} asked {him} to play after school.", "{His} {R} asked about the test.")),
        good=("{He} studied every evening with {his} books.", "{He} read {his} books and studied hard."),
        bad=("{He} played games every evening and did not study.", "{He} watched television and never studied."),
        end_good=("{N} got the best grade in the class.", "{N} passed the test with a great grade."),
        end_bad=("{N} failed the test and felt ashamed.", "{N} got a bad grade on the test.")),
    "birthday": dict(
        ctx=(("It was the birthday of {N}.", "{N} was turning {Num} on {D}."),
             ("{He} invited {F} to a party at the {P}.", "{He} planned a party at the {P}."),
             ("{His} {R} made a big cake.", "{His} {R} hung balloons everywhere.")),
        good=("{F} came with a {C} present.", "All {his} friends came and sang for {him}."),
        bad=("It rained all day and the party was cancelled.", "Nobody came to the party at the {P}."),
        end_good=("{N} said it was the best birthday ever.", "{N} smiled and opened the present."),
        end_bad=("{N} sat alone at home and felt sad.", "{N} ate the cake alone and cried.")),
    "lost_object": dict(
        ctx=(("{N} could not find {his} {O} one morning.", "One day {N} lost {his} {O}."),
             ("{He} searched the {Rm} and the hall.", "{He} looked under the {Fu} in the {Rm}."),
             ("Then {he} asked {F} for help.", "{F} came to help {him} look.")),
        good=("{F} found the {O} under the {Fu}.", "At last they found the {O} behind the {Fu}."),
        bad=("They looked everywhere but the {O} was gone.", "They searched all day but found nothing."),
        end_good=("{N} thanked {F} with a big smile.", "{N} was glad to have the {O} back."),
        end_bad=("{N} had to buy a new {O}.", "{N} never saw the {O} again.")),
    "beach_trip": dict(
        ctx=(("{N} and {F} took the train to the beach.", "{N} went to the beach with {F}."),
             ("The sea was blue and the sand was warm.", "They brought a blanket and some sandwiches."),
             ("They swam and built a castle of sand.", "They played in the waves for hours.")),
        good=("In the evening they watched the sun go down.", "The sky stayed clear and the water was calm."),
        bad=("Then a storm came and they ran from the water.", "Suddenly dark clouds came and it began to pour."),
        end_good=("It was a perfect day at the sea.", "They went home tired and happy."),
        end_bad=("They took the first train home, cold and wet.", "They ran home cold and wet.")),
    "sports_match": dict(
        ctx=(("{N} played {S} for the village team.", "{N} was in the {S} team at school."),
             ("On {D} the team had a big match.", "The big match was on {D}."),
             ("{N} trained hard all week.", "{His} coach said {he} should play.")),
        good=("In the last minute {he} scored the winning point.", "{He} played well and scored twice."),
        bad=("{He} hurt {his} leg and could not play.", "{He} fell in the first minute and hurt {his} knee."),
        end_good=("The whole team cheered for {N}.", "The team won and carried {N} on their shoulders."),
        end_bad=("{N} watched the match from the bench.", "The team lost and {N} went home limping.")),
    "market_day": dict(
        ctx=(("{N} went to the market to buy {Fr}.", "On {D} {N} walked to the market for {Fr}."),
             ("{He} took {his} {C} basket.", "{His} {R} gave {him} some money."),
             ("The market was busy and loud.", "There were many stalls with fruit.")),
        good=("The seller gave {him} the best {Fr} for a good price.", "{He} found sweet {Fr} at the first stall."),
        bad=("On the way {he} lost all {his} money.", "Someone took {his} money in the crowd."),
        end_good=("{N} went home with a full basket.", "{N} made a fresh pie with the {Fr}."),
        end_bad=("{N} went home with an empty basket.", "{N} walked home without any {Fr}.")),
}


def _template_words() -> tuple[str, ...]:
    out: list[str] = []
    for spec in TOPICS.values():
        for key, val in spec.items():
            groups = val if key == "ctx" else (val,)
            for variants in groups:
                for t in variants:
                    out.extend(_WORD_RE.findall(re.sub(r"\{[A-Za-z]+\}", " ", t)))
    return tuple(out) + _SENTENCE_TEMPLATE_WORDS


_SENTENCE_TEMPLATE_WORDS = ("mirror", "there", "saw", "told", "about", "what", "it", "felt",
                            "after", "everyone", "put", "starts", "noon", "walked", "near",
                            "ate", "nobody", "enjoyed", "loved", "hated", "lunch", "dinner",
                            "morning", "evening", "night", "before", "is", "was", "are", "an")
LEXICON: frozenset[str] = L.lexicon_words(_template_words())
POSITIVE_WORDS = frozenset(w.lower() for w in L.flatten(L.ADJ_POSITIVE, L.VERB_POSITIVE, L.ADV_POSITIVE))
NEGATIVE_WORDS = frozenset(w.lower() for w in L.flatten(L.ADJ_NEGATIVE, L.VERB_NEGATIVE, L.ADV_NEGATIVE))


def sentiment_of(text: str) -> str:
    """Lexicon-based label: more positive than negative words -> 'positive', etc."""
    ws = [w.lower() for w in words_of(text)]
    score = sum(w in POSITIVE_WORDS for w in ws) - sum(w in NEGATIVE_WORDS for w in ws)
    return "positive" if score > 0 else "negative" if score < 0 else "neutral"


ONSETS = ("b", "bl", "br", "d", "dr", "f", "fl", "fr", "g", "gl", "gr", "h", "j", "k", "kl",
          "kr", "l", "m", "n", "p", "pl", "pr", "r", "s", "sl", "sm", "sn", "sp", "st", "t", "tr",
          "v", "w", "z", "sh", "ch", "th")
NUCLEI = ("a", "e", "i", "o", "u", "ee", "oo", "ai", "oa", "ou")
CODAS = ("", "", "", "b", "d", "g", "k", "l", "m", "n", "p", "t", "st", "nd", "nt", "mp", "sk",
         "ng", "sh", "ck")
_NONWORD_SOURCES = tuple(sorted({w for w in LEXICON if len(w) >= 4 and w.isalpha()}
                                - {n.lower() for n in L.NAMES_M + L.NAMES_F + L.DAYS}))


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _article(word: str) -> str:
    return "an" if word[0].lower() in "aeiou" else "a"


@functools.lru_cache(maxsize=1)
def _cmu_words() -> frozenset[str]:
    """Headwords of pocketsphinx's CMU pronouncing dictionary (a declared dependency)."""
    import pocketsphinx

    path = Path(pocketsphinx.get_model_path()) / "en-us" / "cmudict-en-us.dict"
    with open(path, encoding="utf-8") as f:
        return frozenset(line.split(" ", 1)[0].split("(", 1)[0].lower() for line in f if line.strip())


class Grammar:
    """Seeded generator. ``seed`` may be an int or a str (str seeds hash with SHA-512 in
    :class:`random.Random`, so they are stable across runs and ``PYTHONHASHSEED``)."""

    def __init__(self, seed: int | str = 0) -> None:
        self.rng = random.Random(seed)
        self.lexicon = LEXICON

    # -- helpers -------------------------------------------------------------------------
    def _c(self, seq):
        return self.rng.choice(seq)

    def _person(self) -> tuple[str, str]:
        """(name, gender) with gender 'm' or 'f'."""
        return (self._c(L.NAMES_M), "m") if self.rng.random() < 0.5 else (self._c(L.NAMES_F), "f")

    def _noun(self) -> tuple[str, str]:
        return self._c(self._c((L.ANIMALS, L.PEOPLE, L.OBJECTS)))

    def _np(self, plural: bool, adj_p: float = 0.4, noun=None) -> str:
        sg, pl = noun or self._noun()
        n = pl if plural else sg
        adj = self._c(L.ADJ_NEUTRAL + L.COLORS) + " " if self.rng.random() < adj_p else ""
        if plural:
            det = self._c(("the", "the", "some", "these", "those", self._c(L.NUMBERS)))
        else:
            det = self._c(("the", "the", "this", "that", _article(adj or n)))
        return f"{det} {adj}{n}"

    def _subject(self) -> tuple[str, bool]:
        r = self.rng.random()
        if r < 0.35:
            return self._person()[0], False
        if r < 0.45:
            return f"{self._person()[0]} and {self._person()[0]}", True
        plural = self.rng.random() < 0.4
        return self._np(plural, noun=self._c(L.ANIMALS + L.PEOPLE)), plural

    def _pp(self) -> str:
        return f"{self._c(L.PREPOSITIONS)} the {self._c(L.PLACES)}"

    def _finish(self, s: str, punct: str = ".") -> str:
        return _cap(s) + punct

    # -- sentences -----------------------------------------------------------------------
    def sentence(self) -> str:
        return self.tagged_sentence()[0]

    def tagged_sentence(self) -> tuple[str, str]:
        """(sentence, template name)."""
        t = self._c(("intrans", "trans", "past", "copula", "there", "adverb"))
        subj, pl = self._subject()
        if t == "intrans":
            v = self._c(L.VERB_INTRANS)[1 if pl else 0]
            s = f"{subj} {v} {self._pp()}"
        elif t == "trans":
            v = self._c(L.VERB_TRANS)[1 if pl else 0]
            s = f"{subj} {v} {self._np(self.rng.random() < 0.3)}"
            if self.rng.random() < 0.5:
                s += " " + self._pp()
        elif t == "past":
            if self.rng.random() < 0.5:
                s = f"{subj} {self._c(L.VERB_INTRANS)[2]} {self._pp()} {self._c(L.TIMES)}"
            else:
                s = f"{subj} {self._c(L.VERB_TRANS)[2]} {self._np(self.rng.random() < 0.3)} {self._c(L.TIMES)}"
        elif t == "copula":
            if self.rng.random() < 0.5:
                pl = self.rng.random() < 0.4
                np_ = self._np(pl, adj_p=0.0, noun=self._c(L.OBJECTS + L.ANIMALS))
                s = f"{np_} {'are' if pl else 'is'} {self._c(L.ADJ_NEUTRAL + L.COLORS)}"
            else:
                s = f"{subj} {'are' if pl else 'is'} {self._c(('in', 'near', 'at'))} the {self._c(L.PLACES)}"
        elif t == "there":
            if self.rng.random() < 0.5:
                n = self._c(L.OBJECTS + L.ANIMALS)[0]
                adj = self._c(L.COLORS + L.ADJ_NEUTRAL)
                s = f"there is {_article(adj)} {adj} {n} {self._c(('on', 'under', 'near'))} the {self._c(L.FURNITURE)}"
            else:
                s = f"there are {self._c(L.NUMBERS)} {self._c(L.OBJECTS + L.ANIMALS)[1]} in the {self._c(L.ROOMS)}"
        else:
            v = self._c(L.VERB_INTRANS)[1 if pl else 0]
            s = f"{subj} {v} {self._c(L.ADVERBS)} {self._pp()}"
        return self._finish(s), t

    def minimal_pair(self, phenomenon: str | None = None) -> MinimalPair:
        ph = phenomenon or self._c(PHENOMENA)
        rng = self.rng
        if ph == "sv_agreement":
            subj, pl = self._subject()
            v = self._c(L.VERB_INTRANS)
            tail = self._pp()
            good, bad = (f"{subj} {v[1 if pl else 0]} {tail}", f"{subj} {v[0 if pl else 1]} {tail}")
        elif ph == "attractor_agreement":
            head_pl = rng.random() < 0.5
            head, attr = self._c(L.ANIMALS + L.PEOPLE + L.OBJECTS), self._c(L.ANIMALS + L.PEOPLE + L.OBJECTS)
            h, a = head[1 if head_pl else 0], attr[0 if head_pl else 1]
            pre = f"the {h} near the {a}"
            adj = self._c(L.ADJ_NEUTRAL + L.COLORS)
            good, bad = (f"{pre} {'are' if head_pl else 'is'} {adj}", f"{pre} {'is' if head_pl else 'are'} {adj}")
        elif ph == "det_noun_agreement":
            name, v = self._person()[0], self._c(L.VERB_TRANS)[0]
            sg, pl = self._c(L.OBJECTS + L.ANIMALS)
            if rng.random() < 0.5:
                d_good, d_bad = self._c((("this", "these"), ("that", "those")))
                good, bad = f"{name} {v} {d_good} {sg}", f"{name} {v} {d_bad} {sg}"
            else:
                d_good, d_bad = self._c((("these", "this"), ("those", "that")))
                good, bad = f"{name} {v} {d_good} {pl}", f"{name} {v} {d_bad} {pl}"
        elif ph == "anaphor_agreement":
            v = self._c(("saw", "painted", "washed", "watched"))
            if rng.random() < 0.6:
                name, g = self._person()
                refl, wrong = ("himself", "herself") if g == "m" else ("herself", "himself")
                subj = name
            else:
                subj = f"the {self._c(L.PEOPLE)[1]}"
                refl, wrong = "themselves", self._c(("himself", "herself"))
            tail = "in the mirror" if v in ("saw", "watched") else self._c(L.TIMES)
            good, bad = f"{subj} {v} {refl} {tail}", f"{subj} {v} {wrong} {tail}"
        elif ph == "argument_structure":
            name = self._person()[0]
            obj = self._np(False, noun=self._c(L.OBJECTS))
            good = f"{name} {self._c(L.VERB_TRANS)[0]} {obj}"
            bad = f"{name} {self._c(L.VERB_STRICT_INTRANS)[0]} {obj}"
        elif ph == "word_order":
            name = self._person()[0]
            v = self._c(L.VERB_TRANS)[0]
            adj, n = self._c(L.ADJ_NEUTRAL + L.COLORS), self._c(L.OBJECTS)[0]
            tail = self._pp()
            good = f"{name} {v} the {adj} {n} {tail}"
            bad = self._c((f"{name} {v} {adj} the {n} {tail}", f"{name} the {adj} {n} {v} {tail}",
                           f"{name} {v} the {adj} {n} the {tail.split()[0]} {tail.split()[-1]}"))
        else:
            raise ValueError(f"unknown phenomenon {ph!r}; expected one of {PHENOMENA}")
        return MinimalPair(self._finish(good), self._finish(bad), ph)

    # -- non-words -----------------------------------------------------------------------
    @staticmethod
    def is_real_word(w: str) -> bool:
        """In the lexicon, a common English word, or the CMU dictionary (also after stripping
        -s/-es/-ed/-ing). The CMU list (134k words, shipped with pocketsphinx) catches real
        words like "mellow" or "granted" that a matched non-word could otherwise turn into."""
        w = w.lower()
        stems = {w} | {w[: -len(suf)] for suf in ("s", "es", "ed", "ing") if w.endswith(suf)}
        cmu = _cmu_words()
        return w in cmu or any(s in LEXICON or s in L.COMMON_ENGLISH for s in stems)

    def nonword(self, min_syllables: int = 1, max_syllables: int = 3) -> str:
        """A pronounceable letter string that is not a lexicon (or common English) word."""
        while True:
            n = self.rng.randint(min_syllables, max_syllables)
            parts = []
            for i in range(n):
                onset = self._c(ONSETS) if (i == 0 or self.rng.random() < 0.8) else ""
                coda = self._c(CODAS) if i == n - 1 else self._c(("", "", "n", "l", "r", "s"))
                parts.append(onset + self._c(NUCLEI) + coda)
            w = "".join(parts)
            if 3 <= len(w) <= 12 and not self.is_real_word(w):
                return w

    def wuggy_pair(self) -> tuple[str, str]:
        """(real word, matched non-word): one vowel group or the onset of the word is replaced."""
        while True:
            word = self._c(_NONWORD_SOURCES)
            groups = [m for m in re.finditer(r"[aeiou]+|[^aeiou]+", word)]
            vowels = [m for m in groups if m.group()[0] in "aeiou"]
            if self.rng.random() < 0.7 and vowels:
                m = self._c(vowels)
                new = word[:m.start()] + self._c(NUCLEI) + word[m.end():]
            elif word[0] not in "aeiou":
                m = groups[0]
                new = self._c(ONSETS) + word[m.end():]
            else:
                continue
            if new != word and not self.is_real_word(new) and re.search(r"[aeiou]", new) \
                    and not re.search(r"(.)\1\1", new):
                return word, new

    # -- stories -------------------------------------------------------------------------
    def _cast(self) -> dict[str, str]:
        name, g = self._person()
        friend = self._c(tuple(n for n in L.NAMES_M + L.NAMES_F if n != name))
        m = g == "m"
        return {"N": name, "he": "he" if m else "she", "He": "He" if m else "She",
                "his": "his" if m else "her", "His": "His" if m else "Her", "him": "him" if m else "her",
                "F": friend, "R": self._c(L.RELATIVES)[0], "P": self._c(L.PLACES),
                "O": self._c(L.OBJECTS)[0], "A": self._c(L.ANIMALS)[0], "C": self._c(L.COLORS),
                "D": self._c(L.DAYS), "X": self._c(L.FOODS), "Fr": self._c(L.FRUITS),
                "S": self._c(L.SPORTS), "Sub": self._c(L.SUBJECTS), "Rm": self._c(L.ROOMS),
                "Fu": self._c(L.FURNITURE), "Num": self._c(L.NUMBERS)}

    def _fill(self, variants, cast) -> str:
        return _cap(self._c(variants).format(**cast))

    def story(self, topic: str | None = None, arc: str | None = None) -> Story:
        topic = topic or self._c(tuple(TOPICS))
        spec = TOPICS[topic]
        arc = arc or self._c(("good", "bad"))
        cast = self._cast()
        ctx = tuple(self._fill(v, cast) for v in spec["ctx"]) + (self._fill(spec[arc], cast),)
        other_arc = "bad" if arc == "good" else "good"
        ending = self._fill(spec["end_" + arc], cast)
        wrong = self._fill(spec["end_" + other_arc], cast)
        other = self._c(tuple(t for t in TOPICS if t != topic))
        other_cast = dict(self._cast(), **{k: cast[k] for k in ("N", "he", "He", "his", "His", "him")})
        other_end = self._fill(TOPICS[other]["end_" + arc], other_cast)
        return Story(topic, arc, cast["N"], ctx, ending, wrong, other, other_end)

    # -- sentiment -----------------------------------------------------------------------
    def sentiment_sentence(self, label: str | None = None) -> SentimentSentence:
        label = label or self._c(SENTIMENT_LABELS)
        name, thing, place = self._person()[0], self._c(L.THINGS_TO_ENJOY), self._c(L.PLACES)
        if label == "neutral":
            sg, pl = self._c(L.OBJECTS)
            s = self._c((f"{name} put the {sg} on the {self._c(L.FURNITURE)}",
                         f"the {place} is near the {self._c(L.PLACES)}",
                         f"there are {self._c(L.NUMBERS)} {pl} in the {self._c(L.ROOMS)}",
                         f"the {thing} starts at noon on {self._c(L.DAYS)}",
                         f"{name} walked to the {place} {self._c(L.TIMES)}",
                         f"{name} ate {self._c(L.FOODS)} {self._c(('before dinner', 'after lunch', 'at noon'))}"))
            return SentimentSentence(self._finish(s), label)
        if label not in SENTIMENT_LABELS:
            raise ValueError(f"unknown sentiment label {label!r}")
        pos = label == "positive"
        thing_adj = self._c(L.ADJ_POS_THING if pos else L.ADJ_NEG_THING)
        feel = self._c(L.ADJ_POS_FEEL if pos else L.ADJ_NEG_FEEL)
        person_adj = self._c(L.ADJ_POS_PERSON if pos else L.ADJ_NEG_PERSON)
        verb = self._c(L.VERB_POSITIVE if pos else L.VERB_NEGATIVE)
        adv = self._c(L.ADV_POSITIVE if pos else L.ADV_NEGATIVE)
        k = self.rng.randrange(7)
        if k == 0:
            s = f"{name} {verb[2]} the {thing} at the {place}"
        elif k == 1:
            s = f"the {self._c(L.FOODS)} at the {place} was {thing_adj}"
        elif k == 2:
            a = f"{_article(thing_adj)} {thing_adj}"
            return SentimentSentence(self._finish(f"what {a} {thing} it was", "!"), label)
        elif k == 3:
            s = f"everyone {verb[2]} the {thing_adj} {thing}"
        elif k == 4:
            s = f"{name} felt {feel} after the {thing}"
        elif k == 5:
            s = f"the {self._c(L.PEOPLE)[0]} at the {place} was very {person_adj}"
        else:
            s = f"{name} {adv} told {self._person()[0]} about the {thing_adj} {thing}"
        return SentimentSentence(self._finish(s), label)

    def paragraph(self, n_sentences: int = 3) -> str:
        return " ".join(self.sentence() for _ in range(n_sentences))
