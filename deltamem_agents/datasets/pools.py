"""Curated value pools, acknowledgements and distractor (chit-chat) exchanges.

Values here are short strings; Faker supplies names, cities, companies and numbers on top (see
``synthetic.py``). Distractor templates are ``(user, assistant)`` pairs with slots ``{name}``,
``{name2}``, ``{city}``, ``{company}``, ``{num}``, ``{weekday}`` and ``{food}`` so that other people
and places appear in the history too. Distractors never talk about "my <relation>" so they do not
contradict the asked fact.
"""

from __future__ import annotations

__all__ = ["POOLS", "FACT_ACKS", "UPDATE_ACKS", "DISTRACTORS", "MONTHS", "WEEKDAYS", "article", "dynamic_distractor"]

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

POOLS: dict[str, tuple[str, ...]] = {
    "pet_name": ("Biscuit", "Pepper", "Luna", "Milo", "Ziggy", "Noodle", "Pickles", "Mochi", "Rocket", "Clover",
                 "Waffles", "Juniper", "Bramble", "Pixel", "Sprout", "Tofu", "Captain", "Olive", "Mango", "Ginger"),
    "food": ("lasagna", "sushi", "pad thai", "paella", "ramen", "tacos", "moussaka", "pierogi", "falafel",
             "risotto", "pho", "goulash", "dumplings", "shakshuka", "enchiladas", "bibimbap", "couscous"),
    "colour": ("teal", "burgundy", "olive green", "navy blue", "mustard yellow", "lavender", "coral", "turquoise",
               "maroon", "charcoal grey", "peach", "emerald green", "crimson"),
    "band": ("Radiohead", "ABBA", "Coldplay", "Fleetwood Mac", "Daft Punk", "Arctic Monkeys", "The Beatles",
             "Queen", "Muse", "Tame Impala", "Pink Floyd", "The Cure", "Gorillaz", "Metallica", "Blondie"),
    "sport": ("badminton", "rugby", "tennis", "volleyball", "cricket", "basketball", "table tennis", "rowing",
              "ice hockey", "handball", "water polo", "fencing", "curling", "baseball"),
    "book": ("Dune", "Moby Dick", "Jane Eyre", "Emma", "Beloved", "Rebecca", "Middlemarch", "Ulysses",
             "Frankenstein", "Dracula", "Persuasion", "Siddhartha", "The Hobbit", "Little Women", "Walden"),
    "movie": ("Casablanca", "Amelie", "Alien", "Jaws", "Vertigo", "Inception", "Up", "Rocky", "Psycho",
              "Fargo", "Heat", "Arrival", "Coco", "Gravity", "Memento", "Whiplash"),
    "drink": ("lemonade", "iced tea", "ginger ale", "kombucha", "hot chocolate", "mango lassi", "root beer",
              "sparkling water", "matcha latte", "apple cider", "horchata", "espresso"),
    "season": ("autumn", "spring", "winter", "summer"),
    "board_game": ("Catan", "Scrabble", "Monopoly", "Carcassonne", "Ticket to Ride", "Pandemic", "Risk",
                   "Cluedo", "Azul", "Chess"),
    "city": ("Porto", "Lisbon", "Valencia", "Leipzig", "Bologna", "Ghent", "Krakow", "Tallinn", "Lyon",
             "Rotterdam", "Bergen", "Graz", "Seville", "Zagreb", "Dublin", "Geneva", "Malmo", "Turin"),
    "destination": ("Lisbon", "Kyoto", "Reykjavik", "Marrakesh", "Buenos Aires", "Hanoi", "Cape Town", "Oslo",
                    "Montreal", "Athens", "Istanbul", "Lima", "Seoul", "Prague", "Vienna", "Edinburgh",
                    "Havana", "Nairobi", "Bangkok", "Santiago"),
    "job": ("nurse", "software engineer", "accountant", "teacher", "architect", "electrician", "data analyst",
            "pharmacist", "chef", "graphic designer", "librarian", "paramedic", "urban planner", "veterinarian",
            "translator", "barista", "civil engineer", "dental hygienist", "copywriter", "lab technician",
            "product manager", "physiotherapist", "carpenter", "journalist", "optometrist"),
    "car": ("Toyota", "Honda", "Volvo", "Subaru", "Tesla", "Ford", "Kia", "Mazda", "Audi", "Skoda", "Peugeot",
            "Fiat", "Hyundai", "Renault", "Nissan", "BMW", "Opel", "Citroen", "Lexus", "Mini"),
    "seat": ("window", "aisle", "exit row", "front row"),
    "coffee": ("black", "decaf", "iced", "oat milk", "extra strong", "filter"),
    "tea": ("green", "mint", "Earl Grey", "chamomile", "rooibos", "jasmine", "chai"),
    "meal": ("vegetarian", "vegan", "gluten-free", "low-carb", "spicy", "home-cooked"),
    "holiday": ("beach", "city", "camping", "ski", "hiking", "cruise"),
    "hotel": ("quiet", "top-floor", "sea-view", "ground-floor", "non-smoking"),
    "weather": ("light rain", "sunny spells", "heavy showers", "thunderstorms", "overcast", "clear skies",
                "drizzle", "snow flurries", "strong winds", "fog in the morning"),
    "event_title": ("Team sync", "Budget review", "Yoga class", "Lunch with Sam", "Project demo", "Piano lesson",
                    "Book club", "Client call", "Design critique", "Standup", "Parent meeting", "Gym session"),
    "carrier": ("DHL", "UPS", "FedEx", "Royal Mail", "DPD", "GLS"),
    "restaurant": ("Casa Lupa", "The Olive Tree", "Sakura House", "Little Saigon", "El Faro", "Blue Door Bistro",
                   "Trattoria Nonna", "Spice Route", "Harbour Grill"),
}

FACT_ACKS = (
    "Got it.", "Thanks for letting me know!", "Noted — I'll remember that.", "Okay, good to know.",
    "Sounds good.", "Nice, thanks for sharing.", "Understood.", "I'll keep that in mind.",
    "Great, noted: {v}.", "Got it — {v}.", "Thanks — {v}, noted.", "Good to know, I'll remember {v}.",
    "Cool!", "Alright, noted.", "Thanks, that's helpful to know.",
)

UPDATE_ACKS = (
    "Thanks for the update!", "Got it, I've updated that.", "Okay, noted the change.",
    "Understood — {v} from now on.", "Updated: {v}.", "Good to know, thanks for correcting that.",
    "Alright, I'll remember the new one.", "Noted, it's {v} now.",
)

DISTRACTORS: tuple[tuple[str, str], ...] = (
    ("How's your day going?", "Pretty good, thanks for asking! What can I help you with?"),
    ("Can you suggest a quick dinner idea?", "How about a vegetable stir-fry with rice? It takes about 20 minutes."),
    ("What's a good way to stay focused while working?", "Try short timed work blocks with small breaks in between."),
    ("Tell me a fun fact.", "Octopuses have three hearts and blue blood."),
    ("How many legs does a spider have?", "Eight."),
    ("What's the boiling point of water in Celsius?", "100 degrees at sea level."),
    ("Give me a word that rhymes with cat.", "Hat."),
    ("What's 12 times 7?", "84."),
    ("Any tips for sleeping better?", "Keep a regular schedule and avoid screens right before bed."),
    ("What's the capital of Canada?", "Ottawa."),
    ("Is it better to stretch before or after running?", "Light dynamic moves before, longer stretches after."),
    ("Can you recommend a podcast genre for a long drive?", "True crime or history podcasts work well for long drives."),
    ("I just watched a documentary about whales.", "Sounds great! Whales are fascinating animals."),
    ("How do I keep basil alive indoors?", "Give it lots of light and water it when the top soil feels dry."),
    ("What's a synonym for happy?", "Cheerful."),
    ("It's raining again here.", "Sorry to hear that — a good day for a book and some tea."),
    ("How long should I boil an egg?", "About 7 minutes for a jammy yolk, 10 for hard-boiled."),
    ("What does CPU stand for?", "Central processing unit."),
    ("I'm thinking of learning to juggle.", "Fun! Start with two balls and add the third once it feels easy."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci."),
    ("{name} from the book club just moved to {city}.", "That's a big change — I hope {name} settles in well."),
    ("I ran into {name} at the station this morning.", "Nice coincidence! Did you have time to chat?"),
    ("{name} and {name2} are organising a picnic on {weekday}.", "That sounds lovely. I hope the weather holds."),
    ("A guy named {name} told me {city} has great street food.", "Worth a visit then — street food is a great way to explore."),
    ("I read an article about {company} today.", "Interesting! Companies like that are often in the news."),
    ("{name} recommended a {food} place in {city}.", "Sounds tasty. Let me know if you try it."),
    ("My old classmate {name} works at {company} now.", "Good for them! It's nice to hear how people are doing."),
    ("Someone at the café was talking about {city} all morning.", "Sounds like they really like that place."),
    ("There's a concert in {city} on {weekday}.", "Could be fun if you're in the area."),
    ("{name} asked me to water their plants while they're away.", "That's kind of you. Don't forget the ones in the shade."),
    ("The bus number {num} was late again.", "That's annoying. Maybe check the live tracker next time."),
    ("I saw a poster for a {food} festival.", "Food festivals are a great way to try new dishes."),
    ("Can you help me name a houseplant?", "How about Fernando? It's a classic."),
    ("What's a good stretch for a stiff neck?", "Slowly tilt your ear toward each shoulder and hold for 20 seconds."),
    ("{name2} says {company} is hiring.", "Good to know if anyone you know is looking for a job."),
    ("Room {num} at the library was packed today.", "Exams must be coming up."),
    ("I tried a new {food} recipe last night.", "How did it turn out?"),
    ("What's the difference between weather and climate?", "Weather is day to day; climate is the long-term average."),
    ("Should I bring an umbrella on {weekday}?", "If rain is forecast, better safe than sorry."),
    ("Give me a quick motivational quote.", "Small steps every day add up to big results."),
    ("What's a good name for a sourdough starter?", "Bread Pitt is a popular choice."),
    ("How do I remove a coffee stain?", "Blot it, then rinse with cold water and a little dish soap."),
    ("Which planet is closest to the sun?", "Mercury."),
    ("How many minutes are in a day?", "1440."),
    ("What's the opposite of generous?", "Stingy."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red light."),
    ("Can you recommend a board game for two people?", "Patchwork is a great two-player game."),
    ("What's a healthy snack for the afternoon?", "A handful of nuts or some yogurt with fruit."),
    ("I finally cleaned out the garage.", "Nice work! That always feels good."),
    ("The neighbours' kids are learning the trumpet.", "Hopefully they practise at reasonable hours."),
    ("{name} sent me photos from a trip to {city}.", "Sounds like {name} had a great time."),
    ("{name} is running a half marathon in {city} next month.", "Impressive! I hope the training goes well."),
    ("Apparently {company} opened a new office in {city}.", "Interesting, they must be growing."),
    ("{name} and I watched a match on {weekday}.", "Fun! Was it a close game?"),
    ("I met someone called {name2} at a workshop.", "Nice, workshops are good for meeting people."),
    ("A delivery driver from {company} knocked on the wrong door.", "That happens — hopefully the parcel found its owner."),
    ("{name} swears the best {food} is in {city}.", "Everyone has a favourite spot for that."),
    ("How do I say thank you in Spanish?", "Gracias."),
    ("What's a quick way to cool down a hot room?", "Close the blinds in the day and open windows at night."),
    ("What's the longest river in Africa?", "The Nile."),
)

def dynamic_distractor(rng) -> tuple[str, str]:
    """A generated exchange (arithmetic, unit conversion, weekdays), for unbounded variety."""
    k = rng.randrange(4)
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    if k == 0:
        return f"Quick one: what's {a} plus {b}?", f"{a + b}."
    if k == 1:
        return f"What's {a} times {b % 12 + 2}?", f"{a * (b % 12 + 2)}."
    if k == 2:
        return f"How many metres are in {a} kilometres?", f"{a * 1000} metres."
    i = rng.randrange(7)
    return f"What day comes after {WEEKDAYS[i]}?", f"{WEEKDAYS[(i + 1) % 7]}."


_VOWEL_SOUND_EXCEPTIONS = {"hour", "honest", "heir"}
_CONSONANT_SOUND_EXCEPTIONS = ("uni", "use", "euro", "one")


def article(word: str) -> str:
    """Indefinite article for ``word`` ("a" / "an"), good enough for the pools above."""
    w = word.strip().lower()
    if not w:
        return "a"
    if any(w.startswith(x) for x in _VOWEL_SOUND_EXCEPTIONS):
        return "an"
    if w.startswith(_CONSONANT_SOUND_EXCEPTIONS):
        return "a"
    return "an" if w[0] in "aeiou" else "a"
