"""The pruning methods' settings (compress/prune_config.py and the method classes): what each takes and refuses, by
its exact words, where a schedule reaches its target, how a record reads back and is described, and the registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from edgeqa.bench.files import EdgeQAError
from edgeqa.compress.prune import (
    PRUNING_METHODS,
    MagnitudeConfig,
    PruneConfig,
    StructuredConfig,
    prune_config_from_dict,
)
from edgeqa.compress.prune_magnitude import cubic_sparsity


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
        ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
        ({"method": "structured"}, "needs heads > 0 or ffn > 0"),
        ({"method": "random"}, "prune method"),
        ({"method": "structured", "heads": 1.0}, r"heads must be in \[0, 1\)"),
        ({"sparsity": 0.5, "amount": 3}, "prune method magnitude takes no amount; it takes"),
        (
            {"method": "structured", "ffn": 0.5, "sparsity": 0.5},
            r"takes no sparsity \(settings of magnitude or pattern\)",
        ),
        ({"backend": "tensorflow"}, "backend must be 'torch' or 'neural-compressor'"),
        ({"method": "pattern", "pattern": "4by1"}, "pattern must look like 4x1"),
        ({"method": "pattern", "pattern": "4x1", "refit": True}, r"takes no refit \(settings of magnitude\)"),
        ({"sparsity": "half"}, r"prune \(magnitude\).sparsity should be float"),
        ({"method": "structured", "ffn": 1.0}, r"^ffn must be in \[0, 1\), got 1.0$"),
        ({"sparsity": 0.5, "schedule": "cubic", "initial": -0.1}, r"^initial must be in \[0, 1\), got -0.1$"),
        ({"update_every": 0}, r"^update_every must be positive, got 0$"),
        ({"schedule": "weekly"}, r"^schedule must be 'oneshot' or 'cubic', got 'weekly'$"),
        ({"scope": "row"}, r"^scope must be 'global' or 'layer', got 'row'$"),
        ({"ramp": 0.0}, r"^ramp must be in \(0, 1\], got 0.0$"),
        ({"ramp": 1.5}, r"^ramp must be in \(0, 1\], got 1.5$"),
        (
            {"method": "structured", "ffn": 0.5, "importance": "random"},
            r"^importance must be 'magnitude' or 'gradient', got 'random'$",
        ),
        ({"method": "structured"}, r"^structured pruning needs heads > 0 or ffn > 0$"),
        ({"select": "obs"}, r"^select: obs chooses the mask inside the refit, from its statistics: set refit: true$"),
        ({"method": "random"}, r"^prune method must be one of magnitude, pattern, structured, got 'random'$"),
        (
            {"sparsity": 0.5, "amount": 3, "colour": 1},
            r"^prune method magnitude takes no amount, colour; it takes exclude, include, initial, ramp, refit, "
            r"refit_batches, refit_to, schedule, scope, select, sparsity, update_every$",
        ),
        ({"sparsity": 0.5, "initial": 0.3}, "needs schedule: cubic"),
        ({"sparsity": 0.5, "initial": 0.6, "schedule": "cubic"}, "at most sparsity"),
        ({"method": "structured", "ffn": 0.5, "refit": True}, "prune method structured takes no refit"),
        ({"refit": True, "refit_batches": 0}, "refit_batches must be positive"),
        ({"refit": True, "refit_to": "layer"}, "refit_to must be one of model, matrix"),
        ({"select": "gradient"}, "select must be one of magnitude, input, obs"),
        ({"method": "structured", "ffn": 0.5, "select": "input"}, "prune method structured takes no select"),
        ({"sparsity": 0.5, "select": "obs"}, "select: obs chooses the mask inside the refit"),
    ],
)
def test_bad_prune_settings_are_refused(settings, message):
    with pytest.raises(EdgeQAError, match=message):
        prune_config_from_dict(settings)


def test_best_model_is_chosen_only_at_target_sparsity():
    cubic = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.6, update_every=100)
    assert not cubic.at_target(1300, 2200) and cubic.at_target(1400, 2200)  # masks reach 50% at step 1400
    assert MagnitudeConfig(sparsity=0.5).at_target(1, 2200)  # one-shot: pruned from the start
    assert StructuredConfig(ffn=0.5).at_target(1, 2200)


def test_a_schedule_shorter_than_two_steps_ends_at_its_first_step():
    # round(1 x 1.0) = 1 step of ramp: the target at step 1. With round(3 x 0.4) = 1 too, masks are at target at 1.
    assert cubic_sparsity(1, 1, 0.5, ramp=1.0) == pytest.approx(0.5)
    one = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.4, update_every=1)
    assert one.at_target(1, 3) and not one.at_target(0, 3)


def test_the_target_is_reached_at_the_first_mask_update_after_the_ramp():
    # Ramp ends at step round(2200 x 0.6) = 1320; masks change every 100 steps, so at step 1400, not 1320.
    cubic = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.6, update_every=100)
    assert not cubic.at_target(1320, 2200) and not cubic.at_target(1399, 2200) and cubic.at_target(1400, 2200)
    short = MagnitudeConfig(sparsity=0.5, schedule="cubic", ramp=0.99, update_every=100)  # 1980 -> 2000, past 1990
    assert short.at_target(1990, 1990) and not short.at_target(1989, 1990)


def test_settings_at_the_edges_of_their_ranges_are_taken():
    assert MagnitudeConfig(ramp=1.0).ramp == 1.0  # the whole recovery
    assert MagnitudeConfig(sparsity=0.5, schedule="cubic", initial=0.5).initial == 0.5  # all at once, then held
    assert MagnitudeConfig(include=["*query*"], exclude=["*layer.0.*"]) == MagnitudeConfig(
        include=("*query*",), exclude=("*layer.0.*",)
    )  # lists from code become tuples, as from a recipe: the frozen config hashes and compares


def test_a_structured_record_is_described_by_what_is_left():
    cfg = StructuredConfig(heads=0.25, ffn=0.5, importance="gradient")
    assert cfg.describe({"heads_per_layer": [2, 4], "intermediate_size": 64}) == (
        "structured (gradient): heads per layer [2, 4], FFN 64"
    )
    assert cfg.describe({}) == "structured (gradient): heads 0.25, FFN 0.5"  # before the model was measured


def test_the_registry_names_every_key_and_refuses_a_second_registration():
    from edgeqa.compress.prune import prune_keys
    from edgeqa.compress.prune_config import register_pruning

    assert {"method", "backend", "sparsity", "heads", "pattern", "refit_to"} <= prune_keys()

    @dataclass(frozen=True, kw_only=True)
    class Toy(PruneConfig):
        method: ClassVar[str] = "toy"
        share: float = 0.5

    try:
        assert register_pruning(Toy) is Toy and PRUNING_METHODS["toy"] is Toy
        assert "share" in prune_keys() and prune_config_from_dict({"method": "toy", "share": 0.25}) == Toy(share=0.25)
    finally:
        PRUNING_METHODS.pop("toy", None)
    with pytest.raises(ValueError, match="^pruning method 'magnitude' is registered twice$"):
        register_pruning(MagnitudeConfig)


def test_an_older_flat_record_reads_as_what_its_run_did():
    # version 1 records lack initial, refit and refit_to; a refit then fitted each matrix
    old = {"method": "magnitude", "sparsity": 0.5, "scope": "global", "schedule": "cubic", "refit": True,
           "backend": "torch", "heads": 0.0}  # fmt: skip
    cfg = prune_config_from_dict(old, record=True)
    assert (cfg.refit_to, cfg.initial, cfg.refit_batches) == ("matrix", 0.0, 32)
    with pytest.raises(EdgeQAError, match="takes no heads"):
        prune_config_from_dict({**old, "heads": 0.5}, record=True)  # another method's setting, not at its default
    with pytest.raises(EdgeQAError, match="takes no heads"):
        prune_config_from_dict(old)  # a recipe names only its own method's settings
