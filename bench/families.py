"""Model families: what each floor needs to know about a transformers `model_type`, declared once per family.

The tokenizer (`bench.tokenizer`), graph fusion (`export.optimize`), structured pruning (`compress.prune_structured`),
students built from teacher layers (`compress.student`) and the recipe checks read this table instead
of keeping lists of their own. A new family is one `register_family` entry here plus a tiny-model test
(`tests/test_families.py` runs every registered family end to end).

Names are transformers' `config.model_type` spellings ("xlm-roberta"); `family()` also finds a family by the
spellings tokenizer classes and folder names use ("XLMRobertaTokenizerFast", "xlm_roberta").
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' config.model_type
    wordpiece: bool = False  # its tokenizer can be built from vocab.txt alone (transformers' BertConverter)
    type_ids: bool = True  # its tokenizer returns token_type_ids
    fusion: str | None = None  # onnxruntime's fusion rules that fit its attention blocks; None: not fused
    bert_layout: bool = False  # base_model.encoder.layer[i] holds attention.self.{query,key,value}, attention.output,
    # intermediate.dense and output.dense: what structured pruning and students made from teacher layers rely on


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if _key(family.model_type) in {_key(name) for name in FAMILIES}:
        raise ValueError(f"model family {family.model_type!r} is registered twice")
    FAMILIES[family.model_type] = family
    return family


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def family(name: str) -> Family | None:
    """The registered family of a model_type or tokenizer-class spelling, or None for a family edgeqa does not know."""
    key = _key(name).removesuffix("fast").removesuffix("tokenizer")
    return next((f for registered, f in FAMILIES.items() if _key(registered) == key), None)


def families_with(feature: str) -> tuple[str, ...]:
    """The registered families that have `feature` (a true Family field), in registration order."""
    return tuple(name for name, f in FAMILIES.items() if getattr(f, feature))


def has(model_type: str, feature: str) -> bool:
    found = family(model_type)
    return found is not None and bool(getattr(found, feature))


register_family(Family("bert", wordpiece=True, fusion="bert", bert_layout=True))
register_family(Family("distilbert", wordpiece=True, type_ids=False, fusion="bert"))
register_family(Family("electra", wordpiece=True, fusion="bert"))
register_family(Family("mobilebert", wordpiece=True, fusion="bert"))
register_family(Family("roberta", type_ids=False, fusion="bert"))
register_family(Family("xlm-roberta", type_ids=False, fusion="bert"))
register_family(Family("albert", fusion="bert"))
register_family(Family("camembert", type_ids=False, fusion="bert"))
# Tokenizers only: edgeqa scores them, but neither fuses nor prunes them.
for _name in ("longformer", "mpnet", "bart", "gpt2"):
    register_family(Family(_name, type_ids=False))
