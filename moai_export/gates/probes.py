"""The built-in probe set: what every parity gate embeds with the reference and the artifact.

Korean finance, English and mixed texts; queries (which get the prompt) and documents;
lengths from a single token to past the contract's max_tokens (truncation must agree too).
Batched in mixed lengths so padding is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Probe:
    id: str
    kind: str  # query | document
    text: str


_QUERIES = [
    ("ko-annual-fee", "BC카드 연회비는 어떻게 되나요?"),
    ("ko-overseas-fee", "해외 결제 시 수수료가 얼마인가요?"),
    ("ko-lost-card", "카드 분실 신고 방법"),
    ("ko-short", "카드"),
    ("en-annual-fee", "What is the annual fee of the BC card?"),
    ("en-limit", "How do I raise my credit limit?"),
    ("mixed-cashback", "BC카드 포인트를 cash back으로 전환할 수 있나요?"),
    ("one-char", "?"),
]

_DOCUMENTS = [
    ("ko-fee-policy", "BC카드의 연회비는 카드 등급에 따라 다르며, 일반 카드는 1만 원, 프리미엄 카드는 10만 원입니다. "
     "전월 실적이 30만 원 이상이면 다음 해 연회비가 면제됩니다."),
    ("ko-overseas", "해외 가맹점에서 결제하면 국제 브랜드 수수료 1%와 해외 서비스 수수료 0.2%가 부과됩니다."),
    ("ko-installment", "무이자 할부는 2개월부터 6개월까지 가능하며, 가맹점 행사에 따라 기간이 달라질 수 있습니다."),
    ("en-limit-policy", "Credit limits are reviewed every six months. Customers may request an increase through "
     "the mobile app after providing proof of income."),
    ("mixed-points", "MoAI 포인트는 1 point = 1원으로 cash back 전환이 가능하며, 최소 10,000 point부터 신청할 수 있습니다."),
    ("table", "| 구분 | 연회비 | 적립률 |\n|---|---|---|\n| 일반 | 10,000원 | 0.5% |\n| 프리미엄 | 100,000원 | 1.5% |"),
    ("whitespace", "  카드   이용   안내  \n\n\t 고객센터 1588-4000 \n"),
    ("symbols", "금리 4.5%↑, 환율 ₩1,380/$ 🙂 — «중요» 공지"),
    ("one-token", "a"),
]

_LONG_PARAGRAPH = (
    "신용카드 이용대금은 결제일에 지정 계좌에서 자동 출금되며, 잔액이 부족하면 연체 이자가 발생합니다. "
    "Late payments are reported to credit bureaus after five business days. "
)


def long_text(max_tokens: int) -> str:
    """A document well past max_tokens for any tokenizer we ship to (>= 6 chars per token)."""
    repeats = 6 * max_tokens // len(_LONG_PARAGRAPH) + 1
    return _LONG_PARAGRAPH * repeats


def probe_set(max_tokens: int) -> list[Probe]:
    probes = [Probe(f"q:{pid}", "query", text) for pid, text in _QUERIES]
    probes += [Probe(f"d:{pid}", "document", text) for pid, text in _DOCUMENTS]
    # The same texts as the other kind: query and document vectors of one text must both match.
    probes += [Probe(f"d:{pid}", "document", text) for pid, text in _QUERIES[:3]]
    probes += [Probe(f"q:{pid}", "query", text) for pid, text in _DOCUMENTS[:2]]
    probes.append(Probe("d:over-max-tokens", "document", long_text(max_tokens)))
    probes.append(Probe("q:over-max-tokens", "query", long_text(max_tokens)))
    return probes


def retrieval_probe() -> tuple[list[str], list[str]]:
    """(queries, documents) for a small retrieval check: the example's Korean finance
    triplets, every positive and hard negative in one corpus."""
    from ..evaluation.finance_triplets import TRIPLETS

    queries = [q for q, _, _ in TRIPLETS]
    documents = [p for _, p, _ in TRIPLETS] + [n for _, _, n in TRIPLETS]
    return queries, documents
