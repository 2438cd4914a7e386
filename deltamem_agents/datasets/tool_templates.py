"""Tool-call scenarios: a user request, an assistant tool call, a JSON tool result, a summary.

The asked value lives in the tool message's JSON content (a weather lookup's condition, a
calendar event's time, a flight's gate, a parcel's delivery date, ...). Each scenario has request
(``r``) and question (``q``) templates split into TRAIN and HELDOUT lists with disjoint ids
``"tool_<key>.<r|q><n>"``; scenarios flagged ``heldout_only`` have held-out templates only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from .pools import MONTHS, POOLS, WEEKDAYS

__all__ = ["ToolScenario", "TOOL_SCENARIOS", "tool_scenarios", "tool_templates"]

_DAYS = WEEKDAYS


def _date(rng: random.Random) -> str:
    return f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"


def _time(rng: random.Random, first: int = 7, last: int = 20) -> str:
    return f"{rng.randint(first, last):02d}:{rng.choice((0, 15, 30, 45)):02d}"


def _weather(rng, fake) -> dict:
    city, day = fake.city() if rng.random() < 0.4 else rng.choice(POOLS["destination"]), rng.choice(_DAYS)
    cond = rng.choice(POOLS["weather"])
    hi = rng.randint(-6, 2) if "snow" in cond else rng.randint(4, 34)
    return {"args": {"city": city, "day": day},
            "result": {"city": city, "day": day, "condition": cond, "high_c": hi, "low_c": hi - rng.randint(3, 9)},
            "value": cond, "slots": {"city": city, "day": day, "high": hi}}


def _calendar(rng, fake) -> dict:
    day = rng.choice(WEEKDAYS)
    t1, t2 = rng.sample(POOLS["event_title"], 2)
    h1, h2 = _time(rng), _time(rng)
    while h2 == h1:
        h2 = _time(rng)
    events = [{"title": t1, "time": h1}, {"title": t2, "time": h2}]
    asked = rng.randrange(2)
    return {"args": {"date": day}, "result": {"date": day, "events": events}, "value": events[asked]["time"],
            "slots": {"day": day, "title": events[asked]["title"], "t1": t1, "h1": h1, "t2": t2, "h2": h2}}


def _flight(rng, fake) -> dict:
    flight = f"{rng.choice(('TP', 'LH', 'BA', 'KL', 'IB', 'AZ', 'SK'))} {rng.randint(100, 2999)}"
    gate = f"{rng.choice('ABCDEFG')}{rng.randint(1, 48)}"
    status, dep = rng.choice(("on time", "delayed by 20 minutes", "boarding soon")), _time(rng)
    return {"args": {"flight_number": flight},
            "result": {"flight": flight, "status": status, "gate": gate, "departure": dep},
            "value": gate, "slots": {"flight": flight, "status": status, "dep": dep}}


def _package(rng, fake) -> dict:
    tid, carrier, eta = f"{rng.choice('ZXQJ')}{rng.randint(10**8, 10**9 - 1)}", rng.choice(POOLS["carrier"]), _date(rng)
    return {"args": {"tracking_id": tid},
            "result": {"tracking_id": tid, "carrier": carrier, "status": "in transit", "eta": eta},
            "value": eta, "slots": {"tid": tid, "carrier": carrier}}


def _reservation(rng, fake) -> dict:
    rest, table, n, t = rng.choice(POOLS["restaurant"]), str(rng.randint(10, 60)), rng.randint(2, 8), _time(rng, 18, 21)
    return {"args": {"restaurant": rest}, "result": {"restaurant": rest, "time": t, "party_size": n, "table": table},
            "value": table, "slots": {"restaurant": rest, "time": t, "n": n}}


def _contact(rng, fake) -> dict:
    name, ext = fake.first_name(), str(rng.randint(1000, 9999))
    dept = rng.choice(("Finance", "Legal", "Marketing", "IT support", "Sales", "HR"))
    return {"args": {"name": name},
            "result": {"name": name, "department": dept, "extension": ext, "email": f"{name.lower()}@example.com"},
            "value": ext, "slots": {"name": name, "dept": dept}}


@dataclass(frozen=True)
class ToolScenario:
    """A tool lookup whose result holds the asked value."""

    key: str
    function: str
    build: Callable
    requests: tuple[list[str], list[str]]
    questions: tuple[list[str], list[str]]
    summary: str
    heldout_only: bool = False


TOOL_SCENARIOS: tuple[ToolScenario, ...] = (
    ToolScenario(
        "weather", "get_weather", _weather,
        (["What's the weather going to be like in {city} on {day}?", "Can you check the forecast for {city} on {day}?",
          "Look up the weather in {city} for {day}, please.", "Will I need a jacket in {city} on {day}? Check the forecast."],
         ["Pull up the forecast for {city}, {day}.", "I'm curious about the weather in {city} on {day} — can you look?"]),
        (["What did the forecast say for {city} on {day}?", "What weather is expected in {city} on {day}?",
          "What was the forecast for {city} on {day} again?", "Remind me of the weather forecast for {city} on {day}."],
         ["What conditions did the weather lookup show for {city} on {day}?",
          "According to the forecast you found, what will {city} be like on {day}?"]),
        "The forecast for {city} on {day} is {v}, with a high of {high}°C."),
    ToolScenario(
        "calendar", "get_calendar_events", _calendar,
        (["What's on my calendar for {day}?", "Can you check my schedule on {day}?", "Look up my calendar for {day}.",
          "Do I have anything booked on {day}?"],
         ["Pull up my agenda for {day}.", "What does {day} look like in my calendar?"]),
        (['What time is "{title}" on {day}?', 'When does "{title}" start on {day}?',
          'At what time is "{title}" scheduled on {day}?', 'Remind me what time "{title}" is on {day}.'],
         ['What start time did the calendar show for "{title}" on {day}?', 'On {day}, when is "{title}" happening?']),
        'On {day} you have "{t1}" at {h1} and "{t2}" at {h2}.'),
    ToolScenario(
        "flight", "get_flight_status", _flight,
        (["Can you check the status of flight {flight}?", "Is my flight {flight} on time?", "Look up flight {flight} for me.",
          "What's the latest on flight {flight}?"],
         ["Pull up the status for {flight}, please.", "Any news about flight {flight}?"]),
        (["Which gate does flight {flight} leave from?", "What gate is my flight {flight} at?",
          "Remind me of the gate for flight {flight}.", "What was the departure gate for {flight}?"],
         ["At which gate should I board {flight}?", "Where do I board flight {flight} — which gate?"]),
        "Flight {flight} is {status}, departing at {dep} from gate {v}."),
    ToolScenario(
        "package", "track_package", _package,
        (["Can you track my {carrier} package {tid}?", "Where's my parcel? Tracking number {tid}.",
          "Check the delivery status of {tid}, please.", "Track package {tid} for me."],
         ["Any update on shipment {tid}?", "Has my {carrier} delivery {tid} moved?"]),
        (["When is my {carrier} package supposed to arrive?", "What's the delivery date for my {carrier} parcel?",
          "When will the {carrier} package get here?", "What ETA did the tracking show for my {carrier} package?"],
         ["On what day should I expect the {carrier} delivery?", "Remind me when the {carrier} parcel is due."]),
        "Your {carrier} package {tid} is in transit and should arrive on {v}."),
    ToolScenario(
        "reservation", "get_reservation", _reservation,
        ([], ["Can you look up my reservation at {restaurant}?", "Check my booking at {restaurant}, please.",
              "Do I have a table booked at {restaurant}?", "Find my dinner reservation at {restaurant}."]),
        ([], ["Which table did we get at {restaurant}?", "What's our table number at {restaurant}?",
              "Remind me of the table number for {restaurant}.", "What table are we at in {restaurant}?"]),
        "Your table at {restaurant} is booked for {time}, party of {n}, table {v}.", heldout_only=True),
    ToolScenario(
        "contact", "lookup_contact", _contact,
        ([], ["Look up {name}'s contact details.", "Can you find {name} in the company directory?",
              "Get me the directory entry for {name}.", "Search the staff directory for {name}, please."]),
        ([], ["What's {name}'s phone extension?", "Which extension should I dial to reach {name}?",
              "Remind me of {name}'s extension.", "What number do I call to get {name} at work?"]),
        "{name} is in {dept}, extension {v}.", heldout_only=True),
)


def tool_scenarios(split: str) -> list[ToolScenario]:
    """Scenarios usable in ``split`` (train excludes held-out-only ones)."""
    return [s for s in TOOL_SCENARIOS if split == "heldout" or not s.heldout_only]


def tool_templates(scenario: ToolScenario, part: str, split: str) -> list[tuple[str, str]]:
    """``[(template_id, text), ...]`` for part "r" (request) or "q" (question) in ``split``."""
    train, held = scenario.requests if part == "r" else scenario.questions
    items = [(t, "train") for t in train] + [(t, "heldout") for t in held]
    return [(f"tool_{scenario.key}.{part}{i}", t) for i, (t, sp) in enumerate(items) if sp == split]
