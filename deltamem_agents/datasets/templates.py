"""Paraphrase templates and relation types for synthetic personal-fact conversations.

Each *family* groups relations stated and asked with the same phrasings (slots such as ``{who}``
or ``{thing}`` come from the relation, ``{v}`` is the value, ``{old}`` the previous value in an
update, ``{a}`` / ``{a_old}`` the indefinite article for ``{v}`` / ``{old}``). Every family has
statement (``s``), question (``q``) and, when updatable, update (``u``) templates, split into a
TRAIN list and a disjoint HELDOUT list. Template ids are ``"<family>.<s|q|u><n>"``: the hand-written
train ids come first, then the held-out ones, then the *generated* train paraphrases of
:mod:`.paraphrase` (numbered last so held-out ids never move), so the two splits never share an id.
Relations flagged ``heldout_only`` never appear in training episodes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .paraphrase import generated

__all__ = ["Template", "Relation", "FAMILIES", "RELATIONS", "relation", "relations", "templates", "template_inventory"]

# family -> {"s": (train, heldout), "q": (train, heldout), "u": (train, heldout)}
_RAW: dict[str, dict[str, tuple[list[str], list[str]]]] = {
    "name": {
        "s": (["My {who}'s name is {v}.", "By the way, my {who} is called {v}.",
               "Quick thing to remember: my {who} is {v}.", "{v} is my {who}'s name.",
               "You might hear me mention {v} — that's my {who}."],
              ["Oh, and my {who} goes by {v}.", "For the record, my {who} answers to {v}.",
               "Whenever I talk about {v}, I mean my {who}."]),
        "q": (["What's my {who}'s name?", "What is my {who} called?", "Do you remember the name of my {who}?",
               "Can you remind me what my {who}'s name is?", "What did I tell you my {who}'s name was?"],
              ["Who is my {who}, again?", "Remind me, what name does my {who} go by?",
               "I forgot — what's the name of my {who}?"]),
        "u": (["Heads up, I have a new {who} now: {v}.", "Things changed — my {who} is now {v}, not {old}.",
               "Actually, my {who} is {v} now."],
              ["Recent change: {v} has taken over as my {who}.",
               "Just so you know, {old} is no longer my {who}; it's {v} now."]),
    },
    "favourite": {
        "s": (["My favourite {thing} is {v}.", "I'd say {v} is my favourite {thing}.",
               "Nothing beats {v} — that's my favourite {thing}.", "If you ever wonder, my favourite {thing} is {v}.",
               "I really love {v}; it's my favourite {thing}."],
              ["Hands down, the {thing} I like best is {v}.", "Ask me my top {thing} and I'll always say {v}.",
               "{v} will always be my number one {thing}."]),
        "q": (["What's my favourite {thing}?", "Which {thing} do I like the most?", "Do you remember my favourite {thing}?",
               "Can you tell me what my favourite {thing} is?", "What did I say my favourite {thing} was?"],
              ["Which {thing} is my number one?", "What {thing} would I pick above all others?",
               "Quick quiz: name my top {thing}."]),
        "u": (["Actually, my favourite {thing} is {v} now.", "I've changed my mind — my new favourite {thing} is {v}.",
               "These days I prefer {v}; it's my favourite {thing} now, not {old}.",
               # update phrasings with the value first and the old value before / after the new one, so an update
               # is learned as a change of the relation, not as three sentences
               "{v} is my favourite {thing} these days.", "Update: my favourite {thing} is now {v}.",
               "I used to love {old}, but now my favourite {thing} is {v}.",
               "My favourite {thing} changed from {old} to {v}.", "Forget {old}; {v} is my favourite {thing} now.",
               "New favourite {thing}: {v}. Not {old} anymore.", "{v} took over from {old} as my favourite {thing}.",
               "I'm over {old} — {v} is the {thing} I love most now."],
              ["Lately {v} has become my number one {thing}.", "Scratch that, {v} has replaced {old} as my top {thing}."]),
    },
    "home": {
        "s": (["I live in {v}.", "My home is in {v} these days.", "I'm based in {v}.", "These days I'm living in {v}.",
               "I rent a place in {v}."],
              ["{v} is where I call home now.", "Home for me is {v}.", "I've settled down in {v}."]),
        "q": (["Which city do I live in?", "Where do I live?", "What city am I based in?", "Do you remember where I live?",
               "Where's my home these days?"],
              ["In which city is my home?", "Remind me, where do I call home?", "Which town have I settled in?"]),
        "u": (["Actually, I moved to {v} last week.", "Big news: I just moved from {old} to {v}.",
               "I don't live in {old} anymore — I'm in {v} now."],
              ["Since last month my home has been {v}.", "I've relocated to {v}."]),
    },
    "hometown": {
        "s": (["I grew up in {v}.", "My hometown is {v}.", "I was raised in {v}.", "I spent my childhood in {v}.",
               "Originally I'm from {v}."],
              ["{v} is the town where I was a kid.", "My roots are in {v}.", "Back when I was young, I lived in {v}."]),
        "q": (["Where did I grow up?", "What's my hometown?", "Where was I raised?", "Which town am I originally from?",
               "Where did I spend my childhood?"],
              ["Where are my roots?", "In what town was I a kid?", "Remind me where I'm from originally."]),
    },
    "employer": {
        "s": (["I work at {v}.", "My employer is {v}.", "I've got a job at {v}.", "I'm employed by {v}.",
               "My company is {v}."],
              ["{v} pays my salary.", "Every weekday I go to the office at {v}.", "I'm on the payroll at {v}."]),
        "q": (["Where do I work?", "Which company do I work for?", "Who is my employer?", "What's the name of my company?",
               "Do you remember where I work?"],
              ["Who pays my salary?", "Which firm am I on the payroll at?",
               "Which company do I go to every weekday?"]),
        "u": (["I switched jobs — I now work at {v}.", "Actually, I left {old} and joined {v}.",
               "Update: my new employer is {v}."],
              ["Starting this month I'm with {v}.", "I've been hired by {v}, so no more {old}."]),
    },
    "job": {
        "s": (["I work as {a} {v}.", "My job title is {v}.", "I'm {a} {v} by profession.", "Professionally, I'm {a} {v}.",
               "My job? I'm {a} {v}."],
              ["I earn my living as {a} {v}.", "My business card says {v}.", "For work I'm {a} {v}."]),
        "q": (["What's my job?", "What do I do for a living?", "What is my job title?", "What's my profession?",
               "Do you remember what I work as?"],
              ["How do I earn my living?", "What does my business card say my job is?", "What kind of work do I do?"]),
        "u": (["I got promoted — I'm now {a} {v}.", "Actually, I changed careers and became {a} {v}.",
               "My title changed to {v}."],
              ["I'm no longer {a_old} {old}; I'm {a} {v} now.", "These days I earn my living as {a} {v}."]),
    },
    "car": {
        "s": (["I drive {a} {v}.", "My car is {a} {v}.", "I own {a} {v}.", "The car I drive is {a} {v}.",
               "I bought {a} {v} a few years ago."],
              ["My daily ride is {a} {v}.", "Parked outside is my {v}.", "I get around in {a} {v}."]),
        "q": (["What car do I drive?", "Which car brand do I own?", "What kind of car do I have?", "What's my car?",
               "Do you remember what I drive?"],
              ["What's my daily ride?", "What brand is the car parked outside my place?", "What do I get around in?"]),
        "u": (["I just sold my {old} and bought {a} {v}.", "Update: I drive {a} {v} now.", "My new car is {a} {v}."],
              ["I traded in the {old} for {a} {v}.", "These days I get around in {a} {v}."]),
    },
    "date": {
        "s": (["My {what} is on {v}.", "Mark it down: my {what} is {v}.", "I celebrate my {what} on {v}.",
               "My {what} falls on {v}.", "Remember that my {what} is {v}."],
              ["Every year on {v} it's my {what}.", "{v} is the date of my {what}.", "Save the date: {v} is my {what}."]),
        "q": (["When is my {what}?", "What date is my {what}?", "Do you remember when my {what} is?",
               "On what day is my {what}?", "When do I celebrate my {what}?"],
              ["Which date should I save for my {what}?", "Remind me of the date of my {what}.",
               "My {what} — what day was it again?"]),
    },
    "number": {
        "s": (["My {thing} is {v}.", "Note that my {thing} is {v}.", "Please remember my {thing}: {v}.",
               "For reference, my {thing} is {v}.", "Just so you have it, my {thing} is {v}."],
              ["Jot this down, my {thing} is {v}.", "{v} — that's my {thing}.", "In case I forget, my {thing} is {v}."]),
        "q": (["What's my {thing}?", "What is my {thing} again?", "Can you remind me of my {thing}?",
               "Do you remember my {thing}?", "What did I say my {thing} was?"],
              ["I forgot my {thing} — what is it?", "Which number is my {thing}?", "Tell me my {thing}, please."]),
        "u": (["Update: my {thing} is now {v}.", "Heads up, my {thing} changed from {old} to {v}.",
               "My {thing} changed; it's {v} now."],
              ["New {thing} as of today: {v}.", "Forget {old}; my {thing} is {v} now."]),
    },
    "appointment": {
        "s": (["I have a {event} on {v}.", "My {event} is scheduled for {v}.", "Don't let me forget my {event} on {v}.",
               "I booked a {event} for {v}.", "There's a {event} in my calendar on {v}."],
              ["On {v} I've got my {event}.", "I'll be at my {event} on {v}.", "{v} is the day of my {event}."]),
        "q": (["When is my {event}?", "What date is my {event}?", "For which date did I book my {event}?",
               "Do you remember when my {event} is?", "On what day is my {event}?"],
              ["Which day will I be at my {event}?", "Remind me of the date of my {event}.",
               "My {event} — when was that again?"]),
        "u": (["My {event} got moved to {v}.", "Actually, I rescheduled my {event} to {v}.",
               "Change of plans: the {event} is now on {v}, not {old}."],
              ["They pushed my {event} to {v}.", "The {event} on {old} is cancelled; it's {v} now."]),
    },
    "trip": {
        "s": (["I'm flying to {v} in {month}.", "In {month} I'm taking a trip to {v}.", "I booked flights to {v} for {month}.",
               "My {month} trip is to {v}.", "I'm heading to {v} in {month}."],
              ["Come {month}, I'll be in {v}.", "{v} is where I'm travelling in {month}.",
               "I've got a {month} getaway planned to {v}."]),
        "q": (["Where am I flying in {month}?", "Where is my {month} trip to?", "Which city am I visiting in {month}?",
               "Where did I book flights to for {month}?", "Where am I heading in {month}?"],
              ["Where will I be in {month}?", "What's the destination of my {month} getaway?",
               "Which place am I travelling to in {month}?"]),
        "u": (["Change of plans: I'm flying to {v} in {month} instead.", "I cancelled {old}; my {month} trip is to {v} now.",
               "Update: in {month} I'm going to {v}."],
              ["My {month} getaway moved from {old} to {v}.", "Come {month}, I'll be in {v} after all."]),
    },
    "preference": {
        "s": (["I prefer {v} {thing}.", "I always go for {v} {thing}.", "Given the choice, I'd take {v} {thing}.",
               "I'm really into {v} {thing}.", "For me it's always {v} {thing}."],
              ["Whenever I can, I choose {v} {thing}.", "You'll always find me picking {v} {thing}.",
               "My pick is always {v} {thing}."]),
        "q": (["What kind of {thing} do I prefer?", "Which {thing} do I always go for?",
               "What type of {thing} would I take, given the choice?", "Do you remember what kind of {thing} I like?",
               "What's my preferred kind of {thing}?"],
              ["Which sort of {thing} do I choose whenever I can?", "What kind of {thing} would you find me picking?",
               "Remind me which {thing} I pick every time."]),
        "u": (["I've switched to {v} {thing} lately.", "These days I prefer {v} {thing} over {old}.",
               "Actually, I now prefer {v} {thing}."],
              ["Lately my pick has become {v} {thing}.", "No more {old} {thing} for me — {v} from now on."]),
    },
}


@dataclass(frozen=True)
class Template:
    """One phrasing: ``id`` like ``"home.q3"``, ``part`` in s/q/u, ``split`` train/heldout."""

    id: str
    family: str
    part: str
    split: str
    text: str


def _build() -> dict[str, dict[str, dict[str, tuple[Template, ...]]]]:
    out: dict = {}
    for fam, parts in _RAW.items():
        out[fam] = {}
        for part, (train, held) in parts.items():
            items = [(t, "train") for t in train] + [(t, "heldout") for t in held]
            items += [(t, "train") for t in generated(fam, part) if t not in train and t not in held]
            tpls = [Template(f"{fam}.{part}{i}", fam, part, sp, txt) for i, (txt, sp) in enumerate(items)]
            out[fam][part] = {sp: tuple(t for t in tpls if t.split == sp) for sp in ("train", "heldout")}
    return out


FAMILIES = _build()


@dataclass(frozen=True)
class Relation:
    """A fact type: key, template family, fixed slots, value generator kind and flags."""

    key: str
    family: str
    value_kind: str
    slots: dict = field(default_factory=dict)
    heldout_only: bool = False
    updatable: bool = True


def _r(key, family, value_kind, heldout_only=False, updatable=None, **slots) -> Relation:
    if updatable is None:
        updatable = "u" in _RAW[family]
    return Relation(key, family, value_kind, dict(slots), heldout_only, updatable)


RELATIONS: tuple[Relation, ...] = (
    # people and pets (names)
    _r("sister_name", "name", "female_name", updatable=False, who="sister"),
    _r("brother_name", "name", "male_name", updatable=False, who="brother"),
    _r("mother_name", "name", "female_name", updatable=False, who="mother"),
    _r("father_name", "name", "male_name", updatable=False, who="father"),
    _r("son_name", "name", "male_name", updatable=False, who="son"),
    _r("daughter_name", "name", "female_name", updatable=False, who="daughter"),
    _r("best_friend_name", "name", "first_name", who="best friend"),
    _r("manager_name", "name", "first_name", who="manager"),
    _r("coworker_name", "name", "first_name", who="coworker"),
    _r("neighbour_name", "name", "first_name", who="neighbour"),
    _r("partner_name", "name", "first_name", updatable=False, who="partner"),
    _r("dog_name", "name", "pet_name", updatable=False, who="dog"),
    _r("cat_name", "name", "pet_name", updatable=False, who="cat"),
    _r("cousin_name", "name", "first_name", heldout_only=True, updatable=False, who="cousin"),
    _r("landlord_name", "name", "first_name", heldout_only=True, who="landlord"),
    _r("parrot_name", "name", "pet_name", heldout_only=True, updatable=False, who="parrot"),
    # favourites
    _r("favourite_food", "favourite", "food", thing="food"),
    _r("favourite_colour", "favourite", "colour", thing="colour"),
    _r("favourite_band", "favourite", "band", thing="band"),
    _r("favourite_sport", "favourite", "sport", thing="sport"),
    _r("favourite_book", "favourite", "book", thing="book"),
    _r("favourite_movie", "favourite", "movie", thing="movie"),
    _r("favourite_drink", "favourite", "drink", thing="drink"),
    _r("favourite_season", "favourite", "season", heldout_only=True, thing="season"),
    _r("favourite_board_game", "favourite", "board_game", heldout_only=True, thing="board game"),
    # places, work, car
    _r("home_city", "home", "city"),
    _r("hometown", "hometown", "city"),
    _r("employer", "employer", "company"),
    _r("job_title", "job", "job"),
    _r("car_brand", "car", "car"),
    # dates
    _r("birthday", "date", "date", what="birthday"),
    _r("anniversary", "date", "date", what="wedding anniversary"),
    _r("mother_birthday", "date", "date", heldout_only=True, what="mum's birthday"),
    # numbers
    _r("apartment_number", "number", "num3", thing="apartment number"),
    _r("locker_code", "number", "code4", thing="locker code"),
    _r("bike_lock_pin", "number", "code4", thing="bike lock PIN"),
    _r("phone_extension", "number", "ext", thing="phone extension"),
    _r("gym_member_number", "number", "code6", thing="gym membership number"),
    _r("gate_code", "number", "code4", heldout_only=True, thing="building gate code"),
    _r("parking_spot", "number", "num3", heldout_only=True, thing="parking spot number"),
    # events
    _r("dentist_date", "appointment", "date", event="dentist appointment"),
    _r("haircut_date", "appointment", "date", event="haircut"),
    _r("interview_date", "appointment", "date", event="job interview"),
    _r("doctor_date", "appointment", "date", event="doctor's appointment"),
    _r("car_service_date", "appointment", "date", event="car service"),
    _r("eye_exam_date", "appointment", "date", heldout_only=True, event="eye exam"),
    _r("pt_meeting_date", "appointment", "date", heldout_only=True, event="parent-teacher meeting"),
    # plans
    _r("trip_destination", "trip", "destination"),
    # preferences
    _r("seat_pref", "preference", "seat", thing="seats"),
    _r("coffee_pref", "preference", "coffee", thing="coffee"),
    _r("tea_pref", "preference", "tea", thing="tea"),
    _r("meal_pref", "preference", "meal", thing="meals"),
    _r("holiday_pref", "preference", "holiday", thing="holidays"),
    _r("hotel_pref", "preference", "hotel", heldout_only=True, thing="hotel rooms"),
)

_BY_KEY = {r.key: r for r in RELATIONS}


def relation(key: str) -> Relation:
    """The relation with this key."""
    return _BY_KEY[key]


def relations(split: str, *, updatable: bool | None = None) -> list[Relation]:
    """Relations usable in ``split`` (train excludes held-out-only ones)."""
    out = [r for r in RELATIONS if split == "heldout" or not r.heldout_only]
    if updatable is not None:
        out = [r for r in out if r.updatable == updatable]
    return out


def templates(family: str, part: str, split: str) -> tuple[Template, ...]:
    """Templates of ``family`` for ``part`` ("s", "q" or "u") in ``split``."""
    return FAMILIES[family][part][split]


def template_inventory() -> dict:
    """Counts per split (relations and templates), for reports and tests."""
    inv: dict = {}
    for sp in ("train", "heldout"):
        ids = [t.id for fam in FAMILIES.values() for part in fam.values() for t in part[sp]]
        inv[sp] = {"relations": len(relations(sp)), "templates": len(ids), "template_ids": sorted(ids)}
    inv["heldout_only_relations"] = [r.key for r in RELATIONS if r.heldout_only]
    return inv
