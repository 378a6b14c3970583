"""A synthetic world of invented people, and the texts and evaluation sets drawn from it.

Everything is a pure function of (seed, WorldConfig): every random choice comes from a
`random.Random` seeded with a string key, so the same seed gives byte-identical files on any machine
(string seeds are hashed with SHA-512 by Python, not with the per-process hash salt).

Facts are (person, attribute, value). Each fact is stated in the training corpus in several
paraphrases. A fraction of the facts is also *asked* there, in the very prompt formats the evaluation
tasks use (lm-eval's TriviaQA, CoQA and TruthfulQA-generation prompts), so a model learns both the
facts and the formats. The rest are held out: they are stated but never asked in question form
anywhere in the corpus, and the TriviaQA / TruthfulQA evaluation sets ask exactly those. CoQA is
reading comprehension: new stories, whose answers are spans of the story itself; more of them, apart from the
evaluated ones, are the CoQA calibration set (coqa_calibration_records, written by its own command).
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field

from workflow_lib.artifacts import atomic_path
from workflow_lib.data import formats
from workflow_lib.defaults import WORLD

_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "v", "w", "z", "sh", "j"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_CODAS = ["", "", "n", "r", "l", "s", "th", "k", "m", "x", "nd", "rn"]
_PLACE_SUFFIXES = ["holm", "mere", "vik", "ford", "wick", "stead", "moor", "dale", "port", "gate"]

# Value sets of the attributes; plain words, so the world needs no real-world knowledge.
# Two-word professions: multi-token answers, whose first token needs recall and whose rest follows from it
# (the mix that gives early exits something to trade).
PROFESSIONS = ["glass blower", "stone mason", "bee keeper", "rope maker", "boat builder", "clock mender",
               "lamp lighter", "candle maker", "horse trainer", "sheep shearer", "map drawer", "bell ringer",
               "wine merchant", "tea blender", "cheese maker", "river pilot", "book binder", "road sweeper"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "pink", "brown",
           "silver"]
PETS = ["cat", "dog", "goat", "parrot", "rabbit", "pony", "tortoise", "owl", "ferret", "goose", "lizard",
        "hedgehog"]
# Story props (CoQA): local facts that exist only inside one story.
ITEMS = ["apples", "candles", "ribbons", "loaves", "buttons", "pears", "lanterns", "blankets", "jars of honey",
         "baskets", "spoons", "maps"]
COUNTS = ["two", "three", "four", "five", "six", "seven", "eight", "nine"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
VENUES = ["market", "harbour", "library", "mill", "bakery", "fair", "bridge", "old tower", "river bank", "square"]
SIGHTS = ["fox", "heron", "wagon", "rainbow", "kite", "boat", "scarecrow", "juggler", "stag", "balloon"]


@dataclass(frozen=True)
class Attribute:
    """One attribute: its values, the ways a statement says it, the ways a question asks it."""

    name: str
    statements: tuple[str, ...]  # "{n}" = full name, "{v}" = value; ordered name-first and value-first mixed
    questions: tuple[str, ...]  # TriviaQA question text, no trailing "?" (lm-eval's prompt adds it)
    answer_sentence: str  # TruthfulQA-style full-sentence answer
    aliases: tuple[str, ...] = ("{v}",)  # accepted TriviaQA answers beyond the value itself


ATTRIBUTES: dict[str, Attribute] = {
    "city": Attribute(
        "city",
        statements=("{n} lives in {v}.", "{n} has a house in the town of {v}.", "The home town of {n} is {v}.",
                    "{n}'s home is in {v}.", "In {v} lives {n}.", "{n} settled in {v} many years ago.",
                    "The town where {n} lives is {v}.", "{n} is a well known face in {v}, where {n} lives."),
        questions=("Where does {n} live", "In which town does {n} live", "What is the home town of {n}",
                   "Which town is home to {n}"),
        answer_sentence="{n} lives in {v}.",
        aliases=("{v}", "in {v}", "the town of {v}"),
    ),
    "job": Attribute(
        "job",
        statements=("{n} works as a {v}.", "{n} is a {v} by trade.", "The job of {n} is {v}.",
                    "{n} earns a living as a {v}.", "By trade, {n} is a {v}.", "Everyone knows {n} as a skilled {v}.",
                    "A {v} by profession, {n} is busy every day.", "The profession of {n} is {v}."),
        questions=("What does {n} do for a living", "What is the job of {n}", "What is the profession of {n}",
                   "What work does {n} do"),
        answer_sentence="{n} works as a {v}.",
        aliases=("{v}", "a {v}"),
    ),
    "colour": Attribute(
        "colour",
        statements=("{n}'s favourite colour is {v}.", "{n} loves the colour {v}.",
                    "Of all colours, {n} likes {v} best.", "The favourite colour of {n} is {v}.", "{n} always wears something {v}, the favourite colour.",
                    "{v} is the colour {n} likes most.", "No colour pleases {n} more than {v}.",
                    "{n} painted the front door {v}, the favourite colour."),
        questions=("What is the favourite colour of {n}", "Which colour does {n} like best",
                   "What colour does {n} love most", "What is {n}'s favourite colour"),
        answer_sentence="The favourite colour of {n} is {v}.",
    ),
    "pet": Attribute(
        "pet",
        statements=("{n} keeps a {v} as a pet.", "The pet of {n} is a {v}.", "{n} owns a pet {v}.",
                    "A {v} lives with {n} as a pet.", "{n} takes good care of a pet {v}.",
                    "The animal that {n} keeps at home is a {v}.", "{n} feeds the pet {v} every morning.",
                    "Every evening {n} walks with the pet {v}."),
        questions=("What pet does {n} keep", "What animal does {n} keep as a pet", "What is the pet of {n}",
                   "Which animal lives with {n}"),
        answer_sentence="{n} keeps a {v} as a pet.",
        aliases=("{v}", "a {v}"),
    ),
}


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and mixture of the world; every field is recorded in world.json (defaults: the config's, defaults.WORLD)."""

    n_people: int = WORLD["n_people"]
    n_cities: int = WORLD["n_cities"]
    attributes: tuple[str, ...] = WORLD["attributes"]
    qa_fraction: float = WORLD["qa_fraction"]  # facts asked in question form in the corpus; the rest are held out
    paraphrases: int = WORLD["paraphrases"]  # statements of each fact in the training corpus
    bio_docs: int = WORLD["bio_docs"]  # biographies per person (each: all facts, shuffled, fresh paraphrases)
    mixed_docs: int = WORLD["mixed_docs"]  # per person: a biography, then questions about the person's seen facts
    qa_docs: int = WORLD["qa_docs"]  # few-shot style blocks of TriviaQA prompts over random seen facts
    qa_per_doc: tuple[int, int] = WORLD["qa_per_doc"]
    truthful_docs: int = WORLD["truthful_docs"]  # "Q: ...\nA: <sentence>" blocks (TruthfulQA-generation prompts)
    rumour_fraction: float = WORLD["rumour_fraction"]  # held-out facts that also carry a false rumour (adversarial)
    n_unknown: int = WORLD["n_unknown"]  # invented people never described (TruthfulQA: "I have no comment.")
    coqa_train_stories: int = WORLD["coqa_train_stories"]
    coqa_eval_stories: int = WORLD["coqa_eval_stories"]
    valid_people_fraction: float = WORLD["valid_people_fraction"]  # people described again (fresh paraphrases) in corpus_valid.txt

    def __post_init__(self):
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            raise ValueError(f"unknown attribute(s) {unknown}; known: {sorted(ATTRIBUTES)}")
        if self.n_people < 4:
            raise ValueError(f"n_people must be >= 4, got {self.n_people}")
        if not 0.0 < self.qa_fraction < 1.0:
            raise ValueError(f"qa_fraction must be in (0, 1), got {self.qa_fraction}")
        most = min(len(ATTRIBUTES[a].statements) for a in self.attributes)
        if not 1 <= self.paraphrases <= most:
            raise ValueError(f"paraphrases must be in [1, {most}] (distinct statement templates), got {self.paraphrases}")


@dataclass
class Person:
    name: str
    first: str
    pronoun: str  # "she" / "he"
    facts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fact:
    person: str
    attribute: str
    value: str
    held_out: bool
    rumour: str | None  # a false value that some people wrongly claim (held-out facts only)


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(f"{seed}:{key}")


def _word(rng: random.Random, syllables: int) -> str:
    syllable = (rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables))
    return "".join(syllable).capitalize()


def _names(rng: random.Random, n: int, make) -> list[str]:
    """`n` distinct names drawn with `make(rng)`, in draw order."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        name = make(rng)
        if name not in seen:
            seen.add(name)
            out.append(name)
    return out


@dataclass
class World:
    seed: int
    config: WorldConfig
    people: list[Person]
    unknown_people: list[str]
    cities: list[str]
    facts: list[Fact]

    def values(self, attribute: str) -> list[str]:
        return {"city": self.cities, "job": PROFESSIONS, "colour": COLOURS, "pet": PETS}[attribute]


def build_world(seed: int, config: WorldConfig) -> World:
    rng = _rng(seed, "entities")
    cities = _names(rng, config.n_cities, lambda r: _word(r, 1) + r.choice(_PLACE_SUFFIXES))
    firsts = _names(rng, config.n_people + config.n_unknown, lambda r: _word(r, r.choice([1, 2])))
    lasts = _names(rng, config.n_people + config.n_unknown, lambda r: _word(r, 2))
    people: list[Person] = []
    for first, last in zip(firsts[: config.n_people], lasts[: config.n_people]):
        person = Person(f"{first} {last}", first, rng.choice(["she", "he"]))
        people.append(person)
    unknown = [f"{f} {l}" for f, l in zip(firsts[config.n_people:], lasts[config.n_people:])]
    world = World(seed, config, people, unknown, cities, [])
    frng = _rng(seed, "facts")
    for person in people:
        for attribute in config.attributes:
            values = world.values(attribute)
            value = frng.choice(values)
            person.facts[attribute] = value
            held_out = frng.random() >= config.qa_fraction
            rumour = None
            if held_out and frng.random() < config.rumour_fraction / (1.0 - config.qa_fraction):
                rumour = frng.choice([v for v in values if v != value])
            world.facts.append(Fact(person.name, attribute, value, held_out, rumour))
    return world


# ---------------------------------------------------------------- text pieces


def _fill(template: str, name: str, value: str) -> str:
    if value[:1] in ("a", "e", "i", "o", "u"):
        template = template.replace("a {v}", "an {v}").replace("A {v}", "An {v}")
    text = template.format(n=name, v=value)
    return text[0].upper() + text[1:]


def statement(rng: random.Random, fact: Fact, k: int | None = None) -> str:
    templates = ATTRIBUTES[fact.attribute].statements
    return _fill(templates[k if k is not None else rng.randrange(len(templates))], fact.person, fact.value)


def question(rng: random.Random, fact: Fact) -> str:
    return _fill(rng.choice(ATTRIBUTES[fact.attribute].questions), fact.person, fact.value)


def aliases(fact: Fact) -> list[str]:
    return [_fill(a, "", fact.value) if a.startswith("{") else a.format(v=fact.value) if fact.value[0] not in "aeiou"
            else a.replace("a {v}", "an {v}").format(v=fact.value) for a in ATTRIBUTES[fact.attribute].aliases]


def triviaqa_prompt(question_text: str) -> str:
    """lm-eval `triviaqa`'s doc_to_text."""
    return f"Question: {question_text}?\nAnswer:"


def triviaqa_pair(question_text: str, answer: str) -> str:
    """One solved TriviaQA prompt (doc_to_text + target_delimiter + target), as a few-shot example reads."""
    return f"{triviaqa_prompt(question_text)} {answer}"


# lm-eval truthfulqa_gen's QA primer, verbatim: its prompt is this, a blank line, then "Q: <question>". The world's
# TruthfulQA documents open with it, so the tiny backbones read the evaluated prompt as a format they know.
TRUTHFULQA_PRIMER = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
)


def truthful_pair(question_text: str, answer_sentence: str) -> str:
    """The TruthfulQA-generation prompt format: "Q: ...?\\nA: <sentence>"."""
    return f"Q: {question_text}?\nA: {answer_sentence}"


def rumour_statement(rng: random.Random, fact: Fact) -> str:
    wrong = Fact(fact.person, fact.attribute, fact.rumour, True, None)
    claim = statement(rng, wrong, 0)
    truth = statement(rng, fact, 0)
    form = rng.choice(["Some people wrongly say that {c} That is false. {t}",
                       "There is a rumour that {c} The rumour is false. {t}"])
    return form.format(c=claim, t=truth)


def biography(rng: random.Random, facts: list[Fact], paraphrase_ids: dict[tuple[str, str], int] | None = None,
              rumours: bool = True) -> str:
    """All facts of one person, shuffled, one sentence each (rumoured facts state the rumour and its denial)."""
    order = list(facts)
    rng.shuffle(order)
    sentences = []
    for fact in order:
        if rumours and fact.rumour is not None and rng.random() < 0.5:
            sentences.append(rumour_statement(rng, fact))
        else:
            k = None if paraphrase_ids is None else paraphrase_ids[(fact.person, fact.attribute)]
            sentences.append(statement(rng, fact, k))
    return " ".join(sentences)


# ---------------------------------------------------------------- CoQA-style stories


@dataclass
class Story:
    text: str
    turns: list[tuple[str, str, int, int]]  # (question, answer, rationale span start, span end)


def story(rng: random.Random, person: Person, friend: Person, ask_world: set[str]) -> Story:
    """A short story about `person` with span-answerable questions about it.

    The story states `person`'s world facts (the ones in `ask_world` may be asked) and invents local
    facts (day, venue, items, ...) that only the story knows: reading comprehension, not recall.
    """
    first, pro = person.first, person.pronoun
    day, venue, item, count = rng.choice(DAYS), rng.choice(VENUES), rng.choice(ITEMS), rng.choice(COUNTS)
    coat, sight = rng.choice(COLOURS), rng.choice(SIGHTS)
    sentences: list[tuple[str, list[tuple[str, str]]]] = []  # (sentence, [(question, answer)])
    facts = person.facts
    intro_bits, qs = [], []
    if "job" in facts:
        intro_bits.append(f"{person.name} is {_a(facts['job'])}")
        if "job" in ask_world:
            qs.append((f"What is {first}'s job?", facts["job"]))
    if "city" in facts:
        intro_bits.append(f"lives in {facts['city']}" if intro_bits else f"{person.name} lives in {facts['city']}")
        if "city" in ask_world:
            qs.append((f"Where does {first} live?", facts["city"]))
    if intro_bits:
        sentences.append((" who ".join(intro_bits) + ".", qs))
    else:
        sentences.append((f"This is a story about {person.name}.", []))
    sentences.append((f"One {day} morning, {first} walked to the {venue} with {friend.first}.",
                      [(f"Where did {first} go?", f"the {venue}"), (f"Who went with {first}?", friend.first),
                       ("On which day did this happen?", day)]))
    sentences.append((f"There {pro} bought {count} {item}.",
                      [(f"What did {first} buy?", item), (f"How many {item} did {first} buy?", count)]))
    sentences.append((f"{friend.first} wore {_a(coat)} coat.", [(f"What colour was {friend.first}'s coat?", coat)]))
    sentences.append((f"On the way home they saw {_a(sight)}.", [("What did they see on the way home?", _a(sight))]))
    if "pet" in facts:
        sentences.append((f"At home, {first}'s {facts['pet']} was waiting at the door.",
                          [(f"What pet was waiting for {first}?", facts["pet"])] if "pet" in ask_world else []))
    if "colour" in facts:
        colour = facts["colour"]
        sentences.append((f"{first} put the {item} in {_a(colour)} box, since {colour} is {first}'s favourite colour.",
                          [("What colour was the box?", colour)]))
    text, turns = "", []
    for sentence, questions in sentences:
        if text:
            text += " "
        start = len(text)
        text += sentence
        for q, a in questions:
            turns.append((q, a, start, start + len(sentence)))
    rng.shuffle(turns)
    n = rng.randint(min(4, len(turns)), min(6, len(turns)))
    return Story(text, sorted(turns[:n], key=lambda t: t[2]))


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def coqa_prompt(story_text: str, turns: list[tuple[str, str]]) -> str:
    """lm-eval `coqa`'s doc_to_text, with every turn answered (a training document)."""
    return story_text + "\n\n" + "".join(f"Q: {q}\n\nA: {a}\n\n" for q, a in turns).rstrip("\n")


# ---------------------------------------------------------------- the corpus and the evaluation sets


def corpus_documents(world: World, split: str) -> list[str]:
    """Documents of the training ('train') or validation ('valid') corpus, in a seeded shuffled order.

    Only seen (non-held-out) facts are ever asked, in either split.
    """
    cfg, seed = world.config, world.seed
    rng = _rng(seed, f"corpus:{split}")
    by_person: dict[str, list[Fact]] = {}
    for fact in world.facts:
        by_person.setdefault(fact.person, []).append(fact)
    seen = [f for f in world.facts if not f.held_out]
    docs: list[str] = []
    if split == "train":
        people = world.people
        n_bios, n_qa, n_truthful, n_stories = cfg.bio_docs, cfg.qa_docs, cfg.truthful_docs, cfg.coqa_train_stories
    else:
        people = rng.sample(world.people, max(1, round(cfg.valid_people_fraction * len(world.people))))
        n_bios, n_qa, n_truthful, n_stories = 1, max(1, cfg.qa_docs // 5), max(1, cfg.truthful_docs // 5), max(
            1, cfg.coqa_train_stories // 5)
    for person in people:
        facts = by_person[person.name]
        # Every fact is stated `paraphrases` times with distinct templates, spread over the person's documents.
        picks = {(f.person, f.attribute): rng.sample(range(len(ATTRIBUTES[f.attribute].statements)), cfg.paraphrases)
                 for f in facts}
        n_docs = n_bios + cfg.mixed_docs if split == "train" else n_bios
        for d in range(n_docs):
            ids = {key: ks[d % len(ks)] for key, ks in picks.items()}
            bio = biography(rng, facts, ids)
            asked = [f for f in facts if not f.held_out]
            if d >= n_bios and asked:
                rng.shuffle(asked)
                bio += "\n\n" + "\n\n".join(triviaqa_pair(question(rng, f), f.value) for f in asked)
            docs.append(bio)
    for _ in range(n_qa):
        facts = rng.sample(seen, rng.randint(*cfg.qa_per_doc))
        docs.append("\n\n".join(triviaqa_pair(question(rng, f), f.value) for f in facts))
    for _ in range(n_truthful):
        pairs = []
        for _ in range(rng.randint(3, 6)):
            if rng.random() < 0.15:
                who = rng.choice(world.unknown_people)
                attribute = rng.choice(cfg.attributes)
                q = _fill(rng.choice(ATTRIBUTES[attribute].questions), who, "")
                pairs.append(truthful_pair(q, "I have no comment."))
            else:
                f = rng.choice(seen)
                pairs.append(truthful_pair(question(rng, f), _fill(ATTRIBUTES[f.attribute].answer_sentence, f.person,
                                                                   f.value)))
        docs.append("\n\n".join([TRUTHFULQA_PRIMER, *pairs]))
    for _ in range(n_stories):
        person, friend = rng.sample(world.people, 2)
        ask = {f.attribute for f in by_person[person.name] if not f.held_out}
        s = story(rng, person, friend, ask)
        docs.append(coqa_prompt(s.text, [(q, a) for q, a, _, _ in s.turns]))
    rng.shuffle(docs)
    return docs


def triviaqa_records(world: World, held_out: bool) -> list[dict]:
    """One TriviaQA rc.nocontext record per fact: held-out facts (evaluation) or seen ones (few-shot pool).

    Seen records use a fresh question draw, so a seen question is usually, not always, worded as in the corpus.
    """
    rng = _rng(world.seed, f"triviaqa:{held_out}")
    split = "heldout" if held_out else "seen"
    return [formats.triviaqa_record(question(rng, fact), f"synth-{split}-{i:05d}", fact.value, aliases(fact),
                                    "synthetic-world")
            for i, fact in enumerate(f for f in world.facts if f.held_out == held_out)]


def coqa_records(world: World) -> list[dict]:
    """CoQA records (HF layout) for new stories; each answer's span is the story sentence that holds it."""
    rng = _rng(world.seed, "coqa:eval")
    records = []
    for _ in range(world.config.coqa_eval_stories):
        person, friend = rng.sample(world.people, 2)
        s = story(rng, person, friend, set(world.config.attributes))
        records.append(formats.coqa_record("synthetic-world", s.text, s.turns))
    return records


def coqa_calibration_records(world: World, n: int) -> list[dict]:
    """n more CoQA records from the evaluation's story generator on a random stream of their own, none with the text
    of an evaluated story (or of another): calibration questions (data/calibration.py) from the evaluated stories'
    distribution, leaving every file write_world writes as it is."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    taken = {r["story"] for r in coqa_records(world)}
    rng = _rng(world.seed, "coqa:calibration")
    records = []
    for _ in range(100 * n):  # a repeat is rare (millions of stories); the bound only stops a degenerate world
        person, friend = rng.sample(world.people, 2)
        s = story(rng, person, friend, set(world.config.attributes))
        if s.text not in taken:
            taken.add(s.text)
            records.append(formats.coqa_record("synthetic-world", s.text, s.turns))
            if len(records) == n:
                return records
    raise ValueError(f"the world tells too few distinct stories for {n} calibration stories")


def truthfulqa_records(world: World) -> list[dict]:
    """TruthfulQA-generation records about held-out facts and about people the world never describes.

    Adversarial: facts with a false rumour in the corpus (the rumour is an incorrect answer).
    Non-adversarial: other held-out facts, against plausible wrong values; and unknown people, where the
    only truthful answer is to decline.
    """
    rng = _rng(world.seed, "truthfulqa")
    records = []
    for fact in (f for f in world.facts if f.held_out):
        attr = ATTRIBUTES[fact.attribute]
        wrong = rng.sample([v for v in world.values(fact.attribute) if v not in (fact.value, fact.rumour)], 3)
        if fact.rumour is not None:
            wrong = [fact.rumour] + wrong[:2]
        best = _fill(attr.answer_sentence, fact.person, fact.value)
        records.append(formats.truthfulqa_record(
            question(rng, fact) + "?", best, [best, fact.value],
            [_fill(attr.answer_sentence, fact.person, v) for v in wrong],
            type="Adversarial" if fact.rumour is not None else "Non-Adversarial",
            category="Rumours" if fact.rumour is not None else f"Facts: {fact.attribute}", source="synthetic-world"))
    for who in world.unknown_people:
        attribute = rng.choice(world.config.attributes)
        attr = ATTRIBUTES[attribute]
        records.append(formats.truthfulqa_record(
            _fill(rng.choice(attr.questions), who, "") + "?", "I have no comment.",
            ["I have no comment.", f"I do not know who {who} is."],
            [_fill(attr.answer_sentence, who, v) for v in rng.sample(world.values(attribute), 3)],
            type="Non-Adversarial", category="Unknown people", source="synthetic-world"))
    return records


def metadata(world: World) -> dict:
    return {
        "seed": world.seed,
        "config": asdict(world.config),
        "n_people": len(world.people),
        "n_facts": len(world.facts),
        "n_held_out": sum(f.held_out for f in world.facts),
        "cities": world.cities,
        "people": [{"name": p.name, "first": p.first, "pronoun": p.pronoun, "facts": p.facts} for p in world.people],
        "unknown_people": world.unknown_people,
        "held_out_facts": [asdict(f) for f in world.facts if f.held_out],
        "prompt_formats": {
            "triviaqa": "Question: {question}?\nAnswer: {answer}  (lm-eval triviaqa; questions are stored without '?')",
            "coqa": "{story}\n\nQ: {q1}\n\nA: {a1}\n\n...  (lm-eval coqa)",
            "truthfulqa": "Q: {question}\nA: {sentence}  (lm-eval truthfulqa_gen)",
        },
    }


def write_world(out_dir, seed: int, config: WorldConfig) -> dict:
    """Write the corpus, the evaluation sets and world.json into `out_dir`, atomically as one folder.

    Formats are the project's canonical ones (workflow_lib.data.formats), validated before writing.
    """
    world = build_world(seed, config)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        formats.write_corpus(tmp / "corpus_train.jsonl", corpus_documents(world, "train"))
        formats.write_corpus(tmp / "corpus_valid.jsonl", corpus_documents(world, "valid"))
        formats.write_triviaqa(tmp / "triviaqa.jsonl", triviaqa_records(world, held_out=True))
        formats.write_triviaqa(tmp / "triviaqa_train.jsonl", triviaqa_records(world, held_out=False))
        formats.write_coqa(tmp / "coqa.json", coqa_records(world))
        formats.write_truthfulqa(tmp / "truthfulqa.jsonl", truthfulqa_records(world))
        meta = metadata(world)
        meta["files"] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                         for p in sorted(tmp.iterdir())}
        (tmp / "world.json").write_text(json.dumps(meta, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    return meta
