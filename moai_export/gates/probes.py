"""The built-in probe set: what every parity gate embeds with the reference and the artifact.

Korean finance, English and mixed texts; queries (which get the prompt) and documents;
lengths from a single token through documents of about 128, 256 and 512 tokens and one just
below the contract's max_tokens, to past it (truncation must agree too). The long documents
are sized with the contract's tokenizer, so they sit in the same length buckets whatever the
tokenizer. Batched in mixed lengths so padding is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..model_files.contract_tokenizer import ContractTokenizer


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

# The fixed source of the long documents: Korean finance prose with numbers, rates and dates, a
# fee table, English and mixed-script sentences. Each long document starts at another section, so
# no two share their opening (a model that only reads a document's start cannot pass on them).
_LONG_SECTIONS = (
    "제1조(목적) 이 약관은 BC카드 회원이 신용카드를 이용할 때 회원과 카드사 사이의 권리와 의무를 정합니다. "
    "회원은 카드를 본인만 사용해야 하며, 타인에게 양도하거나 대여할 수 없습니다.",
    "| 구분 | 연회비 | 해외 겸용 | 적립률 | 전월 실적 |\n|---|---|---|---|---|\n"
    "| 일반 | 10,000원 | 12,000원 | 0.5% | 30만 원 |\n| 골드 | 30,000원 | 35,000원 | 1.0% | 50만 원 |\n"
    "| 프리미엄 | 100,000원 | 120,000원 | 1.5% | 100만 원 |\n| 법인 | 5,000원 | 7,000원 | 0.2% | 없음 |",
    "할부 수수료율(연 %): 2~3개월 9.5%, 4~5개월 12.5%, 6~9개월 15.5%, 10~12개월 17.9%, 13~24개월 19.9%. "
    "예) 1,200,000원을 12개월 할부로 결제하면 월 100,000원과 수수료가 청구됩니다 (2024년 1월 1일 기준).",
    "Foreign transactions are converted at the network rate on the processing date (e.g. USD 1 = KRW 1,380.50), "
    "plus a 1.0% brand fee and a 0.2% overseas service fee; refunds use the rate on the refund date.",
    "리볼빙(일부결제금액이월약정) 이용 시 결제비율은 10%~100% 사이에서 선택할 수 있으며, 이월 잔액에는 "
    "연 5.4%~19.9%의 수수료가 부과됩니다. Revolving balances are not eligible for interest-free installments.",
    "포인트 적립 안내: 온라인 쇼핑 2배(最大 월 20,000P), 주유 리터당 60원 할인, 대중교통 10% 청구할인. "
    "적립된 MoAI 포인트는 1P = 1원으로 cash back 전환이 가능하고 유효기간은 적립일로부터 5년입니다.",
    "연체 시에는 약정 금리에 연 3%p가 가산되며(최고 연 20%), 5영업일 이상 연체되면 신용평가사(NICE, KCB)에 "
    "연체 정보가 등록될 수 있습니다. 고객센터 ☎ 1588-4000 (평일 09:00~18:00).",
    "The cardholder may cancel within 14 days of issuance for a full refund of the annual fee; after that, "
    "the unused months are refunded pro rata (연회비 반환: 잔여 개월 수 × 월할 연회비).",
)
# Token lengths of the long documents, each just inside its length bucket (gates.parity.LENGTH_BOUNDS):
# BPE merges at a cut can move a text by a token or two.
_LONG_TARGETS = (124, 252, 508)
_BELOW_MAX = 4  # the near-max document is this many tokens short of max_tokens


def long_text(max_tokens: int) -> str:
    """A document well past max_tokens for any tokenizer we ship to (>= 6 chars per token)."""
    repeats = 6 * max_tokens // len(_LONG_PARAGRAPH) + 1
    return _LONG_PARAGRAPH * repeats


def short_probes() -> list[Probe]:
    """The fixed short probes: every query and document under 64 tokens, each text as both kinds
    for a few."""
    probes = [Probe(f"q:{pid}", "query", text) for pid, text in _QUERIES]
    probes += [Probe(f"d:{pid}", "document", text) for pid, text in _DOCUMENTS]
    # The same texts as the other kind: query and document vectors of one text must both match.
    probes += [Probe(f"d:{pid}", "document", text) for pid, text in _QUERIES[:3]]
    probes += [Probe(f"q:{pid}", "query", text) for pid, text in _DOCUMENTS[:2]]
    return probes


def long_documents(tokenizer: ContractTokenizer) -> list[Probe]:
    """Documents of about 128, 256 and 512 tokens and one just below max_tokens, measured with the
    contract's own tokenizer (prompt and end token included), cut from the fixed sections: the
    lengths real documents have, where quantization and attention errors grow."""
    max_tokens = tokenizer.contract.max_tokens
    near_max = max_tokens - _BELOW_MAX
    targets = [t for t in _LONG_TARGETS if t < near_max] + ([near_max] if near_max > 32 else [])
    probes = []
    for n, target in enumerate(targets):
        sections = _LONG_SECTIONS[n % len(_LONG_SECTIONS):] + _LONG_SECTIONS[:n % len(_LONG_SECTIONS)]
        body = "\n\n".join(sections)
        stream = tokenizer.content_ids(body)
        while len(stream) < target + 8:  # long enough to cut any target from
            stream += tokenizer.content_ids("\n\n" + body)
        text, _ = tokenizer.text_of_length(stream, target, "document")
        probes.append(Probe(f"d:finance-{'near-max' if target == near_max else target}-tokens", "document", text))
    return probes


def probe_set(tokenizer: ContractTokenizer) -> list[Probe]:
    """The built-in probe set for a contract: short queries and documents, long documents up to
    just below max_tokens, and one text of each kind past it (truncation must agree too, and the
    end token survive it)."""
    max_tokens = tokenizer.contract.max_tokens
    probes = short_probes() + long_documents(tokenizer)
    probes.append(Probe("d:over-max-tokens", "document", long_text(max_tokens)))
    probes.append(Probe("q:over-max-tokens", "query", long_text(max_tokens)))
    return probes


def sizing_tokenizer(embedder) -> ContractTokenizer:
    """The tokenizer the probes are measured with: the reference's own contract tokenizer; for a
    reference that tokenizes elsewhere, its directory's tokenizer.json (sentence-transformers) or,
    for a server, Qwen3's, each with the reference's contract."""
    tokenizer = getattr(embedder, "tokenizer", None)
    if isinstance(tokenizer, ContractTokenizer):
        return tokenizer
    directory = getattr(embedder, "artifact_dir", None)
    if directory is not None and (Path(directory) / "tokenizer.json").is_file():
        return ContractTokenizer.from_dir(Path(directory), embedder.contract, repair=True)
    from ..model_files.qwen3_tokenizer import build_qwen3_tokenizer

    return ContractTokenizer(build_qwen3_tokenizer(), embedder.contract, repair=True)


def retrieval_probe() -> tuple[list[str], list[str]]:
    """(queries, documents) for a small retrieval check: the example's Korean finance
    triplets, every positive and hard negative in one corpus."""
    from ..evaluation.finance_triplets import TRIPLETS

    queries = [q for q, _, _ in TRIPLETS]
    documents = [p for _, p, _ in TRIPLETS] + [n for _, _, n in TRIPLETS]
    return queries, documents
