import pandas as pd
import pytest

from spo.prompts import PromptError, load_prompt_set, num_shards, read_prompt_tsv, shard_slice


def _tsv(tmp_path, text):
    path = tmp_path / "p.tsv"
    path.write_text(text)
    return path


def test_reads_prompts(tmp_path):
    frame = read_prompt_tsv(_tsv(tmp_path, "prompt_id\tprompt\na\ta cat\nb\ta \"quoted\", dog\n"))
    assert frame.to_dict("list") == {"prompt_id": ["a", "b"], "prompt": ["a cat", 'a "quoted", dog']}


@pytest.mark.parametrize("text, match", [
    ("", "is empty"),
    ("prompt_id\tprompt\n", "is empty"),
    ("id\ttext\na\tb\n", "header"),
    ("prompt_id\tprompt\na\tx\na\ty\n", "duplicate prompt ids \\['a'\\]"),
    ("prompt_id\tprompt\na\t  \n", "empty prompts for ids \\['a'\\]"),
    ("prompt_id\tprompt\na\tx\ty\n", "line 2 has 3 fields"),
])
def test_bad_prompt_files_name_the_problem(tmp_path, text, match):
    with pytest.raises(PromptError, match=match):
        read_prompt_tsv(_tsv(tmp_path, text))


def test_missing_file_names_the_key(tmp_path):
    with pytest.raises(PromptError, match="prompt_sets.<name>.source.path"):
        read_prompt_tsv(tmp_path / "nope.tsv")


def test_declared_count_is_checked(tmp_path):
    path = _tsv(tmp_path, "prompt_id\tprompt\na\tx\n")
    with pytest.raises(PromptError, match="declares count 2"):
        load_prompt_set({"source": {"path": str(path)}, "count": 2})


def test_shards_cover_the_set_exactly():
    frame = pd.DataFrame({"prompt_id": [str(i) for i in range(10)], "prompt": ["p"] * 10})
    assert num_shards(10, 4) == 3
    parts = [shard_slice(frame, i, 4) for i in range(3)]
    assert [len(p) for p in parts] == [4, 4, 2]
    assert pd.concat(parts)["prompt_id"].tolist() == frame["prompt_id"].tolist()
    with pytest.raises(PromptError, match="shard 3 is out of range"):
        shard_slice(frame, 3, 4)


def test_paper_figure_prompts_are_verbatim(repo_root):
    fig2 = read_prompt_tsv(repo_root / "data/prompts/figure2.tsv")
    fig11 = read_prompt_tsv(repo_root / "data/prompts/figure11.tsv")
    assert len(fig2) == 8 and len(fig11) == 20
    assert fig2.prompt[0] == "Saturn rises on the horizon."
    assert fig11.set_index("prompt_id").prompt["fig11_r3c3"] == "cat, cute, child, hat"


@pytest.mark.parametrize("train,evaluation", [("tiny_train", "tiny_eval"), ("world_train", "world_eval")])
def test_train_and_eval_prompts_are_disjoint(repo_root, train, evaluation):
    train = read_prompt_tsv(repo_root / f"data/prompts/{train}.tsv")
    evaluation = read_prompt_tsv(repo_root / f"data/prompts/{evaluation}.tsv")
    assert not set(train.prompt) & set(evaluation.prompt)


SHARED_4K = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data" / "4k_training_prompts.json"
SHA_4K = "804018fcb30bc9bed28a2a0518855bffd386675a3c5138f96b925071cbae6fc4"


@pytest.mark.skipif(not SHARED_4K.is_file(), reason="../shared/data is not beside this checkout")
def test_spo_4k_prompts_load_and_verify(tmp_path):
    from spo.prompts import fetch_prompt_file, read_prompt_json

    frame = read_prompt_json(SHARED_4K, SHA_4K)
    assert len(frame) == 4000 and frame.prompt_id.is_unique
    # The DAG's fetch: a file:// URL stands in for the pinned GitHub URL (no network here).
    out = fetch_prompt_file(SHARED_4K.as_uri(), SHA_4K, tmp_path / "p.json")
    assert out.read_bytes() == SHARED_4K.read_bytes()
    with pytest.raises(PromptError, match="checksum mismatch"):
        fetch_prompt_file(SHARED_4K.as_uri(), "0" * 64, tmp_path / "q.json")
    assert not (tmp_path / "q.json").exists()


def test_prompt_json_checks(tmp_path):
    from spo.prompts import read_prompt_json

    bad = tmp_path / "bad.json"
    bad.write_text('[{"text": "x"}]')
    with pytest.raises(PromptError, match="caption"):
        read_prompt_json(bad)
    good = tmp_path / "good.json"
    good.write_text('[{"caption": "a", "trainset_idx": 7}, {"caption": "b", "trainset_idx": 7}]')
    with pytest.raises(PromptError, match="duplicate prompt ids"):
        read_prompt_json(good)
    with pytest.raises(PromptError, match="checksum mismatch"):
        read_prompt_json(good, "0" * 64)
