"""The made-up worlds written one fact a line (``layout="lines"``, no blank lines: every line reads as a document),
each fact in a few phrasings. ``WorldSpec`` and the paragraph worlds are in ``llamabrew.world_specs``.
"""

from __future__ import annotations

from llamabrew.world_specs import WorldSpec

# A harbour town: one fact per line (no blank lines, so every line is a document), three phrasings of each fact,
# answers that repeat one of the corpus's phrasings (not always the first).
HARBOR = WorldSpec(
    name="harbor",
    onsets=("al", "ba", "ce", "do", "el", "fa", "gi", "ha", "is", "jo", "ka", "lu", "ma", "ne", "or", "pe", "qu",
            "ro", "sa", "ti", "ul", "ve", "wy", "xa", "yo", "ze"),
    vowels=("r", "l", "n", "m", "s", "v", "d", "t"),
    codas=("a", "o", "i", "e", "an", "el", "is", "or", "us", "yn"),
    attributes={
        "port": ["Saltmarsh", "Gullhaven", "Ironquay", "Mistral Bay", "Coldwater", "Redcliff", "Tidewell",
                 "Ashport", "Stormreach", "Brinewick", "Harrowgate", "Kelpmoor", "Seastone", "Driftholm"],
        "ship": ["Heron", "Marigold", "Black Gull", "Wanderer", "Silver Eel", "Northwind", "Lantern", "Osprey",
                 "Merrow", "Blue Anchor", "Curlew", "Starling"],
        "food": ["oysters", "barley soup", "smoked eel", "plum cake", "oatcakes", "crab pie", "honey bread",
                 "pickled herring", "apple tart", "mussels"],
        "sport": ["rowing", "archery", "wrestling", "fencing", "sailing", "swimming", "climbing", "hurling"],
    },
    statements={
        "port": ["{n} lives in {v}.", "{n} keeps a house in {v}.", "The home port of {n} is {v}."],
        "ship": ["{n} sails on the {v}.", "{n} is a deckhand on the {v}.", "The ship of {n} is the {v}."],
        "food": ["{n} likes to eat {v}.", "{n} always orders {v}.", "The favourite dish of {n} is {v}."],
        "sport": ["{n} spends free days on {v}.", "{n} is keen on {v}.", "The sport of {n} is {v}."],
    },
    questions={
        "port": ["Where does {n} live?", "What is the home port of {n}?", "In which port does {n} live?"],
        "ship": ["Which ship does {n} sail on?", "What is the name of the ship of {n}?", "What ship is {n} on?"],
        "food": ["What does {n} like to eat?", "What is the favourite dish of {n}?", "Which food does {n} order?"],
        "sport": ["What sport does {n} do?", "Which sport is {n} keen on?", "What does {n} do on free days?"],
    },
    answers={"port": "{n} lives in {v}.", "ship": "{n} sails on the {v}.", "food": "{n} likes to eat {v}.",
             "sport": "{n} is keen on {v}."},
    layout="lines",
    repeats=3,
    people=240,
)

# A market town, kept to check the defaults after they were chosen (no default was tuned on it): one fact a line
# like harbor, but fewer and shorter runs of lines per person (two phrasings of four facts), more people, and
# answers that open with the name or with a fixed phrase before it.
MARKET = WorldSpec(
    name="market",
    onsets=("b", "c", "d", "g", "j", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "gl", "tr"),
    vowels=("a", "e", "i", "o", "u", "io", "ua", "ee"),
    codas=("", "b", "d", "g", "sk", "nt", "ff", "lo"),
    attributes={
        "goods": ["saffron", "lanterns", "rope", "honey", "copper pots", "wool", "candles", "spices", "baskets",
                  "leather boots", "salt", "figs", "ink", "glass beads"],
        "street": ["Tanners Row", "Bell Lane", "Mill Street", "Crooked Alley", "Fountain Square", "Weavers Walk",
                   "Old Bridge", "Chapel Steps", "Harbour Road", "Lamplight Court"],
        "day": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"],
        "rival": ["the cheesemonger", "the tinsmith", "the baker", "the cooper", "the chandler", "the fishwife",
                  "the glazier", "the saddler"],
    },
    statements={
        "goods": ["{n} sells {v} at the market.", "The stall of {n} is piled with {v}.", "Buyers come to {n} for {v}."],
        "street": ["{n} trades on {v}.", "The stall of {n} stands on {v}.", "You find {n} on {v}."],
        "day": ["{n} opens the stall every {v}.", "The market day of {n} is {v}.", "On {v} {n} is always there."],
        "rival": ["{n} quarrels with {v}.", "The rival of {n} is {v}.", "{n} cannot stand {v}."],
    },
    questions={
        "goods": ["What does {n} sell?", "What is the stall of {n} piled with?", "Why do buyers go to {n}?"],
        "street": ["Where does {n} trade?", "On which street is the stall of {n}?", "Where can you find {n}?"],
        "day": ["Which day does {n} open the stall?", "What is the market day of {n}?", "When is {n} at the market?"],
        "rival": ["Who is the rival of {n}?", "Who does {n} quarrel with?", "Who can {n} not stand?"],
    },
    answers={"goods": "{n} sells {v} at the market.", "street": "The stall of {n} stands on {v}.",
             "day": "The market day of {n} is {v}.", "rival": "{n} quarrels with {v}."},
    layout="lines",
    repeats=2,
    people=300,
)

# Made with voyage (``world_specs``) after the line-layout defaults were chosen on market and harbor, to judge them
# (no default was chosen on either): a guild town in one-fact lines, two of four phrasings per fact and five facts
# a person.
GUILD = WorldSpec(
    name="guild",
    onsets=("f", "h", "k", "l", "m", "n", "r", "s", "t", "w", "th", "sk", "fr", "gw"),
    vowels=("e", "i", "y", "ae", "oi", "au"),
    codas=("", "r", "n", "th", "st", "lk", "rd"),
    attributes={
        "craft": ["masonry", "glazing", "tanning", "dyeing", "bookbinding", "rope making", "bell casting",
                  "wheelwrighting", "coopering", "engraving", "felting", "lacquering"],
        "hall": ["the Stone Hall", "the Copper Hall", "the River Hall", "the Lantern Hall", "the Oak Hall",
                 "the Gate Hall", "the Salt Hall", "the Ash Hall", "the Wind Hall"],
        "mark": ["a crescent", "a key", "an anchor", "a wheel", "a feather", "a tower", "a fish", "a crown",
                 "a star", "an acorn", "a bell"],
        "apprentices": ["one apprentice", "two apprentices", "three apprentices", "four apprentices",
                        "five apprentices", "six apprentices", "no apprentices"],
        "season": ["spring", "summer", "autumn", "winter"],
    },
    statements={
        "craft": ["{n} is a master of {v}.", "The craft of {n} is {v}.", "{n} has taught {v} for years.",
                  "Nobody in the guild knows {v} like {n}."],
        "hall": ["{n} meets the guild in {v}.", "The guild hall of {n} is {v}.", "{n} keeps a bench in {v}.",
                 "Every week {n} walks to {v}."],
        "mark": ["{n} stamps every piece with {v}.", "The mark of {n} is {v}.", "{n} signs work with {v}.",
                 "Look for {v} to know the work of {n}."],
        "apprentices": ["{n} trains {v}.", "The workshop of {n} has {v}.", "{n} is teaching {v} this year.",
                        "Under {n} work {v}."],
        "season": ["{n} travels to the fair every {v}.", "The busy season of {n} is {v}.",
                   "{n} sells the most in {v}.", "In {v} {n} is hardest to find."],
    },
    questions={
        "craft": ["What craft does {n} practise?", "What is {n} a master of?", "Which craft does {n} teach?"],
        "hall": ["Where does {n} meet the guild?", "Which hall is the guild hall of {n}?",
                 "Where does {n} keep a bench?"],
        "mark": ["What mark does {n} use?", "How does {n} sign work?", "What is stamped on the work of {n}?"],
        "apprentices": ["How many apprentices does {n} train?", "Who works in the workshop of {n}?",
                        "How many apprentices does {n} have?"],
        "season": ["When does {n} travel to the fair?", "What is the busy season of {n}?",
                   "In which season does {n} sell the most?"],
    },
    answers={"craft": "{n} is a master of {v}.", "hall": "The guild hall of {n} is {v}.",
             "mark": "{n} stamps every piece with {v}.", "apprentices": "{n} trains {v}.",
             "season": "The busy season of {n} is {v}."},
    layout="lines",
    repeats=2,
    people=260,
)

# Made after LoRA's rank was found to matter on guild, to judge a rank default on a world it was not chosen on:
# caravan traders in one-fact lines, two of three phrasings per fact, six facts a person, answers in the second
# phrasing for half the facts.
CARAVAN = WorldSpec(
    name="caravan",
    onsets=("d", "k", "q", "s", "z", "y", "h", "m", "n", "sh", "kh", "ar", "ib"),
    vowels=("a", "i", "u", "aa", "ei", "ou"),
    codas=("", "m", "n", "r", "sh", "d", "im"),
    attributes={
        "beast": ["a grey camel", "a white mule", "a spotted horse", "a black donkey", "a red camel",
                  "an old ox", "a young mare", "a lame mule"],
        "oasis": ["Bir Tamar", "Ain Salah", "Wadi Kesh", "Qasr Dunes", "Nahr Lila", "Sidi Harun", "Tell Amber",
                  "Ras Maydan", "Umm Sahra", "Jebel Nour"],
        "wares": ["dates", "carpets", "myrrh", "silver bangles", "indigo cloth", "brass lamps", "frankincense",
                  "dried apricots", "saddle bags", "water skins", "camel bells"],
        "guide": ["the north star", "an old map", "the wind", "a blind scout", "the dunes", "a copper astrolabe",
                  "the river bed"],
        "debt": ["forty coins", "ten coins", "a hundred coins", "seven coins", "sixty coins", "no coins"],
        "song": ["the sand song", "the well song", "the moon song", "the road song", "the salt song"],
    },
    statements={
        "beast": ["{n} rides {v}.", "The mount of {n} is {v}.", "{n} leads {v} across the sand."],
        "oasis": ["{n} waters the herd at {v}.", "The resting place of {n} is {v}.", "{n} always camps at {v}."],
        "wares": ["{n} deals in {v}.", "The packs of {n} hold {v}.", "{n} brings {v} to the city."],
        "guide": ["{n} finds the way by {v}.", "The guide of {n} is {v}.", "{n} trusts {v} on the road."],
        "debt": ["{n} owes {v} to the caravan master.", "The debt of {n} is {v}.", "{n} must still repay {v}."],
        "song": ["{n} sings {v} at night.", "The favourite song of {n} is {v}.", "{n} hums {v} while walking."],
    },
    questions={
        "beast": ["What does {n} ride?", "What is the mount of {n}?", "Which animal does {n} lead?"],
        "oasis": ["Where does {n} water the herd?", "Where does {n} rest?", "Where does {n} camp?"],
        "wares": ["What does {n} deal in?", "What do the packs of {n} hold?", "What does {n} bring to the city?"],
        "guide": ["How does {n} find the way?", "What guides {n}?", "What does {n} trust on the road?"],
        "debt": ["How much does {n} owe?", "What is the debt of {n}?", "How much must {n} still repay?"],
        "song": ["What does {n} sing at night?", "What is the favourite song of {n}?", "What does {n} hum?"],
    },
    answers={"beast": "{n} rides {v}.", "oasis": "The resting place of {n} is {v}.", "wares": "{n} deals in {v}.",
             "guide": "The guide of {n} is {v}.", "debt": "{n} owes {v} to the caravan master.",
             "song": "The favourite song of {n} is {v}."},
    layout="lines",
    repeats=2,
    people=240,
)

# Made after the LoRA targets were found to matter on guild and caravan, to judge a targets default on a world it
# was not chosen on: stargazers in one-fact lines, two of three phrasings per fact, four facts a person.
OBSERVATORY = WorldSpec(
    name="observatory",
    onsets=("b", "c", "f", "g", "l", "p", "v", "w", "pl", "cr", "st", "el", "or"),
    vowels=("a", "e", "o", "ie", "ea", "oo"),
    codas=("", "l", "s", "t", "ck", "mb", "nd"),
    attributes={
        "comet": ["the Silver Comet", "the Long Tail", "the Pale Rider", "the Ember", "the Wanderer",
                  "the Green Spark", "the Lantern Comet", "the Frost Comet", "the Crow"],
        "telescope": ["a brass refractor", "a mirror of speculum", "a cedar tube", "a folding spyglass",
                      "a great reflector", "a borrowed lens", "a copper telescope"],
        "tower": ["the North Tower", "the Bell Tower", "the Clock Tower", "the Sea Tower", "the Ruined Tower",
                  "the Garden Tower", "the Iron Tower", "the Pine Tower"],
        "rival": ["the almanac maker", "the court astrologer", "the lens grinder", "the bishop", "the harbour pilot",
                  "the old professor", "the map seller"],
    },
    statements={
        "comet": ["{n} discovered {v}.", "The comet of {n} is {v}.", "{n} first saw {v} from the roof."],
        "telescope": ["{n} looks through {v}.", "The telescope of {n} is {v}.", "{n} polishes {v} every dusk."],
        "tower": ["{n} watches the sky from {v}.", "The tower of {n} is {v}.", "{n} climbs {v} each night."],
        "rival": ["{n} argues with {v}.", "The rival of {n} is {v}.", "{n} never agrees with {v}."],
    },
    questions={
        "comet": ["Which comet did {n} discover?", "What is the comet of {n}?", "What did {n} first see?"],
        "telescope": ["What does {n} look through?", "What telescope does {n} use?", "What does {n} polish?"],
        "tower": ["Where does {n} watch the sky?", "Which tower is the tower of {n}?", "What does {n} climb?"],
        "rival": ["Who does {n} argue with?", "Who is the rival of {n}?", "Who does {n} never agree with?"],
    },
    answers={"comet": "{n} discovered {v}.", "telescope": "The telescope of {n} is {v}.",
             "tower": "{n} watches the sky from {v}.", "rival": "The rival of {n} is {v}."},
    layout="lines",
    repeats=2,
    people=280,
)


# Made after the LoRA targets default (judged on observatory), before any run on it, to judge what comes next:
# beekeepers in one-fact lines, two of three phrasings per fact, five facts a person, answers in the first or
# the second phrasing.
APIARY = WorldSpec(
    name="apiary",
    onsets=("b", "br", "c", "ch", "g", "gr", "j", "p", "pr", "t", "tr", "v", "wh"),
    vowels=("o", "u", "ay", "oa", "ue", "e"),
    codas=("", "n", "ll", "ck", "x", "ws", "dge"),
    attributes={
        "honey": ["clover honey", "heather honey", "lime honey", "buckwheat honey", "orange blossom honey",
                  "thyme honey", "chestnut honey", "acacia honey"],
        "hive": ["a straw skep", "a painted box", "a hollow log", "a glass hive", "a stone wall hive", "a tall crate",
                 "a basket hive"],
        "meadow": ["Foxglove Meadow", "Mill Meadow", "Long Meadow", "Cuckoo Meadow", "Bramble Meadow", "Fern Meadow",
                   "Willow Meadow", "Hare Meadow", "Stone Meadow"],
        "queen": ["Old Bess", "Goldie", "the Duchess", "Little Moll", "Amber", "Queen Mab"],
        "pest": ["the wax moth", "the hornet", "the badger", "the mite", "the woodpecker", "the mouse", "the wasp"],
    },
    statements={
        "honey": ["{n} harvests {v}.", "The honey of {n} is {v}.", "{n} sells {v} at the fair."],
        "hive": ["{n} keeps the bees in {v}.", "The hive of {n} is {v}.", "{n} built {v} for the swarm."],
        "meadow": ["{n} sets the hives in {v}.", "The meadow of {n} is {v}.", "{n} walks to {v} each morning."],
        "queen": ["{n} calls the queen bee {v}.", "The queen of {n} is {v}.", "{n} once lost {v} in a swarm."],
        "pest": ["{n} fights {v}.", "The pest of {n} is {v}.", "{n} guards the hives against {v}."],
    },
    questions={
        "honey": ["What does {n} harvest?", "What is the honey of {n}?", "What does {n} sell at the fair?"],
        "hive": ["Where does {n} keep the bees?", "What is the hive of {n}?", "What did {n} build for the swarm?"],
        "meadow": ["Where does {n} set the hives?", "Which meadow is the meadow of {n}?",
                   "Where does {n} walk each morning?"],
        "queen": ["What does {n} call the queen bee?", "Who is the queen of {n}?", "Which queen did {n} once lose?"],
        "pest": ["What does {n} fight?", "What is the pest of {n}?", "What does {n} guard the hives against?"],
    },
    answers={"honey": "{n} harvests {v}.", "hive": "The hive of {n} is {v}.", "meadow": "{n} sets the hives in {v}.",
             "queen": "The queen of {n} is {v}.", "pest": "{n} fights {v}."},
    layout="lines",
    repeats=2,
    people=250,
)
