"""Benchmark: Sprout's ROUGE-L novelty filter against Stanford Alpaca's method.

Part 1 replays Alpaca's filter (rouge_score's pure-Python LCS of every candidate against every
kept instruction, keep when the best F <= 0.7) and ours on the same stream, checks that both keep
exactly the same instructions, and prints the speed ratio. Part 2 runs ours alone on a 50,000
instruction stream, each configuration in a fresh child process so its peak RSS is its own.

    python benchmarks/novelty.py            # full run (the Alpaca baseline takes minutes)
    python benchmarks/novelty.py --quick    # smaller streams, for a smoke check
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generator.novelty import NoveltyPool  # noqa: E402

# --- a deterministic stream of instruction-like text --------------------------------------------
# Real teacher output is Zipfian: a few task verbs and function words everywhere, a long tail of
# content words, recurring openers ("Write a short story about ..."), and a share of near-copies
# of earlier instructions (reworded, a word swapped, punctuation or case changed).

VERBS = ("write generate explain describe list create summarize classify translate rewrite find "
         "give suggest compose identify compare design outline draft convert evaluate analyze "
         "recommend brainstorm calculate predict edit plan propose name estimate sort").split()
FUNCTION = ("the a of to and in for on with that is are be as by this it from or an at your "
            "which how what why when who can should will about each into its their more than "
            "not all some any one two three five ten most best new other following given").split()
NOUNS = ("story poem essay email letter list summary recipe plan question answer sentence "
         "paragraph title slogan tweet review report article speech dialogue joke riddle song "
         "headline description argument explanation tip strategy method example reason idea "
         "function program query algorithm table chart diagram outline budget schedule menu "
         "product company customer student teacher doctor city country river mountain planet "
         "ocean forest animal dog cat bird tree flower book movie game team player market price "
         "energy climate health diet exercise sleep money time history science math language "
         "music art travel food water car phone computer internet software data network").split()
ADJECTIVES = ("short long simple detailed funny formal informal creative persuasive clear "
              "concise friendly professional brief popular healthy cheap quick modern classic "
              "common unusual important interesting difficult easy young old small large").split()
OPENERS = ("{V} a {A} {N} about", "{V} the {N} of", "{V} {F} {N} for", "Explain how {F} {N}",
           "Given the following {N}, {V}", "{V} five {A} {N}s that", "What is the {A} {N} for",
           "Please {V} a {N} on", "{V} an {A} {N} describing", "How can I {V} my {N}")
SYLLABLES = ("ka lo mi ne ru sa to vi de ba po li me nu ra so te ve da be pi lu mo ni re se ta vo "
             "di bo pe la mu no ri su ti vu do bi pa le ma nor ril sam tev dun bar pim").split()


def _tail_vocab(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


class _Zipf:
    """Sample words with probability ~ 1/rank^s."""

    def __init__(self, rng: random.Random, words: list[str], s: float = 1.05):
        self.rng, self.words = rng, words
        total, self.cum = 0.0, []
        for r in range(1, len(words) + 1):
            total += 1.0 / r ** s
            self.cum.append(total)

    def __call__(self, n: int) -> list[str]:
        return self.rng.choices(self.words, cum_weights=self.cum, k=n)


def _length(rng: random.Random) -> int:
    # Word counts of Self-Instruct/Alpaca instructions: most 8-20, a tail to 40; clipped to 5..40.
    return max(5, min(40, int(rng.lognormvariate(2.6, 0.45))))


def _mutate(rng: random.Random, text: str, words: _Zipf) -> str:
    """A near-copy: a few word edits, sometimes case/punctuation changes."""
    toks = text.rstrip(".?!").split()
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        op, i = rng.random(), rng.randrange(len(toks))
        if op < 0.4 or (op >= 0.7 and len(toks) >= 40):
            toks[i] = words(1)[0]
        elif op < 0.7 and len(toks) > 5:
            del toks[i]
        else:
            toks.insert(i, words(1)[0])
    out = " ".join(toks)
    if rng.random() < 0.3:
        out = out.lower() if rng.random() < 0.5 else out.upper()
    return out + rng.choice((".", "?", "!", "", " :)"))


def make_stream(n: int, seed: int = 0, dup_share: float = 0.25) -> list[str]:
    """`n` instructions; about `dup_share` of them are edited copies of an earlier one."""
    rng = random.Random(seed)
    common = _Zipf(rng, FUNCTION + VERBS + ADJECTIVES + NOUNS, 1.0)
    content = _Zipf(rng, NOUNS + ADJECTIVES + _tail_vocab(rng, 20000), 1.05)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_share:
            # Teacher models mostly repeat what they produced recently, sometimes older items.
            j = len(out) - 1 - min(len(out) - 1, int(rng.expovariate(1 / 200)))
            out.append(_mutate(rng, out[j], content))
            continue
        opener = rng.choice(OPENERS).format(V=rng.choice(VERBS), A=rng.choice(ADJECTIVES),
                                            N=rng.choice(NOUNS), F=rng.choice(FUNCTION))
        words = opener.split()
        rest = _length(rng) - len(words)
        words += [common(1)[0] if rng.random() < 0.45 else content(1)[0] for _ in range(max(rest, 1))]
        text = " ".join(words)
        out.append(text[0].upper() + text[1:] + rng.choice(".?."))
    return out


# --- Part 1: Stanford Alpaca's filter, as its generate_instruction.py does it --------------------


def alpaca_filter(stream: list[str], procs: int) -> tuple[list[bool], list[list[float]]]:
    """Alpaca's loop: kept instructions are tokenized once with rouge_score's tokenizer; each
    candidate is scored with rouge_score's `_score_lcs` against *every* kept one, its 10 best
    scores are noted, and it is kept when the best F <= 0.7. Returns the keep decisions and each
    candidate's top-10 scores. Alpaca starts a `Pool(num_cpus)` for every candidate; with procs > 1
    this starts one Pool for the whole run, which only flatters the baseline."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    kept_tokens: list[list[str]] = []
    keep, tops = [], []
    pool = multiprocessing.Pool(procs) if procs > 1 else None
    try:
        for text in stream:
            toks = scorer._tokenizer.tokenize(text)
            score = partial(rouge_scorer._score_lcs, toks)
            results = pool.map(score, kept_tokens) if pool else list(map(score, kept_tokens))
            f = [r.fmeasure for r in results]
            tops.append(sorted(f, reverse=True)[:10])
            ok = not f or max(f) <= 0.7
            keep.append(ok)
            if ok:
                kept_tokens.append(toks)
    finally:
        if pool:
            pool.close()
            pool.join()
    return keep, tops


def pairs_scored(keep: list[bool]) -> int:
    """How many pairs Alpaca's method scores on a stream: every candidate x every kept before it."""
    total = kept = 0
    for k in keep:
        total += kept
        kept += k
    return total


def ours(stream: list[str], mode: str, k: int, batch: int = 20):
    """Run our filter over `stream`; returns (keep decisions, neighbour scores per item)."""
    pool = NoveltyPool(0.7)
    if mode == "single":
        results = [pool.check_and_add(t, k=k) for t in stream]
    else:
        results = []
        for i in range(0, len(stream), batch):
            results += pool.filter_batch(stream[i: i + batch], k=k)
    return [novel for novel, _ in results], [[f for _, f in near] for _, near in results]


OURS_PART1 = [("single", 0), ("single", 10)]


def part1(n: int, procs: list[int]) -> list[dict]:
    stream = make_stream(n, seed=1)
    rows = []
    base_keep = base_tops = None
    for p in procs:
        t, c = time.perf_counter(), time.process_time()
        keep, tops = alpaca_filter(stream, p)
        dt, cpu = time.perf_counter() - t, time.process_time() - c
        print(f"  Alpaca method, {p} process(es): {dt:.1f} s", flush=True)
        assert base_keep is None or keep == base_keep
        base_keep, base_tops = keep, tops
        # CPU time of a Pool run misses its workers: only the 1-process run has a CPU figure.
        rows.append({"what": f"Alpaca method, {p} process{'es' if p > 1 else ''}", "s": dt,
                     "cpu": cpu if p == 1 else None})
    baseline = min(r["s"] for r in rows)
    base_cpu = next((r["cpu"] for r in rows if r["cpu"]), None)
    for mode, k in OURS_PART1:
        best, best_cpu = float("inf"), float("inf")
        for _ in range(5):  # fastest of 5, each on a fresh pool
            t, c = time.perf_counter(), time.process_time()
            keep, tops = ours(stream, mode, k)
            best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
        assert keep == base_keep, "kept sets differ from Alpaca's method"
        if k:  # the top-k scores must be Alpaca's too (ties may list other texts, scores agree)
            assert [t[:k] for t in tops] == [t[:k] for t in base_tops]
        what = f"Sprout {'check_and_add' if mode == 'single' else 'filter_batch(20)'} k={k}"
        rows.append({"what": what, "s": best, "cpu": best_cpu, "ratio": baseline / best,
                     "ratio_cpu": base_cpu / best_cpu if base_cpu else None})
    # Per-pair cost from CPU time where there is one: wall time on a shared machine drifts.
    per_pair = (base_cpu or baseline) / pairs_scored(base_keep)
    print(f"  kept {sum(base_keep)} of {n} (identical decisions in every run); Alpaca's method: "
          f"{pairs_scored(base_keep)} pairs, {per_pair * 1e6:.1f} us {'CPU' if base_cpu else 'wall'} a pair")
    return rows, per_pair


# --- Part 2: ours alone at scale, each configuration in a fresh process -------------------------

OURS_PART2 = [("single", 0), ("single", 5), ("batch", 5)]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(n: int, mode: str, k: int) -> None:
    stream = make_stream(n, seed=2)
    before = _rss_mib()
    t, c = time.perf_counter(), time.process_time()
    keep, _ = ours(stream, mode, k)
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mib": peak, "before_mib": before,
                      "kept": sum(keep), "pairs": pairs_scored(keep), "decisions": hash(tuple(keep))}))


def part2(n: int) -> list[dict]:
    rows, decisions = [], set()
    for mode, k in OURS_PART2:
        out = subprocess.run([sys.executable, __file__, "--child", str(n), mode, str(k)],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "0"})
        r = json.loads(out.stdout.strip().splitlines()[-1])
        decisions.add(r["decisions"])
        what = f"{'check_and_add' if mode == 'single' else 'filter_batch(20)'} k={k}"
        print(f"  {what}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, peak RSS {r['peak_mib']:.0f} MiB "
              f"({r['before_mib']:.0f} MiB before the filter ran), kept {r['kept']} of {n}", flush=True)
        rows.append({"what": what, **r})
    assert len(decisions) == 1, "configurations disagree on what to keep"
    return rows, rows[0]["pairs"]


# --- Part 3: `sprout dedup` at scale, decisions checked against rouge_score on a sample ---------


def scale_child(n: int, folder: str) -> None:
    """Write the stream as JSONL, time `sprout dedup` on it (a child process: its own peak RSS)."""
    src, out = Path(folder) / f"stream-{n}.jsonl", Path(folder) / f"kept-{n}.jsonl"
    with open(src, "w") as f:
        for i, text in enumerate(make_stream(n)):
            f.write(json.dumps({"id": i, "instruction": text}) + "\n")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "trainer.cli", "dedup", str(src), str(out)], check=True,
                   cwd=Path(__file__).resolve().parents[1], stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "peak_mib": usage.ru_maxrss / 1024}))


def check_sample(n: int, folder: str, samples: int = 60, threshold: float = 0.7) -> tuple[int, int]:
    """For `samples` random positions of the stream, decide keep/drop by brute force against every
    instruction kept before it, rouge_score deciding every pair rapidfuzz puts near the threshold.
    Returns (agreements, samples)."""
    from rapidfuzz import process
    from rapidfuzz.distance import Indel
    from rouge_score import rouge_scorer

    from generator.novelty import tokens

    stream = make_stream(n)
    kept_ids = {json.loads(line)["id"] for line in open(Path(folder) / f"kept-{n}.jsonl")}
    chars: dict[str, str] = {}

    def code(text: str) -> str:
        return "".join(chars.setdefault(t, chr(0x1000 + len(chars))) for t in tokens(text))

    codes = [code(t) for t in stream]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rng, agree = random.Random(7), 0
    picks = sorted(rng.sample(range(n // 2, n), samples // 2) + rng.sample(range(n // 2), samples - samples // 2))
    for p in picks:
        before = [i for i in range(p) if i in kept_ids]
        near = process.extract(codes[p], [codes[i] for i in before], scorer=Indel.normalized_similarity,
                               score_cutoff=threshold - 1e-3, limit=None)
        novel = all(scorer.score(stream[before[j]], stream[p])["rougeL"].fmeasure <= threshold for _, _, j in near)
        agree += novel == (p in kept_ids)
    return agree, len(picks)


def part3(sizes: list[int]) -> list[dict]:
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for n in sizes:
            out = subprocess.run([sys.executable, __file__, "--scale-child", str(n), folder],
                                 capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            kept = sum(1 for _ in open(Path(folder) / f"kept-{n}.jsonl"))
            agree, total = check_sample(n, folder)
            print(f"  {n}: {r['wall']:.1f} s wall, {r['cpu']:.1f} s CPU, peak RSS {r['peak_mib']:.0f} MiB, kept {kept}; "
                  f"rouge_score agrees on {agree} of {total} sampled decisions", flush=True)
            rows.append({"n": n, "kept": kept, "agree": f"{agree}/{total}", **r})
            assert agree == total, "a sampled decision differs from rouge_score's"
            for f in Path(folder).iterdir():
                f.unlink()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1,000 / 10,000 instructions instead of 3,000 / 50,000")
    ap.add_argument("--procs", default="1,2", help="Alpaca baseline process counts to time (default 1,2)")
    ap.add_argument("--scale", metavar="N,N,...", help="only part 3: `sprout dedup` on streams of these sizes "
                    "(e.g. 100000,200000,500000,1000000), each decision of a sample checked against rouge_score")
    ap.add_argument("--child", nargs=3, metavar=("N", "MODE", "K"), help=argparse.SUPPRESS)
    ap.add_argument("--scale-child", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(int(args.child[0]), args.child[1], int(args.child[2]))
        return
    if args.scale_child:
        scale_child(int(args.scale_child[0]), args.scale_child[1])
        return
    if args.scale:
        print(f"Part 3: sprout dedup (threshold 0.7) at scale; load average at start {os.getloadavg()[0]:.1f}", flush=True)
        rows = part3([int(x) for x in args.scale.split(",")])
        print("\n| instructions | wall (s) | CPU (s) | peak RSS (MiB) | kept | sampled decisions = rouge_score's |\n"
              "|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['n']:,} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mib']:.0f} | {r['kept']:,} | {r['agree']} |")
        print(f"\nload average at end {os.getloadavg()[0]:.1f}")
        return
    n1, n2 = (1000, 10000) if args.quick else (3000, 50000)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    print(f"machine: {len(os.sched_getaffinity(0))} cores, {cpu}; Python {platform.python_version()}; "
          f"load average at start {os.getloadavg()[0]:.1f}")
    print(f"Part 1: {n1} instructions, Alpaca's method vs Sprout (threshold 0.7)", flush=True)
    rows1, per_pair = part1(n1, [int(p) for p in args.procs.split(",")])
    print(f"Part 2: Sprout alone on {n2} instructions", flush=True)
    rows2, pairs2 = part2(n2)
    est = per_pair * pairs2
    print(f"  Alpaca's method would score {pairs2} pairs here: about {est / 3600:.1f} h at its measured "
          f"per-pair cost (an estimate, not run): {est / rows2[0]['cpu']:.0f}x the k=0 CPU time above, "
          f"{est / rows2[1]['cpu']:.0f}x the k=5 one")
    print(f"\n| Part 1 ({n1} instructions) | wall (s) | CPU (s) | speed-up, wall vs fastest Alpaca run "
          f"| speed-up, CPU vs 1-process Alpaca |\n|---|---:|---:|---:|---:|")
    for r in rows1:
        cpu = f"{r['cpu']:.3g}" if r["cpu"] else "-"
        up = (f"{r['ratio']:.0f}x | {r['ratio_cpu']:.0f}x" if r.get("ratio_cpu") else f"{r['ratio']:.0f}x | -") \
            if "ratio" in r else "- | -"
        print(f"| {r['what']} | {r['s']:.3g} | {cpu} | {up} |")
    print(f"\n| Part 2 ({n2} instructions) | wall (s) | CPU (s) | peak RSS (MiB) | kept |\n|---|---:|---:|---:|---:|")
    for r in rows2:
        print(f"| {r['what']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mib']:.0f} | {r['kept']} |")
    print(f"\nload average at end {os.getloadavg()[0]:.1f} (other work on the machine inflates wall times)")


if __name__ == "__main__":
    main()
