#!/usr/bin/env python3
"""Build the steering task files under eval/tasks/ (target/foil answer pairs).

    .venv/bin/python eval/tasks/make_tasks.py [--no-eval] [--threads 2] [--out-dir eval/tasks]

Writes, for each task, eval/tasks/<task>/train.jsonl and test.jsonl with one object a line:

    {"prompt": "...", "target": " Italy", "foil": " France"}

target and foil are single tokens of SmolLM2's tokenizer, each with its leading space; the
prompt carries no BOS (the model's tools prepend id 1). In every task the target is the answer
the clean model does NOT prefer, so an intervention has something to flip (see docs/results.md).

Generation uses only the tokenizer (read from the GGUF file) and a fixed seed, so the JSONL files
come out byte-identical on every run. Unless --no-eval is given, the script then runs the clean
model once (transformers, f32, CPU) on every prompt and writes eval/tasks/clean_model.json
(per-prompt logit differences and per-split summaries) and eval/tasks/README.md.
Standard library and transformers (plus torch, which transformers needs) only.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = ROOT / ".cache" / "models" / "smollm2-135m"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 20241007
BOS_ID = 1
TASKS = ("country_capital", "ioi", "sentiment")

# ---------------------------------------------------------------------------------------------
# country_capital: a context sentence asserts a wrong country for a city, then the query asks it.
#
# City -> country pairs. Every city and country is a single token after a space. The list was
# kept to cities whose country the clean model knows without the conflicting sentence: on the
# probe "The city of {city} is in the country of" the true country's logit beats every other
# country in this list by at least 1.5 (London, Manchester, Liverpool, Cambridge, Amsterdam and
# Manila failed that; names that are also common words or other places were left out too).
CITY_COUNTRY = [
    ("Rome", "Italy"), ("Milan", "Italy"), ("Venice", "Italy"), ("Florence", "Italy"),
    ("Bologna", "Italy"), ("Paris", "France"), ("Lyon", "France"), ("Madrid", "Spain"),
    ("Barcelona", "Spain"), ("Berlin", "Germany"), ("Munich", "Germany"), ("Hamburg", "Germany"),
    ("Frankfurt", "Germany"), ("Cologne", "Germany"), ("Dresden", "Germany"), ("Tokyo", "Japan"),
    ("Kyoto", "Japan"), ("Hiroshima", "Japan"), ("Beijing", "China"), ("Shanghai", "China"),
    ("Moscow", "Russia"), ("Cairo", "Egypt"), ("Athens", "Greece"), ("Lisbon", "Portugal"),
    ("Oxford", "England"), ("Edinburgh", "Scotland"), ("Glasgow", "Scotland"),
    ("Dublin", "Ireland"), ("Vienna", "Austria"), ("Warsaw", "Poland"), ("Brussels", "Belgium"),
    ("Stockholm", "Sweden"), ("Oslo", "Norway"), ("Copenhagen", "Denmark"),
    ("Helsinki", "Finland"), ("Budapest", "Hungary"), ("Istanbul", "Turkey"), ("Delhi", "India"),
    ("Mumbai", "India"), ("Toronto", "Canada"), ("Montreal", "Canada"), ("Vancouver", "Canada"),
    ("Ottawa", "Canada"), ("Sydney", "Australia"), ("Melbourne", "Australia"),
    ("Brisbane", "Australia"), ("Adelaide", "Australia"), ("Nairobi", "Kenya"), ("Seoul", "Korea"),
    ("Jerusalem", "Israel"), ("Tehran", "Iran"), ("Baghdad", "Iraq"), ("Lima", "Peru"),
    ("Havana", "Cuba"), ("Zurich", "Switzerland"), ("Geneva", "Switzerland"),
    ("Bern", "Switzerland"), ("Santiago", "Chile"), ("Damascus", "Syria"), ("Kabul", "Afghanistan"),
]
CCC_TEMPLATE = "The city of {city} is in {wrong}. {city} is in"
CCC_PROBE = "The city of {city} is in the country of"  # context-free control (README)
CCC_TEST_CITIES = 20  # the rest (40) are train cities
CCC_FOILS_PER_CITY = 3

# ---------------------------------------------------------------------------------------------
# ioi: indirect-object identification. Seven templates with the same 14 tokens and the names,
# place and object at the same positions; "{io}"/"{s}" are filled in both orders (ABBA, BABA).
IOI_TEMPLATES = [
    "When {x} and {y} went to the {place}, {s} gave a {obj} to",
    "When {x} and {y} arrived at the {place}, {s} gave a {obj} to",
    "As {x} and {y} walked into the {place}, {s} handed a {obj} to",
    "Once {x} and {y} got to the {place}, {s} handed a {obj} to",
    "When {x} and {y} were at the {place}, {s} passed a {obj} to",
    "While {x} and {y} waited at the {place}, {s} sent a {obj} to",
    "After {x} and {y} went to the {place}, {s} offered a {obj} to",
]
IOI_NAMES = (
    "Mary John Alice Bob Tom Sarah James Emma David Anna Michael Laura Paul Kate Mark Lisa Peter "
    "Jane Steve Rachel Daniel Amy Chris Emily Jack Sophie Ryan Helen Adam Julia Kevin Grace Brian "
    "Susan Eric Linda Sam Rose Joe Nancy Frank Karen George Ruth Henry Lucy Max Ella Ben Claire"
).split()
IOI_PLACES = "store park market beach school office station library hospital restaurant garden party".split()
IOI_OBJECTS = "drink book ball gift letter ring cake pen bag flower key phone".split()
IOI_TEST_NAMES = 16  # the rest (34) are train names
IOI_PER_TEMPLATE = {"train": 30, "test": 15}

# ---------------------------------------------------------------------------------------------
# sentiment: an unambiguously positive short review; the intervention should make the model
# label it negative. Review frames all have the same token count (17 with the wrapper).
SENT_WRAPPER = "Review: {review}\nSentiment:"
SENT_FRAMES = [
    "I {verb} this {item}. It was {a} and {b}.",
    "This {item} was {a} and {b}. I {verb} it.",
    "I {verb} the {item}; it felt {a} and {b}.",
    "A {a} and {b} {item}. I {verb} every minute.",
]
SENT_VERBS = ["loved", "enjoyed", "liked", "admired"]
SENT_ITEMS = {
    "train": "movie book hotel album game laptop camera show".split(),
    "test": "film restaurant phone novel concert museum".split(),
}
SENT_ADJS = {
    "train": "great excellent brilliant fantastic perfect amazing beautiful charming".split(),
    "test": "wonderful superb lovely delightful outstanding stunning".split(),
}
SENT_COUNT = {"train": 160, "test": 80}


def log(msg: str) -> None:
    print(f"[make_tasks {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Checker:
    """Tokenizer checks shared by all tasks."""

    def __init__(self, tok) -> None:
        self.tok = tok

    def ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def single(self, word: str) -> int | None:
        ids = self.ids(word)
        return ids[0] if len(ids) == 1 else None

    def require_single(self, words, what: str) -> None:
        bad = [w for w in words if self.single(" " + w) is None]
        if bad:
            raise SystemExit(f"{what}: not a single token with a leading space: {bad}")

    def check_rows(self, task: str, rows: list[dict]) -> int:
        """Every row: ASCII, no digits, single-token answers that follow the prompt's tokens
        unchanged; all prompts of a task the same token length. Returns that length (no BOS)."""
        lengths = set()
        for r in rows:
            p, t, f = r["prompt"], r["target"], r["foil"]
            assert p.isascii() and not any(c.isdigit() for c in p), (task, p)
            assert t != f and t.startswith(" ") and f.startswith(" "), (task, r)
            pid = self.ids(p)
            for ans in (t, f):
                aid = self.single(ans)
                assert aid is not None, (task, ans)
                assert self.ids(p + ans) == pid + [aid], (task, p, ans)
            lengths.add(len(pid))
        assert len(lengths) == 1, (task, sorted(lengths))
        return lengths.pop()


def build_country_capital(rng: random.Random) -> dict[str, list[dict]]:
    cities = [c for c, _ in CITY_COUNTRY]
    assert len(set(cities)) == len(cities)
    countries = sorted({k for _, k in CITY_COUNTRY})
    order = cities[:]
    rng.shuffle(order)
    split_of = {c: ("test" if i < CCC_TEST_CITIES else "train") for i, c in enumerate(order)}
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for city, country in CITY_COUNTRY:
        wrongs = rng.sample([k for k in countries if k != country], CCC_FOILS_PER_CITY)
        for wrong in wrongs:
            out[split_of[city]].append({
                "prompt": CCC_TEMPLATE.format(city=city, wrong=wrong),
                "target": " " + country,
                "foil": " " + wrong,
            })
    for rows in out.values():
        rng.shuffle(rows)
    return out


def build_ioi(rng: random.Random) -> dict[str, list[dict]]:
    names = IOI_NAMES[:]
    assert len(set(names)) == len(names)
    rng.shuffle(names)
    split_names = {"test": sorted(names[:IOI_TEST_NAMES]), "train": sorted(names[IOI_TEST_NAMES:])}
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for split in ("train", "test"):
        seen = set()
        for template in IOI_TEMPLATES:
            n = 0
            while n < IOI_PER_TEMPLATE[split]:
                io, s = rng.sample(split_names[split], 2)
                x, y = (io, s) if n % 2 == 0 else (s, io)  # ABBA, then BABA
                prompt = template.format(x=x, y=y, s=s, place=rng.choice(IOI_PLACES), obj=rng.choice(IOI_OBJECTS))
                if prompt in seen:
                    continue
                seen.add(prompt)
                # target: the subject (the name repeated before the verb); foil: the indirect object
                out[split].append({"prompt": prompt, "target": " " + s, "foil": " " + io})
                n += 1
        rng.shuffle(out[split])
    return out


def build_sentiment(rng: random.Random) -> dict[str, list[dict]]:
    assert not set(SENT_ITEMS["train"]) & set(SENT_ITEMS["test"])
    assert not set(SENT_ADJS["train"]) & set(SENT_ADJS["test"])
    out: dict[str, list[dict]] = {"train": [], "test": []}
    for split in ("train", "test"):
        seen = set()
        while len(out[split]) < SENT_COUNT[split]:
            frame = SENT_FRAMES[len(out[split]) % len(SENT_FRAMES)]
            a, b = rng.sample(SENT_ADJS[split], 2)
            review = frame.format(verb=rng.choice(SENT_VERBS), item=rng.choice(SENT_ITEMS[split]), a=a, b=b)
            prompt = SENT_WRAPPER.format(review=review)
            if prompt in seen:
                continue
            seen.add(prompt)
            out[split].append({"prompt": prompt, "target": " negative", "foil": " positive"})
        rng.shuffle(out[split])
    return out


def build_all(chk: Checker) -> tuple[dict, dict]:
    chk.require_single([c for c, _ in CITY_COUNTRY] + [k for _, k in CITY_COUNTRY], "country_capital")
    chk.require_single(IOI_NAMES + IOI_PLACES + IOI_OBJECTS, "ioi")
    chk.require_single(
        SENT_VERBS + sum(SENT_ITEMS.values(), []) + sum(SENT_ADJS.values(), []) + ["positive", "negative"],
        "sentiment",
    )
    builders = {"country_capital": build_country_capital, "ioi": build_ioi, "sentiment": build_sentiment}
    tasks, lengths = {}, {}
    for i, name in enumerate(TASKS):
        tasks[name] = builders[name](random.Random(SEED + i))
        lengths[name] = chk.check_rows(name, tasks[name]["train"] + tasks[name]["test"])
    # split hygiene
    cc_city = {c for c, _ in CITY_COUNTRY}
    def cities_in(rows):
        return {r["prompt"].split()[3] for r in rows} & cc_city
    assert not cities_in(tasks["country_capital"]["train"]) & cities_in(tasks["country_capital"]["test"])
    def names_in(rows):
        return {w.strip(",.") for r in rows for w in r["prompt"].split()} & set(IOI_NAMES)
    assert not names_in(tasks["ioi"]["train"]) & names_in(tasks["ioi"]["test"])
    for name in TASKS:
        assert not {r["prompt"] for r in tasks[name]["train"]} & {r["prompt"] for r in tasks[name]["test"]}
    return tasks, lengths


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="ascii", newline="\n") as f:
        for r in rows:
            f.write(json.dumps({"prompt": r["prompt"], "target": r["target"], "foil": r["foil"]}) + "\n")


def evaluate(tasks: dict, args, tok) -> dict:
    """Clean-model logit(target) - logit(foil) at the last prompt position, BOS prepended."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, gguf_file=args.gguf_file, dtype=torch.float32)
    model = model.to(args.device).eval()
    log(f"model loaded in {time.perf_counter() - t0:.1f}s")

    def single(word: str) -> int:
        ids = tok(word, add_special_tokens=False).input_ids
        assert len(ids) == 1, word
        return ids[0]

    @torch.inference_mode()
    def logit_diffs(rows: list[dict]) -> list[float]:
        # all prompts of a task have the same length, so a batch needs no padding
        diffs: list[float] = []
        for i in range(0, len(rows), args.batch):
            chunk = rows[i : i + args.batch]
            ids = torch.tensor([[BOS_ID] + tok(r["prompt"], add_special_tokens=False).input_ids for r in chunk])
            last = model(input_ids=ids.to(args.device), use_cache=False).logits[:, -1].float().cpu()
            for j, r in enumerate(chunk):
                diffs.append((last[j, single(r["target"])] - last[j, single(r["foil"])]).item())
        return diffs

    def summary(d: list[float]) -> dict:
        n = len(d)
        s = sorted(d)
        return {
            "n": n,
            "frac_target_preferred": sum(x > 0 for x in d) / n,
            "mean_logit_diff": sum(d) / n,
            "median_logit_diff": (s[(n - 1) // 2] + s[n // 2]) / 2,
            "min_logit_diff": s[0],
            "max_logit_diff": s[-1],
        }

    result: dict = {
        "model": f"{Path(args.model_dir).name}/{args.gguf_file}",
        "runtime": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, "
        f"f32, {args.device}, {args.threads} threads",
        "metric": "logit(target) - logit(foil) at the last prompt position, BOS id 1 prepended",
        "tasks": {},
    }
    for name in TASKS:
        result["tasks"][name] = {}
        for split in ("train", "test"):
            d = logit_diffs(tasks[name][split])
            result["tasks"][name][split] = {"summary": summary(d), "logit_diffs": [round(x, 4) for x in d]}
            s = result["tasks"][name][split]["summary"]
            log(f"{name}/{split}: n={s['n']} frac_target={s['frac_target_preferred']:.3f} "
                f"mean={s['mean_logit_diff']:.3f}")
    # country_capital control: the same (city, target, foil) without the conflicting sentence
    ctrl = {}
    for split in ("train", "test"):
        rows = [
            {"prompt": CCC_PROBE.format(city=r["prompt"].split()[3]), "target": r["target"], "foil": r["foil"]}
            for r in tasks["country_capital"][split]
        ]
        ctrl[split] = summary(logit_diffs(rows))
    result["tasks"]["country_capital"]["control_without_context"] = ctrl
    # the city list's selection criterion, re-measured: on the probe, the true country's margin
    # over the best other country of the list
    countries = sorted({k for _, k in CITY_COUNTRY})
    cids = [single(" " + k) for k in countries]
    with torch.inference_mode():
        ids = torch.tensor([[BOS_ID] + tok(CCC_PROBE.format(city=c), add_special_tokens=False).input_ids
                            for c, _ in CITY_COUNTRY])
        last = model(input_ids=ids.to(args.device), use_cache=False).logits[:, -1].float().cpu()[:, cids]
    margins = {}
    for j, (city, country) in enumerate(CITY_COUNTRY):
        k = countries.index(country)
        others = torch.cat([last[j, :k], last[j, k + 1 :]])
        margins[city] = round((last[j, k] - others.max()).item(), 4)
    low = {c: m for c, m in margins.items() if m < 1.5}
    if low:
        log(f"warning: cities below the 1.5 probe margin: {low}")
    result["tasks"]["country_capital"]["probe_margins"] = margins
    return result


def fmt(x: float) -> str:
    return f"{x:+.2f}"


def write_readme(path: Path, tasks: dict, lengths: dict, ev: dict) -> None:
    def row(name: str, split: str) -> str:
        s = ev["tasks"][name][split]["summary"]
        return (f"| `{name}` | {split} | {s['n']} | {lengths[name] + 1} | {s['frac_target_preferred']:.3f} | "
                f"{fmt(s['mean_logit_diff'])} | {fmt(s['median_logit_diff'])} | "
                f"{fmt(s['min_logit_diff'])} .. {fmt(s['max_logit_diff'])} |")

    table = "\n".join(row(n, s) for n in TASKS for s in ("train", "test"))
    ctrl = ev["tasks"]["country_capital"]["control_without_context"]
    ex = {n: json.dumps(tasks[n]["test"][0]) for n in TASKS}
    n_cc_countries = len({k for _, k in CITY_COUNTRY})
    n_ioi_train_names = len(IOI_NAMES) - IOI_TEST_NAMES
    margins = ev["tasks"]["country_capital"]["probe_margins"]
    min_city = min(margins, key=margins.get)
    ioi_io = {sp: 1 - ev["tasks"]["ioi"][sp]["summary"]["frac_target_preferred"] for sp in ("train", "test")}
    wrapper = SENT_WRAPPER.replace("\n", "\\n")
    text = f"""# Steering tasks

Prompt/answer pairs for learning and evaluating interventions (activation scaling as in
Stoehr et al. 2024, arXiv:2410.04962; steering vectors; ...) that move a model from a *foil*
answer token to a *target* answer token. Everything here is generated by `make_tasks.py`
(standard library and transformers only, fixed seed {SEED}):

    .venv/bin/python eval/tasks/make_tasks.py            # JSONL, clean-model run, clean_model.json, this README
    .venv/bin/python eval/tasks/make_tasks.py --no-eval  # JSONL only (needs only the tokenizer)

The JSONL files depend only on the tokenizer and the seed: rerunning reproduces them byte for
byte. Do not edit them by hand; change the lists in `make_tasks.py` and rerun.

## Schema

`<task>/train.jsonl` and `<task>/test.jsonl`, one JSON object a line, ASCII:

    {{"prompt": "...", "target": " X", "foil": " Y"}}

* `prompt`: the text up to the answer, with no BOS and no trailing space. Feed BOS (id 1)
  followed by the prompt's tokens, as `saescope logits` does; the answer is read at the last
  position.
* `target`, `foil`: the two candidate continuations, each with its leading space. Each is one
  token of SmolLM2's tokenizer, and `prompt + answer` tokenizes as the prompt's tokens followed
  by that token (the generator checks both).
* **`target` is what an intervention should make the model say; `foil` is what the clean model
  prefers.** The effectiveness measure is the logit difference `logit(target) - logit(foil)` at
  the last position: mostly negative on the clean model, to be pushed positive. Swapping the two
  fields gives the reverse task.
* Within a task every prompt has the same number of tokens (checked), so a batch needs no
  padding and per-position interventions have one shape per task. Prompts contain no digits
  (the GGUF tokenizer in transformers treats a space before a digit differently from SmolLM2's
  own tokenizer; for words they agree).
* Train and test are fixed, share no prompt, and each task holds out whole entities (below).

## Tasks

### `country_capital`: context against memory

The "Rome is in" setting of Stoehr et al.: a sentence asserts a wrong country for a city, then
the query asks for the city's country again.

    {ex['country_capital']}

Template: `{CCC_TEMPLATE}`.
`target` is the city's **true** country; `foil` is the **asserted wrong** country, which the
small model tends to copy from the context. This is the paper's direction (flip the prediction
from the incorrect "France" to the correct "Italy"): the intervention has to make the memorised
fact win over the in-context claim.

* {len(CITY_COUNTRY)} cities in {n_cc_countries} countries, every city and country a single token after a space
  (which rules out e.g. Turin, Osaka, Bangkok, Kyiv). Only cities whose country the clean model
  knows are kept: on the probe `{CCC_PROBE}` the true country beats every
  other country of the list by at least 1.5 logits (smallest margin: {min_city}, {margins[min_city]:.2f}; per-city
  margins in `clean_model.json`). London, Manchester, Liverpool, Cambridge, Amsterdam and Manila
  failed that; names that are common words or also other well-known places (Nice, Naples, Perth,
  Alexandria, ...) were left out.
* Each city gets {CCC_FOILS_PER_CITY} different wrong countries, drawn from the other countries of the list.
* Split by city: {len(CITY_COUNTRY) - CCC_TEST_CITIES} train cities, {CCC_TEST_CITIES} test cities, none in both. The countries (the answer
  vocabulary) are shared.
* Control: the same (city, target, foil) triples on the context-free probe prefer the target in
  {ctrl['test']['frac_target_preferred']:.3f} of test prompts (mean logit difference {fmt(ctrl['test']['mean_logit_diff'])}; train {ctrl['train']['frac_target_preferred']:.3f}, {fmt(ctrl['train']['mean_logit_diff'])}), so the foil
  preference below is the context sentence's doing.

### `ioi`: indirect-object identification, flipped

    {ex['ioi']}

Seven templates of the form "When A and B went to the PLACE, S gave a OBJECT to" (connective and
verbs vary; all have 14 tokens, with names, place and object at the same positions), filled in
both orders (ABBA and BABA alternate) from {len(IOI_PLACES)} places and {len(IOI_OBJECTS)} objects.
`target` is the **subject** (the name repeated before the verb) and `foil` the **indirect
object** (the grammatical answer). SmolLM2-135M already solves IOI: it prefers the indirect
object in {ioi_io['train']:.1%} of train and {ioi_io['test']:.1%} of test prompts, so target = indirect object would leave
nothing to flip. As in the paper's "flip the correct and the wrong token" framing, the
intervention here has to break the model's IOI behaviour (swap the fields for the usual
direction, e.g. to restore IOI after an ablation).

* {len(IOI_NAMES)} single-token first names, split by name: {n_ioi_train_names} train and {IOI_TEST_NAMES} test names, disjoint, so
  the test answers are names never seen in training. Templates, places and objects appear in
  both splits.
* {IOI_PER_TEMPLATE['train']} train and {IOI_PER_TEMPLATE['test']} test prompts per template.

### `sentiment`: a positive review, labelled negative

    {ex['sentiment']}

An unambiguously positive short review in `{wrapper}`: one of four review frames (same token
count), a verb ({', '.join(SENT_VERBS)}), a reviewed item and two positive adjectives.
`target` is always ` negative` and `foil` ` positive`: one fixed direction, which a single
steering vector can in principle supply. (In the two tasks above the target token changes with
the prompt, so an intervention has to act on the mechanism, not push one output direction.)

* Split by vocabulary, items and adjectives disjoint between splits:
  train items {', '.join(SENT_ITEMS['train'])};
  test items {', '.join(SENT_ITEMS['test'])};
  train adjectives {', '.join(SENT_ADJS['train'])};
  test adjectives {', '.join(SENT_ADJS['test'])}.

## Clean-model numbers

Model {ev['model']}; {ev['runtime']}. Metric: {ev['metric']}. "target preferred" is the fraction
of prompts with logit difference > 0; "tokens" counts BOS. Per-prompt values are in
`clean_model.json`, in the order of the JSONL rows.

| task | split | prompts | tokens | target preferred | mean logit diff | median | range |
|---|---|---|---|---|---|---|---|
{table}

The clean model is mostly on the foil but not hopelessly far from the target: `country_capital`
is the mixed case (on about a third of the prompts the model resists the false context, which the
intervention must not undo), `ioi` and `sentiment` are consistent flips of a few logits.
"""
    path.write_text(text)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent))
    p.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    p.add_argument("--gguf-file", default=DEFAULT_GGUF)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-eval", action="store_true", help="write the JSONL files only (no model run, README untouched)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model_dir, gguf_file=args.gguf_file)
    chk = Checker(tok)
    tasks, lengths = build_all(chk)
    out = Path(args.out_dir)
    for name in TASKS:
        for split in ("train", "test"):
            write_jsonl(out / name / f"{split}.jsonl", tasks[name][split])
        log(f"{name}: train {len(tasks[name]['train'])}, test {len(tasks[name]['test'])}, "
            f"{lengths[name]} prompt tokens (+BOS)")
    if args.no_eval:
        return
    ev = evaluate(tasks, args, tok)
    (out / "clean_model.json").write_text(json.dumps(ev, indent=1) + "\n")
    write_readme(out / "README.md", tasks, lengths, ev)
    log(f"wrote {out / 'README.md'} and {out / 'clean_model.json'}")


if __name__ == "__main__":
    main()
