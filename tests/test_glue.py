"""The nine GLUE tasks: readers over files in each task's published layout (written here),
the real files in ../shared/glue when present, submission files, datasets' cache, metrics."""
import sys
import types

import numpy as np
import pytest

from peftcore.train import glue, metrics
from peftcore.train.glue import GLUE_TASKS, get_task, load_glue, read_glue_split, write_submission

# ------------------------------------------------- files in the published layouts

MNLI_TRAIN_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                     "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t"
                     "sentence2\tlabel1\tgold_label")
MNLI_DEV_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                   "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t"
                   "sentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label")
MNLI_TEST_HEADER = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\t"
                    "sentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\t"
                    "sentence2")
STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"


def _mnli_row(i, a, b, labels):
    parses = "\t".join(["( x )", "( y )", "(ROOT (S x))", "(ROOT (S y))"])
    return "\t".join([str(i), "31193", f"{i}n", "government", parses, a, b, *labels])


FILES = {
    "CoLA": {
        "train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we "
                     "propose.\ngj04\t0\t*\tThey drank the pub.\ngj04\t1\t\tThe sailors rode "
                     "the breeze clear of the rocks.\n",
        "dev.tsv": "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                   "cj99\t0\t*\tThe more we study verbs, the crazier they get get.\n",
        "test.tsv": "index\tsentence\n0\tBill whistled past the house.\n1\tThe car honked its "
                    "way down the road.\n",
    },
    "SST-2": {
        "train.tsv": "sentence\tlabel\nhide new secretions from the parental units \t0\n"
                     "contains no wit , only labored gags \t0\nthat loves its characters \t1\n",
        "dev.tsv": "sentence\tlabel\nit 's a charming and often affecting journey . \t1\n",
        "test.tsv": "index\tsentence\n0\tuneasy mishmash of styles and genres .\n",
    },
    "MRPC": {
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                     "1\t702876\t702977\tAmrozi accused his brother .\tReferring to him , "
                     "Amrozi accused his brother .\n0\t2108705\t2108831\tYucaipa owned "
                     "Dominick 's .\tYucaipa bought Dominick 's in 1995 .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1355540\t1355592\t"
                   "He said the pie business doesn 't fit .\t\" The pie business does not "
                   "fit our strategy .\n",
        "test.tsv": "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1089874\t1089925\tPCCW 's "
                    "chief will report to Mr So .\tCurrent Chief will report directly to So .\n",
    },
    "STS-B": {
        "train.tsv": STSB_HEADER + "\tscore\n"
                     "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking "
                     "off.\tAn air plane is taking off.\t5.000\n"
                     "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a "
                     "large flute.\tA man is playing a flute.\t3.800\n"
                     "2\tmain-forum\tdeft-forum\t2014\t0050\tnone\tnone\tWhat ?\tWhy ?\t0.000\n",
        "dev.tsv": STSB_HEADER + "\tscore\n0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone"
                   "\tA man with a hard hat is dancing.\tA man wearing a hard hat is dancing."
                   "\t5.000\n",
        "test.tsv": STSB_HEADER + "\n0\tmain-captions\tMSRvid\t2012test\t0024\tnone\tnone\tA "
                    "girl is styling her hair.\tA girl is brushing her hair.\n",
    },
    "QQP": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n133273\t213221\t"
                     "213222\tHow is the life of a math student?\tWhich level of preparation is"
                     " enough?\t0\n402555\t536040\t536041\tHow do I control my horny "
                     "emotions?\tHow do you control your horniness?\t1\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n201359\t303345\t303346"
                   "\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?"
                   "\t0\n",
        "test.tsv": "id\tquestion1\tquestion2\n0\tWould the idea scare you?\tDo you think so?\n"
                    "1\tWhat are the top ten reasons?\tWhat are some reasons?\n",
    },
    "MNLI": {
        "train.tsv": MNLI_TRAIN_HEADER + "\n" + "\n".join([
            _mnli_row(0, "Conceptually cream skimming has two basic dimensions .",
                      "Product and geography are what make cream skimming work . ",
                      ["neutral", "neutral"]),
            _mnli_row(1, "you know during the season", "You lose the things .",
                      ["entailment", "entailment"]),
            _mnli_row(2, "One of our number will carry out your instructions .",
                      "A member of my team will execute your orders .",
                      ["contradiction", "contradiction"])]) + "\n",
        "dev_matched.tsv": MNLI_DEV_HEADER + "\n" + _mnli_row(
            0, "The new rights are nice enough", "Everyone really likes the newest benefits ",
            ["neutral", "entailment", "neutral", "neutral", "neutral", "neutral"]) + "\n",
        "dev_mismatched.tsv": MNLI_DEV_HEADER + "\n" + _mnli_row(
            0, "Your contribution helped make it possible", "Your contributions were of no "
            "help", ["contradiction"] * 6) + "\n",
        "test_matched.tsv": MNLI_TEST_HEADER + "\n" + _mnli_row(0, "Hierbas .", "Hierbas is "
                                                                "a name .", []) + "\n",
        "test_mismatched.tsv": MNLI_TEST_HEADER + "\n" + _mnli_row(0, "What have you decided?",
                                                                   "Have you decided?", []) +
                               "\n" + _mnli_row(1, "x", "y", []) + "\n",
    },
    "QNLI": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n0\tWhen did the third Digimon series "
                     "begin?\tUnlike the two seasons before it, it is darker.\tnot_entailment\n"
                     "1\tWhich missile batteries were often sited?\tThe missiles were sited on "
                     "hills.\tentailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n0\tWhat came into force?\tThe new "
                   "constitution came into force.\tentailment\n",
        "test.tsv": "index\tquestion\tsentence\n0\tWhat organization?\tThe Muslim "
                    "Brotherhood.\n",
    },
    "RTE": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tNo Weapons of Mass Destruction "
                     "Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
                     "not_entailment\n1\tA place of sorrow.\tPope Benedict XVI is the new "
                     "leader.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tDana Reeve has died.\tChristopher "
                   "Reeve had an accident.\tnot_entailment\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMangla was summoned.\tShukla is related "
                    "to Mangla.\n",
    },
    "WNLI": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tI stuck a pin through a carrot. "
                     "It had a hole.\tThe carrot had a hole.\t1\n1\tJohn couldn't see the "
                     "stage with Billy in front of him because he is so short.\tJohn is so "
                     "short.\t1\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n0\tThe drain is clogged with hair. It "
                   "has to be cleaned.\tThe hair has to be cleaned.\t0\n",
        "test.tsv": "index\tsentence1\tsentence2\n0\tMaude and Dora had seen the trains.\tHorses"
                    " had seen the trains.\n",
    },
}


@pytest.fixture
def glue_root(tmp_path):
    for task, files in FILES.items():
        (tmp_path / task).mkdir()
        for name, text in files.items():
            (tmp_path / task / name).write_text(text, encoding="utf-8")
    (tmp_path / "diagnostic").mkdir()
    (tmp_path / "diagnostic" / "diagnostic.tsv").write_text(
        "index\tsentence1\tsentence2\n0\tThe cat sat on the mat.\tThe cat did not sit on the "
        "mat.\n1\tThe cat sat.\tA cat sat.\n")
    return tmp_path


EXPECTED = {  # split -> (first text_a, first text_b, labels)
    "CoLA": {"train": ("Our friends won't buy this analysis, let alone the next one we propose.",
                       None, [1, 0, 1]),
             "validation": ("The sailors rode the breeze clear of the rocks.", None, [1, 0])},
    "SST-2": {"train": ("hide new secretions from the parental units ", None, [0, 0, 1]),
              "validation": ("it 's a charming and often affecting journey . ", None, [1])},
    "MRPC": {"train": ("Amrozi accused his brother .", "Referring to him , Amrozi accused his "
                       "brother .", [1, 0]),
             "validation": ("He said the pie business doesn 't fit .",
                            "\" The pie business does not fit our strategy .", [1])},
    "STS-B": {"train": ("A plane is taking off.", "An air plane is taking off.", [5.0, 3.8, 0.0]),
              "validation": ("A man with a hard hat is dancing.",
                             "A man wearing a hard hat is dancing.", [5.0])},
    "QQP": {"train": ("How is the life of a math student?", "Which level of preparation is "
                      "enough?", [0, 1]),
            "validation": ("Why are African-Americans so beautiful?",
                           "Why are hispanics so beautiful?", [0])},
    "MNLI": {"train": ("Conceptually cream skimming has two basic dimensions .",
                       "Product and geography are what make cream skimming work . ", [1, 0, 2]),
             "validation_matched": ("The new rights are nice enough",
                                    "Everyone really likes the newest benefits ", [1]),
             "validation_mismatched": ("Your contribution helped make it possible",
                                       "Your contributions were of no help", [2])},
    "QNLI": {"train": ("When did the third Digimon series begin?",
                       "Unlike the two seasons before it, it is darker.", [1, 0]),
             "validation": ("What came into force?", "The new constitution came into force.",
                            [0])},
    "RTE": {"train": ("No Weapons of Mass Destruction Found in Iraq Yet.",
                      "Weapons of Mass Destruction Found in Iraq.", [1, 0]),
            "validation": ("Dana Reeve has died.", "Christopher Reeve had an accident.", [1])},
    "WNLI": {"train": ("I stuck a pin through a carrot. It had a hole.", "The carrot had a hole.",
                       [1, 1]),
             "validation": ("The drain is clogged with hair. It has to be cleaned.",
                            "The hair has to be cleaned.", [0])},
}


@pytest.mark.parametrize("task", list(GLUE_TASKS))
def test_each_task_reads_its_published_layout(glue_root, task):
    spec = get_task(task)
    splits = load_glue(glue_root, task)
    assert set(splits) == set(EXPECTED[task])
    for split, (a0, b0, labels) in EXPECTED[task].items():
        a, b, y = splits[split]
        assert a[0] == a0 and (b is None if b0 is None else b[0] == b0)
        assert len(a) == len(y) == len(labels)
        if spec.is_regression:
            assert y.dtype == np.float32 and np.allclose(y, labels)
        else:
            assert y.dtype == np.int64 and y.tolist() == labels
    for split in spec.test_splits:
        a, b, index = read_glue_split(glue_root, task, split)
        assert index.dtype == np.int64 and index.tolist() == list(range(len(a)))
        assert (b is None) == (not spec.is_pair)


def test_task_facts():
    assert [t.num_labels for t in GLUE_TASKS.values()] == [2, 2, 2, 1, 2, 3, 2, 2, 2]
    assert get_task("stsb").problem_type == "regression"
    assert get_task("STS_B") is get_task("sts-b") is GLUE_TASKS["STS-B"]
    assert get_task("mnli").validation_splits == ("validation_matched", "validation_mismatched")
    assert get_task("qqp").index_column == "id"
    with pytest.raises(ValueError, match="unknown GLUE task 'SST-5'"):
        get_task("SST-5")


def test_the_diagnostic_set_reads_as_a_test_split(glue_root):
    a, b, index = read_glue_split(glue_root, "AX", "test")
    assert index.tolist() == [0, 1] and b[1] == "A cat sat."


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize("task, name, text, message", [
    ("RTE", "dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\n",
     r"RTE/dev\.tsv:3: expected 4 tab-separated fields, got 3"),
    ("CoLA", "train.tsv", "gj04\t1\t\tFine.\ngj04\t1\tToo few.\n",
     r"CoLA/train\.tsv:2: expected 4 tab-separated fields, got 3"),
    ("CoLA", "train.tsv", "gj04\t1\t\tFine.\ngj04\t2\t\tA label of 2.\n",
     r"CoLA/train\.tsv:2: unknown label '2' for CoLA"),
    ("MNLI", "train.tsv", MNLI_TRAIN_HEADER + "\n" + _mnli_row(0, "a", "b", ["-", "-"]) + "\n",
     r"MNLI/train\.tsv:2: unknown label '-' for MNLI"),
    ("STS-B", "train.tsv", STSB_HEADER + "\tscore\n0\tg\tf\ty\t1\tn\tn\ta\tb\t5.2\n",
     r"STS-B/train\.tsv:2: STS-B score '5\.2' is not a number in \[0, 5\]"),
    ("STS-B", "train.tsv", STSB_HEADER + "\tscore\n0\tg\tf\ty\t1\tn\tn\ta\tb\tnan\n",
     r"STS-B/train\.tsv:2: STS-B score 'nan' is not a number"),
    ("STS-B", "train.tsv", STSB_HEADER + "\tscore\n0\tg\tf\ty\t1\tn\tn\ta\tb\t-0.5\n",
     r"STS-B/train\.tsv:2: STS-B score '-0\.5'"),
    ("QQP", "train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n",
     r"QQP/train\.tsv: no examples \(an empty train split\)"),
    ("SST-2", "train.tsv", "",
     r"SST-2/train\.tsv: empty file \(no header row\)"),
    ("SST-2", "test.tsv", "index\tsentence\nzero\ta sentence\n",
     r"SST-2/test\.tsv:2: index 'zero' is not an int"),
    ("QNLI", "test.tsv", "question\tsentence\n", r"missing column\(s\) \['index'\]"),
])
def test_bad_files_name_the_file_and_line(glue_root, task, name, text, message):
    (glue_root / task / name).write_text(text)
    split = {"train.tsv": "train", "dev.tsv": "validation", "test.tsv": "test"}[name]
    with pytest.raises(ValueError, match=message):
        read_glue_split(glue_root, task, split)


def test_a_missing_split_names_the_file(glue_root):
    (glue_root / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"GLUE file not found: .*MNLI/dev_mismatched\.tsv"):
        load_glue(glue_root, "MNLI")
    with pytest.raises(ValueError, match="MNLI has no split 'validation'"):
        read_glue_split(glue_root, "MNLI", "validation")


# ------------------------------------------------------------------- submission


def test_submission_files(tmp_path):
    path = write_submission(tmp_path, "RTE", [0, 1, 2], np.array([[0.1, 2.0], [3.0, 0.0],
                                                                  [0.0, 1.0]]))
    assert path.name == "RTE.tsv"
    assert path.read_text() == "index\tprediction\n0\tnot_entailment\n1\tentailment\n" \
                               "2\tnot_entailment\n"
    assert write_submission(tmp_path, "CoLA", [0, 1], [1, 0]).read_text() == \
        "index\tprediction\n0\t1\n1\t0\n"
    text = write_submission(tmp_path, "STS-B", [0, 1, 2], [[5.7], [-0.2], [2.12345]]).read_text()
    assert text == "index\tprediction\n0\t5.000\n1\t0.000\n2\t2.123\n"
    assert write_submission(tmp_path, "MNLI", [0, 1], [2, 1], split="test_mismatched").name == \
        "MNLI-mm.tsv"
    assert (tmp_path / "MNLI-mm.tsv").read_text() == \
        "index\tprediction\n0\tcontradiction\n1\tneutral\n"
    assert write_submission(tmp_path, "AX", [0], [0]).read_text() == \
        "index\tprediction\n0\tentailment\n"
    with pytest.raises(ValueError, match="MNLI has no test split 'test'"):
        write_submission(tmp_path, "MNLI", [0], [0])
    with pytest.raises(ValueError, match="2 predictions for 1 test rows"):
        write_submission(tmp_path, "SST-2", [0], [0, 1])
    with pytest.raises(ValueError, match=r"class ids in \[0, 2\)"):
        write_submission(tmp_path, "SST-2", [0], [2])


# ------------------------------------------------------------------- datasets' cache


def test_datasets_cache_is_read_offline(monkeypatch):
    """A stand-in for `datasets` (not a dependency): the right name, offline, columns mapped."""
    calls = []

    class Split(dict):
        pass

    def load_dataset(path, name, cache_dir=None):
        calls.append((path, name, fake.config.HF_DATASETS_OFFLINE))
        return {"train": Split(premise=["p1", "p2"], hypothesis=["h1", "h2"], label=[2, 0],
                               idx=[0, 1]),
                "validation_matched": Split(premise=["p"], hypothesis=["h"], label=[1], idx=[0]),
                "validation_mismatched": Split(premise=["q"], hypothesis=["k"], label=[0],
                                               idx=[0]),
                "test_matched": Split(premise=["t"], hypothesis=["u"], label=[-1], idx=[7])}

    fake = types.SimpleNamespace(load_dataset=load_dataset,
                                 config=types.SimpleNamespace(HF_DATASETS_OFFLINE=False))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    splits = glue.load_glue_from_datasets("MNLI")
    assert calls == [("glue", "mnli", True)] and fake.config.HF_DATASETS_OFFLINE is False
    assert splits["train"][0] == ["p1", "p2"] and splits["train"][2].tolist() == [2, 0]
    assert splits["validation_mismatched"][1] == ["k"]
    test = glue.load_glue_from_datasets("MNLI", splits=["test_matched"])["test_matched"]
    assert test[2].tolist() == [7]


# ------------------------------------------------------------------- real files


REAL_TEST_ROWS = {"SST-2": 1821, "MRPC": 1725, "RTE": 3000, "WNLI": 146, "QNLI": 5463}


@pytest.mark.parametrize("task", sorted(REAL_TEST_ROWS))
def test_real_glue_test_splits_and_submission(glue_dir, task, tmp_path):
    a, b, index = read_glue_split(glue_dir, task, "test")
    assert len(a) == len(index) == REAL_TEST_ROWS[task]
    assert index.tolist() == list(range(len(a)))
    predictions = np.arange(len(a)) % 2
    path = write_submission(tmp_path, task, index, predictions)
    lines = path.read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == len(a) + 1
    if task in ("RTE", "QNLI"):
        assert lines[1:3] == ["0\tentailment", "1\tnot_entailment"]


def test_real_wnli_and_qnli_dev(glue_dir):
    a, b, y = read_glue_split(glue_dir, "WNLI", "validation")
    assert len(y) == 71 and set(y.tolist()) == {0, 1}
    a, b, y = read_glue_split(glue_dir, "QNLI", "validation")
    assert len(y) == 5463 and a[0] == "What came into force after the new constitution was herald?"
    assert y[0] == 0


# ------------------------------------------------------------------- metrics


def test_metrics_hand_worked():
    y = [1, 1, 1, 0, 0, 0, 1, 0]
    p = [1, 1, 0, 0, 0, 1, 1, 0]
    # TP=3 FN=1 FP=1 TN=3
    assert metrics.accuracy(p, y) == 0.75
    assert metrics.f1_score(p, y) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert metrics.matthews_corrcoef(p, y) == pytest.approx((9 - 1) / np.sqrt(4 * 4 * 4 * 4))
    assert metrics.matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0   # constant prediction
    assert metrics.f1_score([0, 0], [0, 0]) == 0.0
    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4
    rx, ry = np.array([1, 2.5, 2.5, 4]), np.array([1, 2, 3, 4])
    assert metrics.spearman([1, 5, 5, 9], [0.1, 0.2, 0.3, 0.4]) == \
        pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert metrics.spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        metrics.accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.accuracy([], [])


def test_task_metrics_and_glue_score():
    logits = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    assert metrics.compute_metrics("MRPC", logits, [1, 0, 0]) == \
        {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(2 / 3)}
    assert set(metrics.compute_metrics("CoLA", logits, [1, 0, 0])) == {"matthews_correlation"}
    assert set(metrics.compute_metrics("STS-B", [[1.0], [2.0], [2.5]], [1, 2, 3])) == \
        {"pearson", "spearmanr"}
    results = {t: {m: 0.5 for m in get_task(t).metrics} for t in GLUE_TASKS}
    results["MNLI"] = ({"accuracy": 0.8}, {"accuracy": 0.6})
    results["STS-B"] = {"pearson": 0.9, "spearmanr": 0.7}
    # seven tasks at 50, MNLI at 70, STS-B at 80
    assert metrics.glue_score(results) == pytest.approx((7 * 50 + 70 + 80) / 9)
    assert metrics.task_score("MNLI", {"accuracy": 0.8, "accuracy_mm": 0.6}) == pytest.approx(0.7)
    del results["WNLI"]
    with pytest.raises(ValueError, match=r"missing \['WNLI'\]"):
        metrics.glue_score(results)


def test_metrics_match_scikit_learn_and_scipy():
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (5, 50, 997):
        y, p = rng.integers(0, 2, n), rng.integers(0, 2, n)
        assert metrics.matthews_corrcoef(p, y) == pytest.approx(sk.matthews_corrcoef(y, p), abs=1e-12)
        assert metrics.f1_score(p, y) == pytest.approx(sk.f1_score(y, p), abs=1e-12)
        assert metrics.accuracy(p, y) == pytest.approx(sk.accuracy_score(y, p))
        y3, p3 = rng.integers(0, 3, n), rng.integers(0, 3, n)
        assert metrics.matthews_corrcoef(p3, y3) == pytest.approx(sk.matthews_corrcoef(y3, p3),
                                                                  abs=1e-12)
        a = np.round(rng.uniform(0, 5, n), 1)  # rounding makes ties
        b = a + rng.normal(0, 1, n)
        assert metrics.pearson(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
        assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b)[0], abs=1e-12)
