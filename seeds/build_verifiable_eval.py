"""Build seeds/verifiable_eval.jsonl: the held-out verifiable-constraint eval set.

    python seeds/build_verifiable_eval.py [--out seeds/verifiable_eval.jsonl]

Deterministic: a fixed rng seed, the base tasks listed below, and the *eval* phrasings of
generator/verifiers.py. Each base task is used twice, with two different sets of constraint types;
a row has 1, 2 or 3 constraints (55% / 35% / 10% of rows). Yes/no questions are the only tasks
given the answer_options constraint ("My answer is yes."...), once each, since the verdict phrases
make no sense after "write a poem". Before writing, the script refuses a set that shares a 13-gram
with the seed files, the other eval set or any train phrasing, or that generator/decontam.py flags.
Base tasks avoid numbers and layout words (lengths, lists of N, paragraphs) so no constraint
contradicts its task.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generator.decontam import Decontaminator, ngrams  # noqa: E402
from generator.verifiers import TYPES, augment, render, sample_constraints  # noqa: E402

SEED = 20250610
OUT = ROOT / "seeds" / "verifiable_eval.jsonl"
ROW_MIX = {1: 0.55, 2: 0.35, 3: 0.10}  # constraints per row -> share of rows
REFERENCE_FILES = [ROOT / "seeds" / f for f in ("seed_tasks.jsonl", "test_seeds.jsonl", "eval_set.jsonl")]

TASKS = [
    # messages and emails
    "Write a note to a neighbor thanking them for watering your plants while you were away.",
    "Write a message inviting your coworkers to a potluck lunch on Friday.",
    "Compose an email to a landlord asking when the broken heater will be repaired.",
    "Draft an email to a professor asking for an extension on an essay because you were sick.",
    "Write a welcome message for new members joining a community book club.",
    "Write an apology to a friend for missing their birthday dinner.",
    "Write a congratulations message to a cousin who just graduated from nursing school.",
    "Compose a farewell message to a colleague who is moving to another city.",
    "Write the speech a student could give when accepting a science fair prize.",
    "Draft a note to parents reminding them about the school picnic next week.",
    "Write an email to a hotel asking whether they allow small dogs.",
    "Write a reply to a customer whose new blender arrived with a cracked lid.",
    "Compose a polite message to a gym canceling a membership.",
    "Write a thank-you note to a stranger who returned your lost wallet.",
    "Write a message to a group chat suggesting a hike this weekend.",
    "Draft an announcement that the office kitchen will be closed for cleaning on Monday.",
    "Write a letter to your future self about what you hope to learn this year.",
    "Write a postcard message from a trip to a seaside town.",
    "Write an invitation to a backyard movie night.",
    "Write an email asking a local bakery if they can make a gluten-free cake.",
    "Write a motivational message for a soccer team before a big game.",
    # creative writing
    "Write a poem about a lighthouse keeper who waits for a ship.",
    "Tell a story about a robot who learns to bake bread.",
    "Write a story about a girl who finds a key buried in her grandmother's garden.",
    "Describe a dragon who is afraid of the dark.",
    "Write a fable about a patient snail and a hurried rabbit.",
    "Write a poem celebrating the first warm day of spring.",
    "Write a story set in a library where the books whisper at night.",
    "Invent a new holiday and describe how people celebrate it.",
    "Describe an imaginary fruit, including its taste and color.",
    "Write a scene in which two old friends meet by chance at a train station.",
    "Write a song chorus about riding a bicycle downhill.",
    "Write a poem from the point of view of a cat watching the rain.",
    "Create a myth explaining why the moon changes shape.",
    "Write a diary entry of an astronaut on her first night in space.",
    "Describe a city where everyone travels by boat.",
    "Write a monologue for an old oak tree that has stood in a park for a century.",
    "Write a story about a lost umbrella trying to find its owner.",
    # descriptions
    "Describe the smells and sounds of a busy farmers market.",
    "Describe your ideal reading nook.",
    "Describe a thunderstorm to someone who has never seen one.",
    "Describe what a sunrise over the desert looks like.",
    "Describe a cozy mountain cabin in winter.",
    "Describe the taste of a fresh lemon to someone who has never had one.",
    "Describe a typical morning in a busy city cafe.",
    "Describe a day in the life of a beekeeper.",
    "Describe the job of a librarian to a child.",
    "Describe what a firefighter does during a typical shift.",
    "Describe the perfect weekend for someone who loves the outdoors.",
    # explanations
    "Explain how a rainbow forms.",
    "Explain why leaves change color in autumn.",
    "Explain how vaccines help the body fight disease.",
    "Explain what a household budget is and why it is useful.",
    "Explain how bees make honey.",
    "Explain why the ocean has tides.",
    "Explain how a refrigerator keeps food cold.",
    "Explain gravity to a child.",
    "Explain how a proposal becomes a law in a democracy.",
    "Explain what a password manager does and why people use one.",
    "Explain why exercise can improve your mood.",
    "Explain how recycled plastic is turned into new products.",
    "Explain what causes an echo.",
    "Explain why bread dough rises.",
    "Explain how a magnetic compass works.",
    "Explain why some people get seasick on boats.",
    "Explain what a credit score is.",
    "Explain how solar panels turn sunlight into electricity.",
    "Explain why sea water is salty.",
    "Explain what an earthquake is and why it happens.",
    "Explain how washing your hands stops germs from spreading.",
    "Explain what a metaphor is, with an example.",
    "Explain why cats purr.",
    "Explain how noise-canceling headphones work.",
    "Explain what makes a password strong.",
    "Explain how clouds form.",
    "Explain the water cycle to a young student.",
    "Explain why people yawn.",
    "Explain what an ecosystem is.",
    "Explain how composting turns food scraps into soil.",
    # advice
    "Give advice to someone starting their first job.",
    "Suggest ways to make a small bedroom feel bigger.",
    "Give tips for keeping houseplants alive.",
    "Offer advice to a student who is nervous about public speaking.",
    "Suggest ways to save money on groceries.",
    "Give advice on how to make friends in a new city.",
    "Suggest ways to reduce screen time in the evening.",
    "Give tips for writing a clear and friendly email.",
    "Offer advice to someone who is learning to cook.",
    "Suggest ways to stay focused while studying at a kitchen table.",
    "Give advice to a first-time dog owner.",
    "Suggest how to prepare for a long flight.",
    "Give tips for taking better notes in class.",
    "Suggest ways to be kinder to the environment at home.",
    "Give advice on how to handle a disagreement with a roommate.",
    "Suggest ways to keep a conversation going with someone you just met.",
    "Give tips for staying safe while cycling in a city.",
    "Offer advice to a parent whose child is afraid of the dentist.",
    "Suggest how a busy person can find time to read more.",
    "Give advice to someone who wants to start running.",
    # brainstorming
    "Suggest names for a cafe that also sells used books.",
    "Brainstorm activities for a family reunion at a park.",
    "Suggest gift ideas for a friend who loves astronomy.",
    "Name some foods that are easy to pack for a picnic.",
    "Suggest themes for a school art exhibition.",
    "Brainstorm ways a small town could attract more visitors.",
    "Suggest hobbies that someone can enjoy alone at home.",
    "Name some ways to reuse old glass jars.",
    "Suggest questions to ask when visiting a new doctor.",
    "Suggest ideas for a rainy afternoon with a toddler.",
    "Brainstorm names for a podcast about local history.",
    "Suggest healthy snacks for a long study session.",
    # working with a given sentence
    'Summarize this sentence in simpler words: "The committee postponed its decision on the new park '
    'until more residents could share their opinions."',
    'Rewrite this sentence in plain language: "Due to unforeseen circumstances, the concert scheduled '
    'for this evening has been moved to a later date."',
    'Summarize the main point of this sentence: "Although the bakery raised its prices, customers kept '
    'coming because the bread was still the best in town."',
    'Explain what this sentence means: "The early snowfall caught many farmers off guard, leaving some '
    'crops unharvested."',
    'Put this sentence into your own words: "Regular breaks during long study sessions can improve memory '
    'and reduce fatigue."',
    'Restate this idea for a child: "Plants need sunlight, water and air to make their own food."',
    'Summarize this announcement: "The museum will offer free entry on the first Sunday of each month '
    'to encourage families to visit."',
    'Paraphrase this sentence: "After weeks of practice, the choir finally sang the difficult song without '
    'a single mistake."',
    'Tell me the main idea of this sentence: "Cities that plant more trees often see cooler summers and '
    'cleaner air."',
    'Rewrite this formal sentence in a casual tone: "We kindly request that all attendees arrive promptly '
    'to ensure the meeting begins on time."',
    # comparisons and opinions
    "Compare living in a big city with living in the countryside.",
    "Compare reading paper books with reading on a tablet.",
    "Compare a lake and a sea.",
    "Compare traveling by train with traveling by car.",
    "Discuss the pros and cons of learning a musical instrument as an adult.",
    "Compare summer and winter as seasons for a vacation.",
    "Argue that every school should have a vegetable garden.",
    "Make the case for taking a walk every day.",
    "Argue that board games are good for families.",
    "Give your opinion on whether homework should be limited.",
    # how-to
    "Explain how to make a good cup of tea.",
    "Describe how to plant a tomato seedling.",
    "Explain how to fix a flat bicycle tire.",
    "Describe how to fold a paper airplane.",
    "Explain how to get ready for a job interview held over video.",
    "Describe how to pack a suitcase efficiently.",
    "Explain how to make a simple vegetable soup.",
    "Describe the steps to set up a new email account.",
    "Explain how to wash a wool sweater without shrinking it.",
    # products, profiles, promotion
    "Describe a backpack designed for students who bike to school.",
    "Write a product description for a ceramic coffee mug that keeps drinks warm.",
    "Write an advertisement for a neighborhood dog-walking service.",
    "Write a profile of an imaginary chef who runs a food truck.",
    "Write a review of an imaginary restaurant that serves only soup.",
    "Write a travel guide entry for an imaginary island.",
    "Introduce yourself as a friendly museum tour guide.",
    "Write a bio for a local musician who plays the violin at weddings.",
    "Write a tagline and description for a new herbal tea.",
    "Write the text for a poster about a lost orange cat.",
]

YES_NO = [  # the only tasks that may carry answer_options
    "Is it a good idea to drink coffee in the evening? Explain your reasoning.",
    "Should children learn to cook at home?",
    "Is it worth learning to play chess as an adult?",
    "Can houseplants improve the air in a room?",
    "Should people put their phones away during dinner?",
    "Is it healthy to skip breakfast?",
    "Should cities ban cars from their centers?",
    "Is it better to study in the morning than late at night?",
    "Should schools start later in the morning?",
    "Is reading novels a good use of free time?",
    "Can a shy person be a good leader?",
    "Is it safe to swim right after eating a meal?",
    "Do pets make people happier?",
    "Is it rude to text during a conversation?",
    "Should tourists learn a few words of the local language before a trip?",
    "Is walking a good form of exercise?",
    "Can music help people concentrate while working?",
    "Is it wise to buy a used car instead of a new one?",
    "Should people write letters by hand more often?",
    "Is it possible to learn a language only by watching films?",
]


def _row_sizes(n_rows: int, rng: random.Random) -> list[int]:
    counts = {k: round(share * n_rows) for k, share in ROW_MIX.items()}
    counts[1] += n_rows - sum(counts.values())
    sizes = [k for k, c in counts.items() for _ in range(c)]
    rng.shuffle(sizes)
    return sizes


def build(seed: int = SEED) -> list[dict]:
    rng = random.Random(seed)
    uses = [t for t in TASKS + YES_NO for _ in range(2)]
    rng.shuffle(uses)
    used_sets: dict[str, set[frozenset]] = {}
    rows = []
    for i, (task, k) in enumerate(zip(uses, _row_sizes(len(uses), rng)), 1):
        # A yes/no question's first use carries answer_options; no other row does.
        want_options = task in YES_NO and task not in used_sets
        while True:
            cs = sample_constraints(rng, k, "eval", exclude=frozenset())
            names = frozenset(c["type"] for c in cs)
            if ("answer_options" in names) == want_options and names not in used_sets.get(task, set()):
                break
        used_sets.setdefault(task, set()).add(names)
        rows.append({"id": f"ve-{i:04d}", "instruction": augment(task, cs), "base_instruction": task,
                     "constraints": cs})
    return rows


def train_phrasing_grams(samples: int = 200) -> set[tuple[str, ...]]:
    """13-grams of every train phrasing, rendered with many sampled parameters (the parameter
    spaces are small, so this covers nearly every rendering)."""
    rng, grams = random.Random(0), set()
    for t in TYPES.values():
        for _ in range(samples):
            params = t.sample(rng)
            for phrase in t.train:
                grams |= ngrams(render(phrase, params))
    return grams


def problems(rows: list[dict]) -> list[str]:
    """Held-out violations: 13-gram overlap with reference files or train phrasings, or rows that
    generator/decontam.py's Decontaminator (13-gram or ROUGE-L > 0.7) would reject."""
    decon = Decontaminator.from_files(REFERENCE_FILES)
    train = train_phrasing_grams()
    out = []
    for r in rows:
        for text in (r["instruction"], r["base_instruction"]):
            if reason := decon.check(text):
                out.append(f"{r['id']}: {reason}: {text}")
        if not train.isdisjoint(ngrams(r["instruction"])):
            out.append(f"{r['id']}: shares a 13-gram with a train phrasing")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    rows = build()
    if bad := problems(rows):
        print("\n".join(bad), file=sys.stderr)
        return 1
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
