"""Data sources: token files, text, JSONL, ArrayRecord and tfds documents, tokenizers, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from data_helpers import EOT, TEXTS, TFDS_NAME, build_tfds_dataset, data_config, train_bpe, write_raw
from hybridlm import config_checks
from hybridlm.data import ByteTokenizer, TokenStream, load_tokenizer, make_lm_dataset
from hybridlm.data.builtin_corpus import is_heldout
from hybridlm.data.documents import DocumentSpec, open_documents
from hybridlm.data.pipeline import load_data, mixture_unigram_entropy
from hybridlm.data.sources import SOURCES, Source
from hybridlm.data.token_files import open_token_files, write_metadata
from hybridlm.model.config import ConfigError
from hybridlm.trainer import Trainer

EOS = ByteTokenizer.eos_id


def _open(files, dtype=None, vocab_size=1000):
    return open_token_files([str(f) for f in files], dtype=dtype, vocab_size=vocab_size, eos_id=EOS, key="paths")


def _rows(ds, num_rows):
    """The first `num_rows` rows of `ds` as whole windows [num_rows, seq_len + 1]."""
    batches, rows = [], 0
    while rows < num_rows:
        batch = ds[len(batches)]
        batches.append(np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1))
        rows += len(batch["inputs"])
    return np.concatenate(batches)[:num_rows]


# Token streams and token files.


def test_token_stream_reads_across_parts_and_splits():
    stream = TokenStream([np.arange(0, 5), np.arange(5, 5), np.arange(5, 12)], ["a", "empty", "b"])
    assert stream.size == 12
    np.testing.assert_array_equal(stream.read(3, 9), np.arange(3, 9))
    np.testing.assert_array_equal(stream.read(5, 7), [5, 6])
    train, heldout = stream.split(0.25)
    assert (train.size, heldout.size) == (9, 3)
    np.testing.assert_array_equal(heldout.read(0, 3), [9, 10, 11])
    assert heldout.describe()["range"] == [9, 12]


def test_token_files_raw_header_and_metadata(tmp_path):
    raw16 = write_raw(tmp_path / "a.npy", np.arange(10, dtype=np.uint16))
    np.save(tmp_path / "b.npy", np.arange(10, 20, dtype=np.uint16))
    stream = _open([raw16, tmp_path / "b.npy"], dtype="uint16")
    np.testing.assert_array_equal(stream.read(0, 20), np.arange(20))
    assert [p["file"] for p in stream.describe()["parts"]] == ["a.npy", "b.npy"]

    prepared = write_raw(tmp_path / "prepared" / "part-00000.npy", np.arange(6, dtype=np.uint32))
    entry = {"num_tokens": 6, "num_documents": 1, "max_token_id": 5}
    meta = dict(dtype="uint32", tokenizer="byte", eos_id=EOS, vocab_size=258, files={"part-00000.npy": entry})
    write_metadata(prepared.parent, meta)
    np.testing.assert_array_equal(_open([prepared]).read(0, 6), np.arange(6))  # dtype from metadata.json
    entry["max_token_id"] = 999  # the metadata is trusted instead of scanning the file
    write_metadata(prepared.parent, meta)
    with pytest.raises(ValueError, match="holds token id 999"):
        _open([prepared], vocab_size=500)


def test_epoch_covers_every_token_exactly_once(tmp_path):
    """Three files (documents cross file boundaries), packed into 9-token windows: one epoch of shuffled batches
    holds every token once; a stream that is not a whole number of windows loses only its tail."""
    sizes = (100, 71, 72)  # 243 tokens = 27 windows of seq_len + 1 = 9
    bounds = np.cumsum((0,) + sizes)
    files = [
        write_raw(tmp_path / f"{i}.npy", np.arange(a, b, dtype=np.uint32))
        for i, (a, b) in enumerate(zip(bounds, bounds[1:]))
    ]
    common = dict(seq_len=8, batch_size=4, eos_id=EOS, document_ids=True)
    ds = make_lm_dataset(_open(files, "uint32"), seed=1, shuffle=True, **common)
    epoch = _rows(ds, 27)  # 6.75 batches: the 7th batch straddles into the next epoch
    np.testing.assert_array_equal(np.sort(epoch.reshape(-1)), np.arange(243))
    assert not np.array_equal(epoch[:, 0], np.arange(0, 243, 9))  # shuffled
    next_epoch = _rows(ds, 54)[27:]
    np.testing.assert_array_equal(np.sort(next_epoch.reshape(-1)), np.arange(243))

    short = make_lm_dataset(_open(files[:2], "uint32"), seed=1, shuffle=True, **common)  # 171 = 19 * 9 + 0
    np.testing.assert_array_equal(np.sort(_rows(short, 19).reshape(-1)), np.arange(171))
    ragged = make_lm_dataset(_open(files[1:], "uint32"), seed=1, shuffle=True, **common)  # 143 = 15 * 9 + 8
    np.testing.assert_array_equal(np.sort(_rows(ragged, 15).reshape(-1)), np.arange(100, 235))


def test_mixture_weights_and_per_group_epochs(tmp_path):
    a = write_raw(tmp_path / "a" / "0.npy", np.arange(0, 9 * 10, dtype=np.uint16))  # 10 windows
    b = write_raw(tmp_path / "b" / "0.npy", np.arange(500, 500 + 9 * 3, dtype=np.uint16))  # 3 windows
    streams = [_open([a], "uint16"), _open([b], "uint16")]
    ds = make_lm_dataset(
        streams, weights=(3, 1), seq_len=8, batch_size=4, seed=0, shuffle=True, eos_id=EOS, document_ids=False
    )
    rows = _rows(ds, 400)
    from_b = rows[:, 0] >= 500
    assert from_b.mean() == pytest.approx(0.25, abs=0.01)
    first_epoch_b = rows[from_b][:3, 0]
    assert sorted(first_epoch_b) == [500, 509, 518]  # each group repeats on its own, a whole epoch at a time
    assert sorted(rows[~from_b][:10, 0]) == list(range(0, 90, 9))
    tiny = _open([write_raw(tmp_path / "c" / "0.npy", np.arange(5, dtype=np.uint16))], "uint16")
    with pytest.raises(ValueError, match=r"mixture group 1 \(.*c/0.npy, ...\) has 5 tokens, fewer than one sequence"):
        make_lm_dataset(
            [streams[0], tiny],
            weights=(1, 1),
            seq_len=8,
            batch_size=4,
            seed=0,
            shuffle=True,
            eos_id=EOS,
            document_ids=False,
        )
    with pytest.raises(ValueError, match="one positive weight per group"):
        make_lm_dataset(
            streams, weights=(1,), seq_len=8, batch_size=4, seed=0, shuffle=True, eos_id=EOS, document_ids=False
        )


def test_unigram_entropy_of_a_mixture():
    streams = [TokenStream([np.zeros(10, np.uint16)], ["a"]), TokenStream([np.ones(30, np.uint16)], ["b"])]
    assert mixture_unigram_entropy(streams, (1.0, 1.0), 4) == pytest.approx(np.log(2))
    assert mixture_unigram_entropy(streams, None, 4) == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)))


def test_process_slices_make_up_the_global_batch(tmp_path):
    stream = _open([write_raw(tmp_path / "t.npy", np.arange(9 * 40, dtype=np.uint32))], "uint32")
    common = dict(seq_len=8, batch_size=8, seed=3, shuffle=True, eos_id=EOS, document_ids=True)
    whole = make_lm_dataset(stream, **common)
    parts = [make_lm_dataset(stream, process_index=p, process_count=4, **common) for p in range(4)]
    for step in (0, 1, 7, 1000):
        for key in ("inputs", "targets", "segment_ids"):
            local = [part[step][key] for part in parts]
            assert all(x.shape == (2, 8) for x in local)
            np.testing.assert_array_equal(np.concatenate(local), whole[step][key])


def test_restored_iterator_continues_with_the_same_batches(tmp_path):
    """grain's iterator state is what checkpoints keep: a new iterator set to it yields the batches the old one
    would have."""
    import grain

    config = data_config(source="token_files", paths=(str(tmp_path / "*.npy"),), dtype="uint16", seq_len=8)
    write_raw(tmp_path / "t.npy", (np.arange(2000) % 250).astype(np.uint16))
    data = load_data(config)
    options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)
    unbroken = iter(data.train.to_iter_dataset(options))
    expected = [next(unbroken)["inputs"] for _ in range(8)]
    first = iter(data.train.to_iter_dataset(options))
    for _ in range(5):
        next(first)
    state = json.loads(json.dumps(first.get_state()))  # as it round-trips through the checkpoint
    resumed = iter(load_data(config).train.to_iter_dataset(options))
    resumed.set_state(state)
    for step in range(5, 8):
        np.testing.assert_array_equal(next(resumed)["inputs"], expected[step])


# Errors: each names the file or value, and comes before anything is built.


@pytest.mark.parametrize(
    "make, data, expected",
    [
        (None, dict(paths=("{tmp}/missing.npy",)), "config.data.paths[0]: no such file '{tmp}/missing.npy'"),
        (None, dict(paths=("{tmp}/*.npy",)), "config.data.paths[0]: the glob '{tmp}/*.npy' matches no file"),
        (("t.npy", np.arange(7, dtype=np.uint8)), dict(dtype="uint32"), "t.npy has 7 bytes, not a whole number"),
        (("t.npy", None), dict(dtype="uint32"), "t.npy holds uint16 tokens but config.data.dtype says uint32"),
        (("t.npy", np.array([1, 2, 3, 5000], np.uint32)), dict(dtype="uint32"), "t.npy holds token id 5000 (first at"),
        (("t.npy", np.zeros(0, np.uint16)), dict(dtype="uint16"), "config.data.paths: every file is empty"),
        (("t.npy", np.arange(60, dtype=np.uint16)), dict(dtype="uint16"), "training split has 48 tokens but one batch"),
        (("t.npy", np.arange(60, dtype=np.uint16)), dict(dtype="uint16", seq_len=64), "= 4*(64+1) = 260; lower"),
        (("t.npy", np.arange(60, dtype=np.uint16)), dict(), "t.npy has no numpy header and no metadata.json"),
        (("d.jsonl", b""), dict(source="jsonl"), "hold no documents"),
        (
            ("d.jsonl", b'{"text": "a"}\n\n{"body": "b"}\n'),
            dict(source="jsonl"),
            "d.jsonl:3 has no string field 'text'",
        ),
        (("d.txt", b"\xff\xfe"), dict(source="text"), "d.txt is not UTF-8 text"),
        (None, dict(source="tfds", paths=(), tfds_name="no_such_dataset", tfds_data_dir="{tmp}"), "no_such_dataset"),
        (("t.npy", None), dict(tokenizer="{tmp}/nope.json"), "config.data.tokenizer='{tmp}/nope.json': no such file"),
        (None, dict(source="builtin"), "config.data.paths=('{tmp}/*',) is only read by"),
        (None, dict(weights=(1.0, 2.0)), "config.data.weights=(1.0, 2.0) must be one positive weight per entry"),
    ],
)
def test_bad_input_is_refused_before_anything_is_built(tmp_path, make, data, expected):
    tmp = str(tmp_path)

    def fill(value):
        if isinstance(value, tuple):
            return tuple(fill(v) for v in value)
        return value.format(tmp=tmp) if isinstance(value, str) else value

    data = {key: fill(value) for key, value in data.items()}
    data.setdefault("source", "token_files")
    data.setdefault("paths", (f"{tmp}/*",))
    if make is not None:
        name, content = make
        if content is None:
            np.save(tmp_path / name, np.arange(100, dtype=np.uint16))
        elif isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            write_raw(tmp_path / name, content)
    config = data_config(**data)
    config.data.heldout_fraction = 0.2
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as error:
        Trainer(config, workdir)
    assert expected.format(tmp=tmp) in str(error.value)
    assert "\n" not in str(error.value)
    assert not workdir.exists()


def test_a_registered_source_is_validated_and_read(monkeypatch):
    """config.data.source is looked up in the table of sources: one registered here (a constant token stream) passes
    validation, is read by load_data, and is listed when an unknown source is refused."""

    def constant(config, group):
        tokens = np.tile(np.array([1, 2, 3, EOS], np.uint16), 64)
        return TokenStream([tokens], ["constant training"]), TokenStream([tokens[:64]], ["constant held-out"])

    monkeypatch.setitem(SOURCES, "constant", Source(constant, takes_paths=False, needs=(), made_with=lambda d: None))
    config = data_config(source="constant", seq_len=8)
    config_checks.validate(config)
    assert set(load_data(config).train[0]["inputs"].ravel().tolist()) <= {1, 2, 3, EOS}
    config.data.source = "nope"
    with pytest.raises(ConfigError, match=r"config.data.source='nope' is not one of \('builtin', .*'constant'\)"):
        config_checks.validate(config)


# Tokenizers and document sources.


def test_bpe_tokenizer_from_json(tmp_path):
    path = train_bpe(tmp_path / "bpe")
    tokenizer = load_tokenizer(str(path), EOT)
    assert tokenizer.eos_id == 0 and tokenizer.vocab_size <= 300
    ids = tokenizer.encode_batch(["the quick brown fox", "to be"])
    assert tokenizer.decode(ids[0]) == "the quick brown fox" and len(ids[0]) < len("the quick brown fox")
    with pytest.raises(ValueError, match="names no eos_token"):
        load_tokenizer(str(path))
    with pytest.raises(ValueError, match="has no token '</s>'"):
        load_tokenizer(str(path), "</s>")
    configured = train_bpe(tmp_path / "with_config", with_config=True)
    assert load_tokenizer(str(configured.parent)).eos_id == 0  # the directory, eos from tokenizer_config.json


def test_jsonl_with_bpe_tokenizer_end_to_end(tmp_path):
    """JSONL documents tokenized with a BPE tokenizer trained here: whole documents in order, eos after each,
    every 5th document held out, segment ids counting documents."""
    tokenizer_path = train_bpe(tmp_path / "bpe")
    lines = [json.dumps({"text": t, "id": i}) for i, t in enumerate(TEXTS)]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines[:20]) + "\n\n" + "\n".join(lines[20:]) + "\n")
    config = data_config(
        source="jsonl", paths=(str(tmp_path / "docs.jsonl"),), tokenizer=str(tokenizer_path), eos_token=EOT, seq_len=8
    )
    config.data.batch_size, config.data.heldout_fraction = 2, 0.2
    data = load_data(config)
    tokenizer = load_tokenizer(str(tokenizer_path), EOT)
    train_texts = [t for i, t in enumerate(TEXTS) if not is_heldout(i, 0.2)]
    expected = np.concatenate([np.append(ids, tokenizer.eos_id) for ids in tokenizer.encode_batch(train_texts)])
    stream = np.concatenate(
        [np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in (data.train[s] for s in range(40))]
    )
    windows = {tuple(row) for row in stream}
    width = 9
    assert windows == {tuple(expected[i : i + width]) for i in range(0, expected.size - width + 1, width)}
    batch = data.train[0]
    after_eos = np.cumsum(batch["inputs"][:, :-1] == tokenizer.eos_id, axis=1)
    np.testing.assert_array_equal(batch["segment_ids"][:, 1:], after_eos)
    assert data.fingerprint["train"][0]["parts"][0]["blake2b"]


def test_text_and_array_record_sources(tmp_path):
    for i, text in enumerate(TEXTS[:4]):
        (tmp_path / "text" / f"{i}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "text" / f"{i}.txt").write_text(text)
    writer = ArrayRecordWriter(str(tmp_path / "docs.array_record"), "group_size:1")
    for text in TEXTS[:4]:
        writer.write(text.encode("utf-8"))
    writer.close()
    texts = open_documents(DocumentSpec("text", tuple(str(tmp_path / "text" / f"{i}.txt") for i in range(4))))
    records = open_documents(DocumentSpec("array_record", (str(tmp_path / "docs.array_record"),)))
    assert [texts[i] for i in range(4)] == [records[i] for i in range(4)] == TEXTS[:4]
    config = data_config(source="array_record", paths=(str(tmp_path / "*.array_record"),), seq_len=8)
    config.data.batch_size, config.data.heldout_fraction = 2, 0.25
    batch = load_data(config).train[0]
    assert batch["inputs"].shape == (2, 8) and batch["inputs"].max() <= EOS


def test_tfds_dataset_trains_through_data_source(tmp_path):
    """A dataset built here (nothing downloaded) and read through tfds.data_source, tokenized with a BPE tokenizer
    trained here, trains for two steps."""
    build_tfds_dataset(tmp_path / "tfds")
    tokenizer_path = train_bpe(tmp_path / "bpe", with_config=True)
    config = data_config(
        source="tfds",
        tfds_name=TFDS_NAME,
        tfds_data_dir=str(tmp_path / "tfds"),
        text_field="body",
        tokenizer=str(tokenizer_path.parent),
    )
    config.train.update(num_steps=2, eval_every=2, eval_batches=1, checkpoint_every=2)
    config.optim.warmup_steps = 1
    trainer = Trainer(config, tmp_path / "run")
    assert trainer.data.fingerprint["source"] == "tfds"
    last = trainer.train()
    assert np.isfinite(last["loss"]) and np.isfinite(last["eval_loss"])
    with pytest.raises(ValueError, match="has no feature 'text'"):
        load_data(data_config(source="tfds", tfds_name=TFDS_NAME, tfds_data_dir=str(tmp_path / "tfds")))
