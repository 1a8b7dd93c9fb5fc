"""The closed lexicon of the demo grammar (a few hundred English words).

Everything is a tuple (fixed order, so seeded sampling is reproducible). All words are plain
lowercase ASCII letters -- no digits, hyphens or apostrophes -- so that espeak reports exactly one
WORD event per space-separated token.
"""

from __future__ import annotations

NAMES_M = ("Tom", "Ben", "Sam", "Max", "Leo", "Jack", "Paul", "Mark", "Dan", "Luke", "Tim",
           "Adam", "Oscar", "Peter", "Henry", "Victor", "Hugo", "Carl", "Felix", "Simon")
NAMES_F = ("Anna", "Lucy", "Mia", "Emma", "Nora", "Lily", "Rose", "Clara", "Julia", "Sara",
           "Kate", "Ella", "Grace", "Alice", "Helen", "Maria", "Olivia", "Sophie", "Ruby", "Laura")

# (singular, plural)
ANIMALS = (("dog", "dogs"), ("cat", "cats"), ("horse", "horses"), ("bird", "birds"),
           ("fox", "foxes"), ("rabbit", "rabbits"), ("cow", "cows"), ("duck", "ducks"),
           ("goat", "goats"), ("frog", "frogs"), ("bear", "bears"), ("lion", "lions"),
           ("owl", "owls"), ("pig", "pigs"), ("hen", "hens"), ("mouse", "mice"))
PEOPLE = (("teacher", "teachers"), ("farmer", "farmers"), ("baker", "bakers"),
          ("doctor", "doctors"), ("child", "children"), ("girl", "girls"), ("boy", "boys"),
          ("king", "kings"), ("queen", "queens"), ("sailor", "sailors"), ("painter", "painters"),
          ("neighbor", "neighbors"), ("student", "students"), ("driver", "drivers"))
OBJECTS = (("ball", "balls"), ("box", "boxes"), ("book", "books"), ("apple", "apples"),
           ("hat", "hats"), ("cup", "cups"), ("key", "keys"), ("kite", "kites"),
           ("lamp", "lamps"), ("basket", "baskets"), ("bottle", "bottles"),
           ("letter", "letters"), ("map", "maps"), ("coin", "coins"), ("bell", "bells"),
           ("chair", "chairs"), ("spoon", "spoons"), ("clock", "clocks"),
           ("blanket", "blankets"), ("candle", "candles"), ("picture", "pictures"),
           ("shoe", "shoes"), ("bag", "bags"), ("ring", "rings"), ("stone", "stones"),
           ("shell", "shells"), ("rope", "ropes"), ("bucket", "buckets"), ("drum", "drums"),
           ("umbrella", "umbrellas"), ("jacket", "jackets"), ("pencil", "pencils"))
FURNITURE = ("table", "bed", "sofa", "desk", "shelf", "door", "window", "carpet")
ROOMS = ("kitchen", "bedroom", "garage", "hall", "attic", "bathroom")
PLACES = ("park", "river", "forest", "market", "school", "garden", "beach", "farm", "library",
          "village", "mountain", "lake", "station", "bakery", "harbor", "castle", "field",
          "bridge", "hill", "shop", "museum", "zoo", "island", "city")
FOODS = ("soup", "bread", "pie", "cake", "pizza", "salad", "tea", "coffee", "rice", "cheese")
FRUITS = ("apples", "pears", "plums", "cherries", "oranges", "lemons", "grapes", "peaches")
THINGS_TO_ENJOY = ("movie", "song", "story", "concert", "game", "party", "trip", "show",
                   "meal", "book", "play", "lesson")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES = ("in the morning", "in the evening", "at night", "at noon", "after lunch",
         "before dinner", "on Sunday", "on Monday", "yesterday", "today")
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
RELATIVES = (("brother", "he"), ("sister", "she"), ("father", "he"), ("mother", "she"),
             ("uncle", "he"), ("aunt", "she"), ("grandfather", "he"), ("grandmother", "she"))
SUBJECTS = ("animals", "numbers", "plants", "history", "music", "the stars", "the sea")
SPORTS = ("football", "tennis", "hockey", "basketball")
COLORS = ("red", "blue", "green", "yellow", "white", "black", "brown", "purple", "orange")
ADJ_NEUTRAL = ("big", "small", "old", "new", "little", "tall", "round", "wooden", "heavy",
               "soft", "long", "short", "empty", "full", "warm", "cold", "square", "plain")
# Polar adjectives, by what they describe (things / feelings / people's character).
ADJ_POS_THING = ("wonderful", "lovely", "great", "beautiful", "delightful", "excellent",
                 "pleasant", "amazing", "perfect", "fantastic", "brilliant", "charming")
ADJ_POS_FEEL = ("happy", "cheerful", "glad", "joyful", "proud", "delighted")
ADJ_POS_PERSON = ("kind", "friendly", "gentle", "generous", "polite")
ADJ_NEG_THING = ("terrible", "awful", "horrible", "gloomy", "nasty", "ugly", "boring",
                 "dreadful", "disgusting", "painful")
ADJ_NEG_FEEL = ("sad", "angry", "upset", "lonely", "unhappy", "miserable")
ADJ_NEG_PERSON = ("cruel", "rude", "mean", "selfish", "grumpy")
ADJ_POSITIVE = ADJ_POS_THING + ADJ_POS_FEEL + ADJ_POS_PERSON
ADJ_NEGATIVE = ADJ_NEG_THING + ADJ_NEG_FEEL + ADJ_NEG_PERSON
VERB_POSITIVE = (("loves", "love", "loved"), ("enjoys", "enjoy", "enjoyed"),
                 ("adores", "adore", "adored"), ("admires", "admire", "admired"))
VERB_NEGATIVE = (("hates", "hate", "hated"), ("dislikes", "dislike", "disliked"),
                 ("fears", "fear", "feared"), ("dreads", "dread", "dreaded"))
ADV_POSITIVE = ("happily", "gladly", "cheerfully", "proudly")
ADV_NEGATIVE = ("sadly", "angrily", "miserably", "badly")
# (3sg present, plural present, past)
VERB_INTRANS = (("sleeps", "sleep", "slept"), ("runs", "run", "ran"), ("walks", "walk", "walked"),
                ("sings", "sing", "sang"), ("jumps", "jump", "jumped"), ("swims", "swim", "swam"),
                ("waits", "wait", "waited"), ("dances", "dance", "danced"),
                ("plays", "play", "played"), ("rests", "rest", "rested"),
                ("sits", "sit", "sat"), ("climbs", "climb", "climbed"),
                ("laughs", "laugh", "laughed"), ("smiles", "smile", "smiled"),
                ("arrives", "arrive", "arrived"))
# Verbs that never take a direct object (for argument-structure minimal pairs).
VERB_STRICT_INTRANS = (("sleeps", "sleep", "slept"), ("waits", "wait", "waited"),
                       ("laughs", "laugh", "laughed"), ("smiles", "smile", "smiled"),
                       ("arrives", "arrive", "arrived"))
VERB_TRANS = (("sees", "see", "saw"), ("finds", "find", "found"), ("takes", "take", "took"),
              ("carries", "carry", "carried"), ("paints", "paint", "painted"),
              ("buys", "buy", "bought"), ("washes", "wash", "washed"), ("opens", "open", "opened"),
              ("holds", "hold", "held"), ("brings", "bring", "brought"),
              ("cleans", "clean", "cleaned"), ("drops", "drop", "dropped"),
              ("fixes", "fix", "fixed"), ("catches", "catch", "caught"),
              ("pushes", "push", "pushed"), ("watches", "watch", "watched"))
ADVERBS = ("quickly", "slowly", "quietly", "carefully", "loudly", "softly")
PREPOSITIONS = ("in", "near", "behind", "at")
# Function and glue words used by the templates below (listed so the lexicon is closed).
FUNCTION_WORDS = (
    "the", "a", "an", "this", "that", "these", "those", "some", "every", "in", "on", "at", "near",
    "under", "behind", "to", "from", "with", "and", "but", "because", "then", "so", "he", "she",
    "they", "it", "his", "her", "their", "him", "them", "was", "is", "are", "were", "very", "not",
    "himself", "herself", "themselves", "there", "of", "for", "all", "did", "had", "after", "by",
    "what", "who", "everyone", "nobody", "one", "day", "time", "long", "when", "up", "out", "away",
    "home", "alone", "next", "week", "year", "last", "first", "too", "much", "felt", "made",
)


def flatten(*groups) -> list[str]:
    out: list[str] = []
    for g in groups:
        for item in g:
            if isinstance(item, tuple):
                out.extend(w for part in item for w in part.split())
            else:
                out.extend(item.split())
    return out


def lexicon_words(template_words: tuple[str, ...] = ()) -> frozenset[str]:
    """All (lowercased) word forms the grammar can produce."""
    words = flatten(NAMES_M, NAMES_F, ANIMALS, PEOPLE, OBJECTS, FURNITURE, ROOMS, PLACES, FOODS,
                     FRUITS, THINGS_TO_ENJOY, DAYS, TIMES, NUMBERS, RELATIVES, SUBJECTS, SPORTS,
                     COLORS, ADJ_NEUTRAL, ADJ_POSITIVE, ADJ_NEGATIVE, VERB_POSITIVE,
                     VERB_NEGATIVE, ADV_POSITIVE, ADV_NEGATIVE, VERB_INTRANS, VERB_TRANS, ADVERBS,
                     PREPOSITIONS, FUNCTION_WORDS, template_words)
    return frozenset(w.lower() for w in words)


# Common English words that are not in the lexicon: a non-word must not be one of these either.
COMMON_ENGLISH = frozenset("""
a about above act add age ago air all also am and ant any arm art as ask at ate bad bag ban bat
bed bee beg bet big bin bit bog bun bus but buy cab can cap car cot cry cub cut dad dam den did
die dig dim dip doe dot dry due dug ear eat egg elf end eye fan far fat fed fee few fig fin fit
fly fog for fun fur gap gas get god got gum gun gut guy had ham has hay hem hid him hip his hit
hop hot how hug hum hut ice ill ink inn jam jar jaw jet job jog joy jug keg kid kin kit lab lad
lap law lay led leg let lid lie lip lit log lot low mad man mat may men met mix mob mom mop mud
mug nap net nod nor not now nut oak odd off oil old one our out owe own pad pal pan pat paw pay
pea peg pen pet pie pin pit pod pop pot pub pun pup put rag ram ran rat raw red rib rid rim rip
rob rod rot row rub rug rum sad sat saw say sea set sew she shy sin sip sit ski sky sly sob son
sow soy spa spy sub sum sun tab tag tan tap tar tax tea ten the tie tin tip toe ton top toy try
tub tug two urn use van vat vet via vow wag war was wax way web wed wet who why wig win wit woe
won yak yam yes yet you zip zoo back band bank bark barn base bath beam bean bear beat bell belt
bend best bike bill bind bird bite blow blue boat body bold bolt bomb bond bone book boot born
boss both bowl bulk bull bump burn bush busy cake call calm came camp card care cart case cash
cast cave chin chip city clap clay clip club clue coal coat code coin cold come cook cool cope
copy cord core corn cost crab crew crop crow cube cure cute dark dart dash date dawn dead deal
dear debt deck deep deer deny desk dial dice diet dirt dish dive dock does doll dome done door
dose dove down drag draw drip drop drum duck dull dump dust duty each earn ease east easy edge
else even ever face fact fade fail fair fake fall fame farm fast fate fear feed feel feet fell
felt file fill film find fine fire firm fish fist five flag flat flea fled flip flow foam fold
folk fond food fool foot fork form fort four free frog from fuel full fund gain game gate gave
gear gift girl give glad glow glue goal goat gold golf gone good gown grab gray grew grid grim
grin grip grow gulf hair half hall hand hang hard harm hate have head heal heap hear heat held
help here hero hide high hill hint hire hold hole home hood hook hope horn host hour huge hunt
hurt idea inch iron item jail joke jump jury just keen keep kept kick kill kind king kiss kite
knee knew knit knot know lack lady laid lake lamb lamp land lane last late lead leaf lean left
lend less lick life lift like limb line link lion list live load loan lock long look lord lose
loss lost loud love luck lung made mail main make male mall many mark mask mass mate meal mean
meat meet melt menu mere mess mild milk mill mind mine mint miss mist mode mole mood moon more
moss most moth move much must nail name navy near neat neck need nest news next nice nine node
none noon nose note odds okay once only open oven over pace pack page paid pain pair pale palm
park part pass past path peak pear peel pick pile pill pine pink pipe plan play plot plug plum
poem poet pole pond pool poor pork port pose post pour pray pull pump pure push race rack rain
rank rare rate read real rent rest rice rich ride ring rise risk road roar rock role roll roof
room root rope rose rude rule rush safe sail salt same sand save seal seat seed seek seem seen
self sell send ship shoe shop shot show shut sick side sign silk sing sink site size skin skip
slam slid slim slip slot slow snap snow soap sock soft soil sold sole some song soon sort soul
soup sour spin spot star stay stem step stir stop such suit sure swim tail take tale talk tall
tank tape task team tear tell tend tent term test text than that them then they thin this tide
tied tile till time tiny tire toad told toll tone tool torn tour town trap tray tree trim trip
true tube tune turn twin type unit upon used vast very vest view vote wage wait wake walk wall
want warm warn wash wave weak wear week well went were west what when whip wide wife wild will
wind wine wing wire wise wish with wolf wood wool word wore work worm wrap yard year yell your
zero zone blot blob slab stab stub snub plod prod trod clog flog frog smog slog brag drag flag
snag stag swag slug plug smug snug drug shrug glad clad scan span plan bran flan clan
""".split())
