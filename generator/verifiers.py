"""Verifiable constraints: instructions whose answers a program can check (IFEval-style).

A constraint type knows three things, kept together here:
- how to pick its parameters (`sample`),
- how to say it, in two disjoint sets of phrasings: "train" ones that `sprout generate
  --constraints P` appends to generated instructions, and "eval" ones used only by the held-out
  verifiable eval set -- so a student that improves on the eval set learned the constraint, not
  one wording of it;
- how to check an answer (`check`), strictly, and loosely (IFEval's loose mode: also accept the
  answer with markdown emphasis removed, or its first / last line dropped).

A constraint travels as a plain dict {"type", "params", "text"} in records and eval sets.
Parameters are JSON values (numbers, strings, lists of strings) so a dict survives a JSONL round trip.

Public API (used by the pipeline, `sprout score`, `sprout eval`):
    TYPES                                   registry: name -> ConstraintType
    sample_constraints(rng, k, phrasing)    k compatible constraints, each a dict
    augment(instruction, constraints)       the instruction with the constraint texts appended
    check(response, constraint, loose=False) -> bool
    check_all(response, constraints, loose=False) -> list[bool]

docs/verifiers.md lists the types and says how to add one.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class ConstraintType:
    name: str
    sample: Callable[[random.Random], dict]  # rng -> params
    check: Callable[[str, dict], bool]  # (response, params) -> passed?
    train: tuple[str, ...]  # phrasings, filled by render()
    eval: tuple[str, ...]  # disjoint phrasings for the held-out eval set
    conflicts: frozenset[str] = field(default_factory=frozenset)  # types that cannot be combined with it


# --- Text measures. Deliberately simple and documented, so a person can count along. ---------

def _words(text: str) -> list[str]:
    """Whitespace-separated tokens holding a letter or digit: "don't" is one word, "-" is none."""
    return [w for w in text.split() if re.search(r"[A-Za-z0-9]", w)]


def _sentences(text: str) -> list[str]:
    """Pieces ending in . ! or ? (plus closing quotes / brackets) before whitespace, or ending a
    line: a bullet or heading without a full stop still counts as one sentence."""
    return [p for p in re.split(r"[.!?]+[\"')\]]*\s+|\n+", text.strip()) if re.search(r"\w", p)]


def _count_lines(pattern: str, text: str) -> int:
    return len(re.findall(pattern, text, flags=re.MULTILINE))


def _has_word(word: str, text: str) -> int:
    """Occurrences of a word, any case, with a plural ending allowed (river, Rivers)."""
    return len(re.findall(rf"\b{re.escape(word)}(?:s|es)?\b", text, flags=re.IGNORECASE))


def _paragraph_blocks(text: str) -> list[str]:
    return [b for b in re.split(r"\n\s*\n", text.strip()) if b.strip()]


def _divided_parts(text: str) -> list[str] | None:
    """Parts between lines that hold only ***; None when a part is empty (*** twice, or at an end)."""
    parts = re.split(r"^[ \t]*\*\*\*[ \t]*$", text.strip(), flags=re.MULTILINE)
    return None if any(not p.strip() for p in parts) else parts


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text.strip()), dict)
    except ValueError:
        return False


def _two_responses(text: str) -> bool:
    parts = [p.strip() for p in text.split("******")]
    return len(parts) == 2 and all(parts) and parts[0] != parts[1]


def _one_option(text: str, options: list[str]) -> bool:
    return sum(text.count(o) for o in options) == 1


# --- Word lists: neutral, everyday nouns for keywords; filler words for forbidden ones. The two
# lists are disjoint, so "include X" and "avoid Y" never ask for the same word. -------------------

KEYWORDS = ("river", "lantern", "window", "journey", "harvest", "garden", "bridge", "morning", "balance",
            "signal", "pattern", "mountain", "kitchen", "market", "silver", "season", "planet", "forest",
            "music", "candle", "compass", "letter", "island", "ladder")
FORBIDDEN = ("very", "really", "just", "thing", "good", "great", "important", "basically", "actually",
             "nice", "stuff", "always")
LETTERS = "bcdfghkmpwy"  # common enough to reach a count, rare enough that the count means something
START_PHRASES = ("Here is my answer.", "Great question!", "Let me explain.", "In short,", "Sure thing.")
END_PHRASES = ("Is there anything else I can help with?", "Hope this helps!", "Thanks for reading.",
               "That is all for now.", "Let me know if you have any other questions.")
OPTION_SETS = (["My answer is yes.", "My answer is no.", "My answer is maybe."],
               ["My answer is yes.", "My answer is no."])


def _n(*choices: int) -> Callable[[random.Random], dict]:
    return lambda rng: {"n": rng.choice(choices)}


TYPES: dict[str, ConstraintType] = {}


def _type(name: str, sample, check, train: tuple[str, ...], eval: tuple[str, ...], conflicts: str = "") -> None:
    """Register a type. Conflicts may be named on either side; they are made symmetric below."""
    TYPES[name] = ConstraintType(name, sample, check, train, eval, frozenset(conflicts.split()))


_NONE = lambda rng: {}  # noqa: E731 -- a type without parameters

# --- The table. Parameter ranges are sized so a 135M chat model *can* sometimes comply. --------

_type("lowercase", _NONE, lambda r, p: r == r.lower() and any(c.isalpha() for c in r),
      train=("Write your entire answer in lowercase letters only.",
             "Your whole response should be in lowercase, with no capital letters at all."),
      eval=("Use no capital letters anywhere in the response.",
            "Every letter you type must be a small letter; uppercase is not allowed."),
      conflicts="uppercase capital_words sections postscript start_phrase end_phrase answer_options")
_type("uppercase", _NONE, lambda r, p: r == r.upper() and any(c.isalpha() for c in r),
      train=("Write your entire answer in capital letters only.",
             "Respond using only uppercase letters, in all caps."),
      eval=("Type the whole reply in CAPITAL LETTERS; no lowercase letters may appear.",
            "Every letter of the response should be upper case."),
      conflicts="start_phrase end_phrase answer_options json")
_type("capital_words", _n(2, 3, 4, 5), lambda r, p: len(re.findall(r"\b[A-Z]{2,}\b", r)) >= p["n"],
      train=("Include at least {n} words written entirely in capital letters.",
             "Use all-caps for at least {n} words in your answer to stress them."),
      eval=("Emphasize at least {n} words by typing them fully in uppercase.",
            "The reply should contain {n} or more words spelled in ALL CAPS."))
_type("no_commas", _NONE, lambda r, p: "," not in r,
      train=("Do not use any commas in your answer.", "Write your whole answer without a single comma."),
      eval=("Avoid commas entirely in the response.",
            "The comma character must not appear anywhere in what you write."),
      conflicts="json")
_type("max_words", _n(25, 30, 40, 50, 60, 80), lambda r, p: 0 < len(_words(r)) <= p["n"],
      train=("Answer in at most {n} words.", "Keep your answer to {n} words or fewer."),
      eval=("The response must not exceed {n} words.", "Limit the reply to a maximum of {n} words."),
      conflicts="min_words min_sentences")
_type("min_words", _n(40, 50, 60, 80, 100), lambda r, p: len(_words(r)) >= p["n"],
      train=("Your answer must be at least {n} words long.", "Write no fewer than {n} words."),
      eval=("The reply needs a length of {n} words or more.", "Aim for a minimum of {n} words in the response."),
      conflicts="max_sentences")
_type("max_sentences", _n(2, 3, 4, 5), lambda r, p: 0 < len(_sentences(r)) <= p["n"],
      train=("Answer in at most {n} sentences.", "Use no more than {n} sentences."),
      eval=("The reply must be {n} sentences long or shorter.", "Limit yourself to a maximum of {n} sentences."),
      # each list item, heading or title line counts as a sentence, so those types would fight it
      conflicts="min_sentences bullets numbered_items sections title two_responses paragraphs "
                "paragraph_dividers json")
_type("min_sentences", _n(3, 4, 5, 6), lambda r, p: len(_sentences(r)) >= p["n"],
      train=("Write at least {n} sentences.", "Your answer should contain {n} or more sentences."),
      eval=("Include a minimum of {n} full sentences in the reply.",
            "Do not stop before you have written {n} sentences."),
      conflicts="json")
_type("paragraphs", _n(2, 3, 4), lambda r, p: len(_paragraph_blocks(r)) == p["n"],
      train=("Write exactly {n} paragraphs, separated from each other by a blank line.",
             "Your answer should have {n} paragraphs with an empty line between paragraphs."),
      eval=("Organize the reply into precisely {n} paragraphs; put one empty line after each of them "
            "except the last.",
            "Split the response into {n} blocks of text, leaving a blank line between neighbouring blocks."),
      conflicts="paragraph_dividers json two_responses sections")
_type("paragraph_dividers", _n(2, 3, 4), lambda r, p: len(_divided_parts(r) or ()) == p["n"],
      train=("Write exactly {n} paragraphs and separate them with the markdown divider ***.",
             "Your answer needs {n} paragraphs, with a line containing only *** between consecutive paragraphs."),
      eval=("Produce {n} paragraphs in total, placing three asterisks (***) on their own line between each pair.",
            "There should be precisely {n} parts in the reply, divided from one another by a *** line."),
      conflicts="json two_responses sections")
_type("bullets", _n(2, 3, 4, 5), lambda r, p: _count_lines(r"^\s*[*-][ \t]+\S", r) == p["n"],
      train=('Include exactly {n} bullet points, each on its own line starting with "* ".',
             'Format your answer as exactly {n} markdown bullet points (lines that begin with "* ").'),
      eval=("Present the reply as a list of precisely {n} bullets, each line opening with an asterisk "
            "or dash and a space.",
            'Use {n} bullet items (no more, no fewer), written with markdown "- " markers.'),
      conflicts="json numbered_items")
_type("numbered_items", _n(2, 3, 4, 5), lambda r, p: _count_lines(r"^\s*\d+[.)][ \t]+\S", r) == p["n"],
      train=("Give your answer as a numbered list with exactly {n} items (1., 2., ...).",
             "Include exactly {n} numbered points, one per line."),
      eval=('Lay out the reply as {n} numbered lines, such as "1." then "2." and so on.',
            "Number your points; there must be precisely {n} of them."),
      conflicts="json no_digits")
_type("sections", _n(2, 3), lambda r, p: _count_lines(r"^\s*(?:#+\s*)?SECTION\s+\d+\b", r) == p["n"],
      train=("Divide your answer into {n} sections, and start each one with a line like SECTION 1, SECTION 2.",
             "Your response must have {n} sections; mark the beginning of each with SECTION X, where X is its number."),
      eval=("Break the reply into {n} parts, each headed by the word SECTION followed by its number "
            "(for example SECTION 1).",
            "Structure the response as {n} numbered SECTION blocks, e.g. SECTION 1 and SECTION 2."),
      conflicts="json no_digits")
_type("highlights", _n(1, 2, 3), lambda r, p: len(re.findall(r"\*[^\s*][^\n*]*\*", r)) >= p["n"],
      train=("Highlight at least {n} parts of your answer with markdown, like *highlighted section*.",
             "Use markdown to emphasize at least {n} phrases by wrapping them in single asterisks, like *this*."),
      eval=("Mark {n} or more key phrases in italics using asterisks, for instance *key idea*.",
            "Put asterisks around at least {n} important passages so they stand out as *emphasized text*."),
      conflicts="json")
_type("placeholders", _n(1, 2, 3), lambda r, p: len(re.findall(r"\[[^\[\]\n]+\]", r)) >= p["n"],
      train=("Include at least {n} placeholders in square brackets, such as [name].",
             "Leave at least {n} blanks for the reader to fill in, written like [address]."),
      eval=("The reply must contain {n} or more fill-in fields enclosed in square brackets, for example [date].",
            "Add a minimum of {n} bracketed placeholders like [company] for details to be filled in later."),
      conflicts="json")  # a JSON array is a bracket pair too
_type("title", _NONE, lambda r, p: re.search(r"<<[^<>\n]*\w[^<>\n]*>>", r) is not None,
      train=("Give your answer a title wrapped in double angular brackets, such as <<my title>>.",
             "Start with a title inside double angle brackets, like <<title>>."),
      eval=("Include a heading enclosed by << and >>, for example <<A Day at Sea>>.",
            "Give the reply a heading between two pairs of angle brackets, e.g. <<Morning Notes>>."),
      conflicts="json")
_type("postscript", lambda rng: {"marker": rng.choice(["P.S.", "P.P.S."])},
      lambda r, p: re.search(rf"^\s*{re.escape(p['marker'])}\s*\S", r, flags=re.MULTILINE) is not None,
      train=("At the end of your response, add a postscript starting with {marker}",
             "Finish with a postscript that begins with {marker}"),
      eval=("Close the reply with an extra note whose first characters are {marker}",
            "After the main answer, append a short afterthought introduced by {marker}"),
      conflicts="json end_phrase end_with_question quotes")
_type("keywords", lambda rng: {"words": rng.sample(KEYWORDS, rng.choice([1, 2]))},
      lambda r, p: all(_has_word(w, r) for w in p["words"]),
      train=("Include the keywords {words} in your answer.",
             "Make sure to use the words {words} somewhere in your response."),
      eval=("Your reply has to mention each of these terms: {words}.",
            "Work the following words into the response: {words}."))
_type("forbidden_words", lambda rng: {"words": rng.sample(FORBIDDEN, rng.choice([1, 2, 3]))},
      lambda r, p: not any(re.search(rf"\b{re.escape(w)}\b", r, flags=re.IGNORECASE) for w in p["words"]),
      train=("Do not include the words {words} in your answer.", "Avoid using the following words: {words}."),
      eval=("None of these terms may appear in the reply: {words}.", "Steer clear of the words {words} completely."))
_type("letter_frequency", lambda rng: {"letter": rng.choice(LETTERS), "n": rng.choice([3, 4, 5, 6, 8])},
      lambda r, p: r.lower().count(p["letter"]) >= p["n"],
      train=('In your response, the letter "{letter}" should appear at least {n} times.',
             'Use the letter "{letter}" at least {n} times in your answer.'),
      eval=('Make sure the character "{letter}" shows up {n} or more times in the reply.',
            'Write a reply in which "{letter}" occurs no fewer than {n} times.'))
_type("keyword_frequency", lambda rng: {"word": rng.choice(KEYWORDS), "n": rng.choice([2, 3])},
      lambda r, p: _has_word(p["word"], r) >= p["n"],
      train=('Use the word "{word}" at least {n} times in your answer.',
             'Your response should contain the word "{word}" at least {n} times.'),
      eval=('Mention "{word}" {n} or more times throughout the reply.',
            'Repeat the term "{word}" a minimum of {n} times in the response.'))
_type("start_phrase", lambda rng: {"phrase": rng.choice(START_PHRASES)},
      lambda r, p: r.lstrip().startswith(p["phrase"]),
      train=('Begin your answer with the exact words "{phrase}"',
             'Your response must start with the phrase "{phrase}"'),
      eval=('Open the reply with "{phrase}" word for word.',
            'The very first words you write have to be "{phrase}"'),
      conflicts="quotes json")
_type("end_phrase", lambda rng: {"phrase": rng.choice(END_PHRASES)},
      lambda r, p: r.rstrip().endswith(p["phrase"]),
      train=('Finish your response with this exact phrase: "{phrase}" No other words should follow it.',
             'End your answer with the exact words "{phrase}"'),
      eval=('The last words of the reply must be "{phrase}" with nothing after them.',
            'Conclude the response by writing "{phrase}" as its final sentence.'),
      conflicts="quotes json end_with_question answer_options")
_type("quotes", _NONE, lambda r, p: len(r.strip()) > 2 and r.strip()[0] == r.strip()[-1] == '"',
      train=("Wrap your entire response in double quotation marks.", "Put your whole answer inside double quotes."),
      eval=('Enclose the complete reply between a pair of " characters.',
            "The response should begin and end with a double quote mark."),
      # a line-start marker (*, 1., SECTION) cannot follow the opening quote on the first line
      conflicts="json end_with_question two_responses answer_options bullets numbered_items sections")
_type("json", _NONE, lambda r, p: _json_object(r),
      train=("Format your entire output as a JSON object.",
             "Your whole answer must be valid JSON: a single JSON object and nothing else."),
      eval=("Return the reply as one well-formed JSON object, with no text outside it.",
            "Respond only in JSON; the complete response has to parse as one object."),
      conflicts="two_responses answer_options end_with_question")
_type("two_responses", _NONE, lambda r, p: _two_responses(r),
      train=("Give two different responses, separated by six asterisks: ******.",
             "Write two different answers and put a line with ****** between them."),
      eval=("Provide a pair of distinct replies with ****** on its own line dividing them.",
            "Offer two alternative versions of the reply, split by the marker ******."),
      conflicts="answer_options")
_type("answer_options", lambda rng: {"options": list(rng.choice(OPTION_SETS))},
      lambda r, p: _one_option(r, p["options"]),
      train=("Answer with one of the following options: {options}",
             "Your answer must contain exactly one of these phrases: {options}"),
      eval=("Include precisely one of these verdicts in the reply: {options}",
            "Pick a single choice from {options} and state it in the response."),
      conflicts="end_with_question")
_type("no_digits", _NONE, lambda r, p: re.search(r"\d", r) is None,
      train=("Do not use any digits in your answer; write numbers out as words.",
             "Your response must not contain any numerals (0-9)."),
      eval=("Spell every number in words, since the characters 0 to 9 are not allowed in the reply.",
            "Keep the response free of digits."))
_type("end_with_question", _NONE, lambda r, p: r.rstrip().endswith("?"),
      train=("End your answer with a question.", "The last sentence of your response must be a question."),
      eval=("Make the final sentence of the reply a question ending in a question mark.",
            'Close by asking the reader something, so that the response ends with "?".'))

# A JSON object cannot also be a list, a titled text, a set of sections...: json conflicts with
# every layout type. Declared once here rather than in each row above.
TYPES["json"] = dataclasses.replace(TYPES["json"], conflicts=TYPES["json"].conflicts | {
    "bullets", "numbered_items", "sections", "title", "postscript", "quotes", "paragraphs", "paragraph_dividers",
    "highlights", "placeholders", "start_phrase", "end_phrase", "no_commas", "max_sentences", "min_sentences"})
for _name, _t in list(TYPES.items()):  # symmetric conflicts: A conflicts with B <=> B with A
    _others = {o for o, u in TYPES.items() if _name in u.conflicts}
    TYPES[_name] = dataclasses.replace(_t, conflicts=_t.conflicts | _others)


def render(phrase: str, params: dict) -> str:
    """A phrasing with its parameters filled in; a list shows as "a", "b", "c"."""
    shown = {k: ", ".join(f'"{x}"' for x in v) if isinstance(v, list) else v for k, v in params.items()}
    return phrase.format(**shown)


# --- Checking -------------------------------------------------------------------------------

def _strip_markdown(text: str) -> str:
    return text.replace("*", "")


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose mode: the answer, without its first line (a "Sure, here it is:" preamble),
    without its last line (a sign-off, or a closing ``` fence), without both (a ```json fence
    around the whole answer), each also with markdown asterisks removed."""
    lines = response.split("\n")
    base = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return [v for b in base for v in (b, _strip_markdown(b)) if v]


def check(response: str, constraint: dict, loose: bool = False) -> bool:
    t = TYPES[constraint["type"]]
    params = constraint.get("params") or {}
    candidates = _loose_variants(response) if loose else [response]
    return any(t.check(c, params) for c in candidates)


def check_all(response: str, constraints: list[dict], loose: bool = False) -> list[bool]:
    return [check(response, c, loose) for c in constraints]


# Types that only fit some tasks (a fixed yes/no/maybe verdict makes no sense after "write a
# poem"): never added to arbitrary generated instructions; the eval builder picks their tasks.
TASK_SPECIFIC = frozenset({"answer_options"})


def sample_constraints(rng: random.Random, k: int = 1, phrasing: str = "train",
                       exclude: frozenset[str] = TASK_SPECIFIC) -> list[dict]:
    """k mutually compatible constraints with parameters and a phrasing from the given set
    (k = 0 gives none)."""
    if phrasing not in ("train", "eval"):
        raise ValueError(f"phrasing must be 'train' or 'eval', not {phrasing!r}")
    chosen: list[ConstraintType] = []
    if k <= 0:
        return []
    names = sorted(TYPES)
    rng.shuffle(names)
    for name in names:
        t = TYPES[name]
        if name in exclude:
            continue
        if any(name in c.conflicts for c in chosen):
            continue
        chosen.append(t)
        if len(chosen) == k:
            break
    out = []
    for t in chosen:
        params = t.sample(rng)
        text = render(rng.choice(getattr(t, phrasing)), params)
        out.append({"type": t.name, "params": params, "text": text})
    return out


def augment(instruction: str, constraints: list[dict]) -> str:
    """The instruction followed by each constraint's sentence."""
    return " ".join([instruction.rstrip()] + [c["text"] for c in constraints])
