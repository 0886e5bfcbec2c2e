"""Retrieval metrics: hand-computed cases, and equality with sentence-transformers'
InformationRetrievalEvaluator (on the same rankings, and end to end on real models)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moai_export.core.errors import MoaiError
from moai_export.evaluation.beir import load_beir, write_beir
from moai_export.evaluation.retrieval_metrics import (
    METRICS,
    accuracy_at_k,
    evaluate,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    rank,
    recall_at_k,
    similarity_scores,
)

ST_KS = dict(mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10], map_at_k=[10])


def st_evaluator(queries: dict, corpus: dict, relevant: dict):
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    return InformationRetrievalEvaluator(queries=queries, corpus=corpus, relevant_docs=relevant, write_csv=False,
                                         batch_size=16, **ST_KS)


def st_figures(scores: dict) -> dict:
    """sentence-transformers' nested result -> our metric names."""
    return {"ndcg@10": scores["ndcg@k"][10], "mrr@10": scores["mrr@k"][10], "recall@1": scores["recall@k"][1],
            "recall@10": scores["recall@k"][10], "accuracy@1": scores["accuracy@k"][1],
            "map@10": scores["map@k"][10]}


# -- hand-computed ---------------------------------------------------------------------------

RANKED = ["d1", "d2", "d3", "d4", "d5"]
RELEVANT = {"d2", "d4", "d9"}  # d9 is never retrieved


def test_hand_computed_single_query():
    # hits at ranks 2 and 4 of 3 relevant documents
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(RANKED, RELEVANT, 10) == pytest.approx(dcg / ideal)
    assert mrr_at_k(RANKED, RELEVANT, 10) == pytest.approx(0.5)
    assert mrr_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 1) == 0.0
    assert recall_at_k(RANKED, RELEVANT, 10) == pytest.approx(2 / 3)
    assert accuracy_at_k(RANKED, RELEVANT, 1) == 0.0
    assert accuracy_at_k(RANKED, RELEVANT, 2) == 1.0
    # precision at each hit: 1/2 and 2/4, over min(k, |relevant|) = 3
    assert map_at_k(RANKED, RELEVANT, 10) == pytest.approx((1 / 2 + 2 / 4) / 3)
    # k cuts: only the hit at rank 2 counts, over min(3, 3)
    assert map_at_k(RANKED, RELEVANT, 3) == pytest.approx((1 / 2) / 3)


def test_perfect_and_empty_rankings():
    assert ndcg_at_k(["a", "b"], {"a"}, 10) == 1.0
    assert map_at_k(["a", "b"], {"a", "b"}, 10) == 1.0
    assert ndcg_at_k(["x", "y"], {"a"}, 10) == 0.0
    assert mrr_at_k([], {"a"}, 10) == 0.0


def test_mean_and_per_domain():
    rankings = {"q1": ["a", "b"], "q2": ["b", "a"], "q3": ["c", "a"]}
    relevant = {"q1": {"a"}, "q2": {"a"}, "q3": {"c"}}
    out = evaluate(rankings, relevant, {"q1": "card", "q2": "card", "q3": "loan"})
    assert out["queries"] == 3
    assert out["mean"]["accuracy@1"] == pytest.approx(2 / 3)
    assert out["mean"]["mrr@10"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert out["per_domain"]["card"] == pytest.approx(
        {"queries": 2, **{m: (out["per_query"]["q1"][m] + out["per_query"]["q2"][m]) / 2 for m in METRICS}})
    assert out["per_domain"]["loan"]["ndcg@10"] == 1.0


def test_ranking_breaks_ties_by_corpus_id():
    scores = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]], dtype=np.float32)
    ids = ["e", "d", "c", "b", "a"]
    assert rank(scores, ids, 3) == [["d", "b", "c"]]  # 0.9 first, then the tied 0.5s by id
    assert rank(scores, ids, 10) == [["d", "b", "c", "e", "a"]]


def test_cosine_scores_normalize():
    q = np.array([[2.0, 0.0]], np.float32)
    d = np.array([[0.0, 3.0], [5.0, 0.0]], np.float32)
    assert similarity_scores(q, d).tolist() == [[0.0, 1.0]]
    assert similarity_scores(q, d, "dot").tolist() == [[0.0, 10.0]]
    with pytest.raises(MoaiError):
        similarity_scores(q, d, "euclidean")


# -- against sentence-transformers -----------------------------------------------------------


def test_same_rankings_give_the_evaluators_figures():
    """Random scores rounded to one decimal (many ties) through both metric implementations."""
    rng = np.random.default_rng(0)
    n_queries, n_docs = 40, 30
    scores = np.round(rng.random((n_queries, n_docs)), 1).astype(np.float32)
    corpus_ids = [f"doc{rng.integers(1000):03d}-{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    relevant = {q: set(rng.choice(corpus_ids, size=int(rng.integers(1, 4)), replace=False)) for q in query_ids}

    ours = evaluate(dict(zip(query_ids, rank(scores, corpus_ids))), relevant)["mean"]

    evaluator = st_evaluator({q: q for q in query_ids}, {c: c for c in corpus_ids}, relevant)
    hits = [[{"corpus_id": c, "score": float(s)} for c, s in zip(corpus_ids, row)] for row in scores]
    assert ours == pytest.approx(st_figures(evaluator.compute_metrics(hits)), abs=1e-12)


def beir_rows():
    corpus = [
        {"_id": "c1", "title": "card", "text": "BC카드 연회비는 1만 원이며 전월 실적 30만 원 이상이면 면제됩니다."},
        {"_id": "c2", "title": "card", "text": "해외 가맹점 결제 시 국제 브랜드 수수료 1%가 부과됩니다."},
        {"_id": "c3", "title": "card", "text": "카드를 분실하면 즉시 고객센터에 분실 신고를 하세요."},
        {"_id": "c4", "title": "loan", "text": "카드론은 별도 심사를 거쳐 장기 대출 형태로 제공됩니다."},
        {"_id": "c5", "title": "loan", "text": "현금서비스 이용 한도는 신용 한도의 40% 이내입니다."},
        {"_id": "c6", "title": "en", "text": "Credit limits are reviewed every six months."},
        {"_id": "c7", "title": "en", "text": "The annual fee of the premium card is 100,000 won."},
        {"_id": "c8", "title": "misc", "text": "포인트는 1포인트당 1원으로 계좌 입금 전환이 가능합니다."},
    ]
    queries = [
        {"_id": "q1", "text": "BC카드 연회비는 얼마인가요?", "domain": "card"},
        {"_id": "q2", "text": "해외 결제 수수료", "domain": "card"},
        {"_id": "q3", "text": "카드 분실 신고 방법", "domain": "card"},
        {"_id": "q4", "text": "카드론 대출 심사", "domain": "loan"},
        {"_id": "q5", "text": "How often are credit limits reviewed?", "domain": "en"},
        {"_id": "q6", "text": "no relevant document", "domain": "en"},
    ]
    qrels = [("q1", "c1", 1), ("q1", "c7", 1), ("q2", "c2", 1), ("q3", "c3", 1), ("q4", "c4", 1),
             ("q4", "c5", 0), ("q5", "c6", 1), ("q6", "c8", 0)]
    return corpus, queries, qrels


@pytest.fixture(scope="module")
def beir_dir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("beir") / "tiny" / "beir", *beir_rows())


def test_load_beir(beir_dir):
    ds = load_beir(beir_dir.parent)  # DIR/beir is found too
    assert ds.name == "tiny" and len(ds.corpus_ids) == 8
    ids, _, domains = ds.evaluated_queries()
    assert ids == ["q1", "q2", "q3", "q4", "q5"]  # q6 has only a 0-score qrel
    assert domains == ["card", "card", "card", "loan", "en"]
    assert ds.relevant()["q4"] == {"c4"}
    assert ds.documents(with_title=True)[0].startswith("card\n")


@pytest.mark.parametrize("problem, message", [
    ("missing-corpus", "missing corpus.jsonl"),
    ("bad-json", "corpus.jsonl:2: not valid JSON"),
    ("no-qrels", "no qrels.tsv"),
    ("bad-qrels", "qrels.tsv:2: expected query-id"),
])
def test_bad_beir_directories_fail_in_one_line(tmp_path, problem, message):
    d = write_beir(tmp_path / "ds", *beir_rows())
    if problem == "missing-corpus":
        (d / "corpus.jsonl").unlink()
    elif problem == "bad-json":
        (d / "corpus.jsonl").write_text('{"_id": "a", "text": "x"}\n{oops\n')
    elif problem == "no-qrels":
        (d / "qrels.tsv").unlink()
    else:
        (d / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1 c1 1\n")
    with pytest.raises(MoaiError, match=message) as info:
        load_beir(d)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("which", ["minilm", "example"])
def test_torch_target_equals_information_retrieval_evaluator(which, minilm, merged_dir, beir_dir):
    """The whole `retrieval` path (torch target: our tokenizer, pooling, prompts) against
    sentence-transformers loading the same directory and scoring with its own evaluator."""
    from sentence_transformers import SentenceTransformer

    from moai_export.benchmark.retrieval import run_retrieval
    from moai_export.benchmark.targets import load_targets

    model_dir = minilm if which == "minilm" else merged_dir
    ds = load_beir(beir_dir)
    targets = load_targets([f"torch:{model_dir}"])
    result: dict = {}
    run_retrieval(targets, ds, result, batch_size=4, progress=False)
    ours = result["targets"][0]["metrics"]

    evaluator = st_evaluator(dict(zip(ds.query_ids, ds.query_texts)), dict(zip(ds.corpus_ids, ds.corpus_texts)),
                             ds.relevant())
    st = evaluator(SentenceTransformer(str(model_dir), device="cpu"))
    name = evaluator.score_function_names[0]
    assert name == "cosine"
    expected = {m: st[f"{name}_{m}"] for m in METRICS}
    assert ours == pytest.approx(expected, abs=1e-12)
    assert result["targets"][0]["queries"] == 5
