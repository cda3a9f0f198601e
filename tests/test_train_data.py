"""Loading every accepted dataset kind, and the UserError each bad input gives (file, row, field)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator.errors import UserError
from trainer.data import Fields, load_examples, split_eval

ALPACA = [
    {"instruction": "Name a fruit.", "input": "", "output": "Apple."},
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "output": "Hi!"},  # no input field at all
]
CHAT = [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
                  {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
                  {"role": "assistant", "content": "6"}]},
]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def assert_alpaca(examples):
    assert [e.alpaca for e in examples] == [("Name a fruit.", "", "Apple."), ("Add the numbers.", "2 and 3", "5"),
                                            ("Say hi.", "", "Hi!")]
    assert examples[1].messages == [{"role": "user", "content": "Add the numbers.\n\n2 and 3"},
                                    {"role": "assistant", "content": "5"}]


def test_run_directory(tmp_path):
    # A Sprout run directory: data.jsonl with provenance fields beside other files.
    rows = [{**r, "id": i, "source": "teacher", "rouge_max": 0.3} for i, r in enumerate(ALPACA)]
    write_jsonl(tmp_path / "data.jsonl", rows)
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "rejected.jsonl").write_text("")
    assert_alpaca(load_examples(tmp_path))


def test_alpaca_jsonl_and_where(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [ALPACA[0], "", ALPACA[1], ALPACA[2]])  # blank line skipped
    examples = load_examples(path)
    assert_alpaca(examples)
    assert examples[1].where == f"{path} line 3"


def test_messages_jsonl(tmp_path):
    examples = load_examples(write_jsonl(tmp_path / "c.jsonl", CHAT))
    assert examples[0].alpaca is None
    assert [m["role"] for m in examples[1].messages] == ["system", "user", "assistant", "user", "assistant"]


def test_json_list_and_json_lines_named_json(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ALPACA, indent=2))
    assert_alpaca(load_examples(tmp_path / "list.json"))
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": ALPACA}))
    assert_alpaca(load_examples(tmp_path / "wrapped.json"))
    assert_alpaca(load_examples(write_jsonl(tmp_path / "lines.json", ALPACA)))


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": r["instruction"], "input": r.get("input"), "output": r["output"]} for r in ALPACA]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert_alpaca(load_examples(tmp_path / "d.parquet"))
    pq.write_table(pa.Table.from_pylist(CHAT), tmp_path / "c.parquet")
    assert load_examples(tmp_path / "c.parquet")[1].messages[-1] == {"role": "assistant", "content": "6"}


def test_hf_datasets_folder_and_datasetdict(tmp_path):
    import datasets

    rows = [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in ALPACA]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    assert_alpaca(load_examples(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(CHAT)}).save_to_disk(str(tmp_path / "dd"))
    examples = load_examples(tmp_path / "dd")
    assert len(examples) == 2 and examples[0].where.endswith("train row 1")


def test_folder_with_one_data_file(tmp_path):
    write_jsonl(tmp_path / "export.jsonl", ALPACA)
    assert_alpaca(load_examples(tmp_path))


def test_column_mapping(tmp_path):
    rows = [{"prompt": "Name a fruit.", "context": "", "completion": "Apple."}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    ex = load_examples(path, Fields(instruction="prompt", input="context", output="completion"))
    assert ex[0].alpaca == ("Name a fruit.", "", "Apple.")
    # ShareGPT: conversations of {from, value} with human/gpt roles.
    rows = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
    ex = load_examples(write_jsonl(tmp_path / "s.jsonl", rows), Fields(messages="conversations"))
    assert ex[0].messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


@pytest.mark.parametrize(("rows", "expected"), [
    ([ALPACA[0], ALPACA[1], '{"instruction": "x", "output": '], ["line 3", "not valid JSON"]),
    ([ALPACA[0], {"instruction": "x", "input": ""}], ["line 2", "missing field 'output'"]),
    ([ALPACA[0], {"instruction": "x", "output": 42}], ["line 2", "field 'output'", "expected a string, got int"]),
    ([{"instruction": ["a"], "output": "b"}], ["line 1", "field 'instruction'", "got list"]),
    ([{"instruction": "a", "input": 3, "output": "b"}], ["line 1", "field 'input'", "got int"]),
    ([{"instruction": "a", "output": "  "}], ["line 1", "field 'output' is empty"]),
    ([{"question": "a", "answer": "b"}], ["line 1", "no 'messages' field", "--instruction-field"]),
    ([[1, 2]], ["line 1", "expected a record"]),
    ([{"messages": "hi"}], ["line 1", "field 'messages'", "got str"]),
    ([{"messages": [{"role": "user", "content": "hi"}]}], ["line 1", "no non-empty assistant turn"]),
    ([{"messages": [{"role": "robot", "content": "hi"}]}], ["line 1", "field 'messages'[0]", "role 'robot'"]),
    ([{"messages": [{"role": "assistant", "content": None}]}], ["line 1", "field 'messages'[0]", "got null"]),
])
def test_bad_rows_name_file_row_and_field(tmp_path, rows, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(UserError) as err:
        load_examples(path)
    msg = str(err.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    for part in expected:
        assert part in msg


def test_bad_rows_in_other_formats_name_the_row(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([ALPACA[0], {"instruction": "x", "output": 1}]))
    with pytest.raises(UserError, match=r"d\.json row 2: field 'output': expected a string, got int"):
        load_examples(tmp_path / "d.json")
    (tmp_path / "broken.json").write_text('[{"instruction": "x",\n "output": }]')
    with pytest.raises(UserError, match=r"broken\.json line 2: not valid JSON"):
        load_examples(tmp_path / "broken.json")
    (tmp_path / "obj.json").write_text('"just a string"')
    with pytest.raises(UserError, match="expected a JSON list of rows"):
        load_examples(tmp_path / "obj.json")


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.json"])
def test_empty_dataset(tmp_path, name):
    (tmp_path / name).write_text({"empty.jsonl": "", "blank.jsonl": "\n\n", "empty.json": "[]"}[name])
    with pytest.raises(UserError, match=rf"{name}: no examples \(empty dataset\)"):
        load_examples(tmp_path / name)


def test_bad_paths(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(UserError, match=r"d.csv: no examples \(empty dataset\)"):
        load_examples(tmp_path / "d.csv")
    # the one reader (generator/rows.py): CSV, with Excel's byte-order mark, is training data too
    (tmp_path / "e.csv").write_bytes("\ufeffinstruction,input,output\nSay hi,,hi there\n".encode())
    (ex,) = load_examples(tmp_path / "e.csv")
    assert ex.alpaca == ("Say hi", "", "hi there") and ex.where.endswith("e.csv line 2")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no data.jsonl"):
        load_examples(tmp_path / "empty_dir")
    (tmp_path / "not.parquet").write_text("nope")
    with pytest.raises(UserError, match="not a readable parquet file"):
        load_examples(tmp_path / "not.parquet")


def test_split_eval_is_deterministic_and_disjoint(tmp_path):
    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(40)]
    examples = load_examples(write_jsonl(tmp_path / "d.jsonl", rows))
    train, held = split_eval(examples, 0.1, seed=3)
    assert (len(train), len(held)) == (36, 4)
    assert {e.alpaca for e in train}.isdisjoint({e.alpaca for e in held})
    assert [e.alpaca for e in split_eval(examples, 0.1, seed=3)[1]] == [e.alpaca for e in held]
    assert split_eval(examples, 0.0, seed=3) == (examples, [])


def test_hub_id_is_tried_when_no_local_file_has_the_name(tmp_path, monkeypatch):
    """`org/name[:split]` that is no local path goes to datasets.load_dataset; offline (this
    machine, and HF_HUB_OFFLINE here) it is one line naming the id, the split and that no local
    file has the name. Loading from the Hub itself is not tested: no network here."""
    from generator.rows import HUB_ID, read_rows

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert HUB_ID.fullmatch("tatsu-lab/alpaca") and HUB_ID.fullmatch("org/name:test")
    assert not HUB_ID.fullmatch("runs/gen/data.jsonl") and not HUB_ID.fullmatch("/abs/path")
    with pytest.raises(UserError, match=r"org/tiny:test: no such file or folder here, and not loadable as the "
                                        r"Hugging Face Hub dataset 'org/tiny' \(split 'test'\): "):
        read_rows("org/tiny:test")
    with pytest.raises(UserError, match=r"^seeds/missing.jsonl: no such file or folder$"):
        read_rows("seeds/missing.jsonl")  # a data file's name is never taken for a hub id
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "tiny").write_text('{"instruction": "Say hi.", "output": "Hi."}\n')
    assert read_rows("org/tiny")[0][1] == {"instruction": "Say hi.", "output": "Hi."}  # a local file wins


def test_train_yaml_takes_trainingarguments_and_trl_names(tmp_path):
    """A user's HF / TRL YAML reads as is: the names map onto Sprout's settings, 3.0 epochs is 3,
    and one setting given under both names is refused."""
    from generator.config import load_config
    from trainer.config import TrainConfig

    y = tmp_path / "sft.yaml"
    y.write_text("model_name_or_path: my/model\ndataset_name: org/data\noutput_dir: out\nlearning_rate: 1.0e-4\n"
                 "num_train_epochs: 2.0\nper_device_train_batch_size: 16\ngradient_accumulation_steps: 4\n"
                 "lr_scheduler_type: linear\nmax_seq_length: 2048\nlora_target_modules: [q_proj, v_proj]\n"
                 "warmup_ratio: 0.1\n")
    cfg = load_config(TrainConfig, y, {"lr": None, "batch_size": 2})
    assert (cfg.model, cfg.data, cfg.out, cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.schedule,
            cfg.max_length, cfg.target_modules, cfg.warmup_ratio) == \
        ("my/model", "org/data", "out", 1e-4, 2, 2, 4, "linear", 2048, ["q_proj", "v_proj"], 0.1)  # the flag wins
    y.write_text("lr: 1.0e-4\nlearning_rate: 2.0e-4\n")
    with pytest.raises(UserError, match="'lr' and 'learning_rate' both set lr"):
        load_config(TrainConfig, y)
    y.write_text("num_train_epochs: 2.5\n")
    with pytest.raises(UserError, match="num_train_epochs: expected an integer"):
        load_config(TrainConfig, y)


def test_batches_grouped_by_length_or_random_cover_every_example_once():
    """--group-by-length (default) sorts inside windows of 64 batches, so a small set is fully
    sorted: each batch is all-short or all-long. --no-group-by-length draws plain random batches.
    Either way an epoch is every example exactly once, and the plan is a function of the seed."""
    import random

    from trainer.batching import length_grouped_batches

    lengths = [random.Random(i).randint(5, 500) for i in range(96)]
    grouped = length_grouped_batches(lengths, 8, seed=0, epoch=0)
    plain = length_grouped_batches(lengths, 8, seed=0, epoch=0, group=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(96)) and all(len(b) == 8 for b in batches)

    def spread(batches):  # mean (longest - shortest) inside a batch
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert spread(grouped) < spread(plain) / 5
    assert plain == length_grouped_batches(lengths, 8, seed=0, epoch=0, group=False)
    assert plain != length_grouped_batches(lengths, 8, seed=0, epoch=1, group=False)
