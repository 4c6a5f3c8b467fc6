"""Family `multi`: several adapters active on one layer compose in active-list order (SPEC §7.1: BONE-MULTI-1/2,
GRALORA-MULTI-1, HRA-MULTI-1, IA3-MULTI-1, LOHA-MULTI-1), and IA3's optional weighted combination (IA3-WADD-1).

Each adapter of a layer gets its own drawn config (own sizes, scalings and, where the record has several, its own
variant), so "each with its own r, k, h, α / mode" is exercised; the output for an active list and for its reverse
is compared with the oracle's `effective(W, b, layer, [adapters in that order])`, which checks both "order
irrelevant" (sums, products) and "order matters" (HRA's ordered product, Bone's mixed rule)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from conformance.assertions import assert_close_to_oracle, assert_equal, assert_raises_clause, fail
from conformance.drivers.base import Discrepancy, Driver
from conformance.harness import KEY, claimed_layers, claims_of, clause_variants, usable_kinds, with_common_factor
from conformance.rows import RowSpec
from conformance.scenes import SECOND, THIRD, Scene, Setup, build, fill_row, require_lifecycle
from conformance.spec.draws import small_floats
from conformance.spec.matching import matches
from conformance.spec.record import Variant
from conformance.spec.records import RECORDS
from conformance.spec.tolerances import scale, tolerance
from conformance.strategies import layers, seeds

MIXED = "mixed"  # DESIGN vocabulary: the variant a driver declares when it composes several modes on one layer
# The clauses whose "mixed modes" rule has an alternative: "MUST follow this rule or reject, with ValueError at
# `add_adapter`, an adapter whose mode differs from the layer's existing adapters" (BONE-MULTI-2, IA3-MULTI-1).
MAY_REJECT_MIXED = frozenset({"BONE-MULTI-2", "IA3-MULTI-1"})
FOURTH = "kappa"  # a fourth distinctive adapter name (IA3-WADD-1's mixed-kind rejection)
MULTI_DTYPES = ("float64", "float32")  # composition is not a dtype clause: oracle precision and the common dtype

# ---------------------------------------------------------------------------------------------------------------
# Scenes with one variant per adapter


def draw_composition(
    row: RowSpec, driver: Driver, data: st.DataObject, *, only: Sequence[str] | None = None, mixed: bool = False
) -> tuple[Setup, dict[str, Variant]]:
    """Two or three adapters on one layer of a drawn kind, each with its own config and its own variant, drawn from
    the claimed variants the clause speaks of (`only` restricts them); `mixed`: the first two differ."""
    record, claims = RECORDS[row.tuner], claims_of(driver, row)
    allowed = [v for v in clause_variants(row.clause, record, claims) if only is None or v.name in only]
    need = 2 if mixed else 1
    kinds = sorted(
        {k for v in allowed for k in usable_kinds(record, claims, v)
         if sum(u.applies_to(k) for u in allowed) >= need}
    )  # fmt: skip
    if not kinds:
        pytest.skip(f"needs {need} claimed variant(s) of {[v.name for v in allowed]} on one supported layer kind")
    kind = data.draw(st.sampled_from(kinds), label="layer_kind")
    layer = data.draw(claimed_layers(kind, record, claims), label="layer")
    layer = with_common_factor(data, layer)
    dtype = data.draw(st.sampled_from([d for d in MULTI_DTYPES if d in claims.dtypes]), label="dtype")
    names = ("default", SECOND, THIRD)[: data.draw(st.integers(2, 3), label="adapters")]
    usable = [v for v in allowed if v.applies_to(kind)]
    chosen = list(data.draw(st.permutations(usable), label="first two variants")[:2]) if mixed else []
    while len(chosen) < len(names):
        chosen.append(data.draw(st.sampled_from(usable), label=f"variant of adapter {len(chosen)}"))
    variants = dict(zip(names, chosen, strict=True))
    event(f"layer_kind={kind} dtype={dtype} variants={[v.name for v in chosen]}")  # --hypothesis-show-statistics
    configs = {}
    for name in names:
        config = data.draw(record.configs(layer, variants[name], row.init), label=f"config {name}")
        configs[name] = {**config, "target_modules": [KEY]}
    filled = replace(row, layer_kind=kind, dtype=dtype)
    return Setup(filled, layer, configs, data.draw(seeds, label="seed")), variants


def add_perturbed(driver: Driver, scene: Scene, name: str, config: dict, generator: torch.Generator) -> None:
    """`add_adapter(name, config)`, then the record's generic non-identity values for its parameters (as `build`)."""
    row, record, layer = scene.setup.row, scene.setup.record, scene.setup.layer
    driver.add_adapter(scene.model, row.tuner, name, driver.make_config(row.tuner, config))
    scene.setup.configs[name] = config
    shapes = {n: tuple(t.shape) for n, t in driver.get_params(scene.model, KEY, name).items()}
    driver.set_params(scene.model, KEY, name, record.perturb(record.resolve(config, KEY), layer, shapes, generator))


def assert_output(driver: Driver, scene: Scene, order: list[str], x: torch.Tensor, what: str) -> None:
    """With active list `order`, the output equals op(x; W_eff, b_eff) of the oracle applied in that order (⟨N⟩)."""
    __tracebackhide__ = True
    driver.set_active(scene.model, order)
    with torch.no_grad():
        y = scene.model(x)
    expected = scene.expected_output(x, {KEY: scene.effective(driver, order)})
    scene.assert_output_close(f"{what} with active list {order}", y, expected)


def check_composition(
    row: RowSpec, driver: Driver, data: st.DataObject, *, only: Sequence[str] | None = None, mixed: bool = False
) -> None:
    """Build the adapters one by one; with the active list in a drawn order and in the reverse order, the output is
    the oracle's composition in that order. Where the clause lets an implementation reject mixing modes
    (MAY_REJECT_MIXED) and the driver does not declare `mixed`, `add_adapter` of the first adapter of another mode
    may raise ValueError instead; it must then leave the layer as it was."""
    require_lifecycle(driver, row)
    setup, variants = draw_composition(row, driver, data, only=only, mixed=mixed)
    names = list(setup.configs)
    configs = dict(setup.configs)
    setup.configs = {names[0]: configs[names[0]]}
    scene = build(driver, setup)
    declared = MIXED in claims_of(driver, row).variants
    generator = torch.Generator().manual_seed(setup.seed + 3)
    x = scene.input(data)
    for name in names[1:]:
        mixing = any(variants[n].name != variants[name].name for n in scene.names)
        if not (mixing and row.clause in MAY_REJECT_MIXED):
            add_perturbed(driver, scene, name, configs[name], generator)
            continue
        existing = list(scene.names)
        try:
            add_perturbed(driver, scene, name, configs[name], generator)
        except Exception as exc:
            check_rejection(driver, scene, name, exc, existing, declared, x, variants)
            return
    order = data.draw(st.permutations(scene.names), label="active order")
    kinds = ", ".join(f"{n}: {variants[n].name}" for n in scene.names)
    try:
        assert_output(driver, scene, order, x, f"output ({kinds})")
        assert_output(driver, scene, order[::-1], x, f"output ({kinds})")
    except Exception as exc:
        several = len({variants[n].name for n in scene.names}) > 1
        if isinstance(exc, AssertionError) or not several or row.clause not in MAY_REJECT_MIXED:
            raise
        fail(
            scene.context,
            f"the forward with several modes ({kinds}) raised {type(exc).__name__}({exc}): once `add_adapter` "
            f"accepted them, {row.clause}'s rule must be followed (or the adapter rejected at add_adapter)",
            Discrepancy("output", (), "", type(exc).__name__, 0.0, "output", kind="raised"),  # the forward on x
        )


def check_rejection(
    driver: Driver,
    scene: Scene,
    name: str,
    exc: Exception,
    existing: list[str],
    declared: bool,
    x: torch.Tensor,
    variants: dict[str, Variant],
) -> None:
    """`add_adapter` rejected an adapter of another mode: allowed only as ValueError, only by an implementation
    that does not declare `mixed`, and before changing the layer (SPEC §0.1): no parameter of the rejected adapter
    exists and the existing adapters still give the oracle's output."""
    __tracebackhide__ = True
    ctx = scene.context
    mode = variants[name].name
    if not isinstance(exc, ValueError):
        fail(
            ctx,
            f"add_adapter({name!r}, mode {mode}) raised {type(exc).__name__}({exc}), but may reject only with "
            "ValueError",
        )
    if declared:
        fail(ctx, f"the driver declares variant {MIXED!r}, but add_adapter({name!r}, mode {mode}) was rejected: {exc}")
    assert_equal(ctx, f"parameters of the rejected adapter {name!r}", driver.get_params(scene.model, KEY, name), {})
    assert_output(driver, scene, existing, x, f"output after the rejected add_adapter({name!r})")


# ---------------------------------------------------------------------------------------------------------------
# The composition clauses


@pytest.mark.contract("BONE-MULTI-1", axes=("variant",), variants=("plain",))
@given(data=st.data())
def test_plain_blocks_add_up(row, driver, data):
    """BONE-MULTI-1: plain adapters add up, y = base(x) + Σ_a x T(B_a)ᵀ, each with its own r (drawn independently,
    so `in` is rarely a multiple of every r: no padding leaks between adapters); the order is irrelevant."""
    check_composition(row, driver, data, only=("plain",))


@pytest.mark.contract("BONE-MULTI-2")
@given(data=st.data())
def test_mixed_modes_apply_in_order(row, driver, data):
    """BONE-MULTI-2: plain and BAT adapters on one layer apply in active-list order to the effective weight (plain
    W ← W + T(B_a), BAT W ← 𝒯_a(W)), checked in a drawn order and its reverse; an implementation that does not
    declare `mixed` may instead reject the first adapter of another mode with ValueError at add_adapter."""
    check_composition(row, driver, data, mixed=True)


@pytest.mark.contract("GRALORA-MULTI-1", "HRA-MULTI-1", "IA3-MULTI-1", "LOHA-MULTI-1")
@given(data=st.data())
def test_adapters_compose_in_active_order(row, driver, data):
    """GRALORA-MULTI-1 (adapters add, each with its own r, k, h, α), HRA-MULTI-1 (R_tot = R_a1 R_a2 ⋯ in active
    order: the reverse order differs), IA3-MULTI-1 (vectors multiply; feedforward and output adapters mixed give
    l_out ⊙ base(l_ff ⊙ x), or ValueError at add_adapter where `mixed` is not declared), LOHA-MULTI-1 (adapters
    add, each with its own r, alpha and mode): each adapter's variant is drawn on its own."""
    check_composition(row, driver, data)


# ---------------------------------------------------------------------------------------------------------------
# IA3-WADD-1 (optional capability ia3.weighted_adapter)

CAPABILITY = "ia3.weighted_adapter"
# Targets of the two combined adapters on a `Twin` (keys `layer`, `inner.layer`) in both forms (CORE-CFG-3): each
# alone is injected on a different set of keys, their union / alternation on both.
FORMS = {
    "set": ({"default": ["inner.layer"], SECOND: ["layer"]}, r"layer"),
    "string": ({"default": r"inner\.layer", SECOND: r"layer"}, ["layer"]),
}


@pytest.mark.contract("IA3-WADD-1")
@given(data=st.data())
def test_weighted_adapter(row, driver, data):
    """IA3-WADD-1: `add_weighted_adapter(adapters, weights, name)` creates, on every layer the union (sets) or the
    alternation of the parenthesised patterns (strings) of the adapters' targets selects, the vector Σ_k w_k l_k
    over the adapters present there (a sum, not a product), feedforward where their feedforward modules say so;
    mixed set/string kinds and an unknown adapter are rejected with ValueError, creating nothing."""
    require_lifecycle(driver, row)
    row = fill_row(row, driver, data)
    record = RECORDS[row.tuner]
    form = data.draw(st.sampled_from(sorted(FORMS)), label="module form")
    targets, other_form = FORMS[form]
    targets = {**targets, FOURTH: other_form}
    layer = data.draw(layers(row.layer_kind), label="layer")
    base = data.draw(record.configs(layer, record.variant(row.variant), row.init), label="config")
    configs = {}
    for name, target in targets.items():
        feedforward = target if base["feedforward_modules"] else []  # IA3-CFG-2: feedforward ⊆ targets
        configs[name] = {**base, "target_modules": target, "feedforward_modules": feedforward}
    scene = build(driver, Setup(row, layer, configs, data.draw(seeds, label="seed"), twin=True))
    ctx, model, keys = scene.context, scene.model, scene.setup.keys

    def nothing_created(after: str) -> None:
        for key in keys:
            assert_equal(
                ctx, f"parameters of {THIRD!r} on {key} after {after}", driver.get_params(model, key, THIRD), {}
            )

    for bad, why in (([FOURTH, "default"], "mixed set/string kinds"), (["default", "no_such_adapter"], "unknown")):
        kw = {"adapters": bad, "weights": [1.0, 1.0], "adapter_name": THIRD}
        assert_raises_clause(ctx, (ValueError,), "", lambda kw=kw: driver.call_optional(model, CAPABILITY, **kw))
        nothing_created(f"add_weighted_adapter({bad}, [1.0, 1.0], {THIRD!r}) ({why})")

    order = list(data.draw(st.permutations(["default", SECOND]), label="combined order"))
    weights = [data.draw(small_floats(-2, 2), label=f"weight of {name}") for name in order]
    driver.call_optional(model, CAPABILITY, adapters=order, weights=weights, adapter_name=THIRD)
    call = f"add_weighted_adapter({order}, {weights}, {THIRD!r})"
    oracle = record.oracle
    combined = {
        **base,
        "target_modules": oracle.weighted_modules([configs[n]["target_modules"] for n in order]),
        "feedforward_modules": oracle.weighted_modules([configs[n]["feedforward_modules"] for n in order]),
    }
    for key in keys:
        wanted = matches(combined["target_modules"], key)
        assert_equal(ctx, f"{THIRD!r} injected on {key} after {call}", scene.injected(driver, THIRD, key), wanted)
        if not wanted:
            continue
        present = [n for n in order if scene.injected(driver, n, key)]
        parts = scene.adapters(driver, present, key)
        expected = oracle.weighted_adapter(parts, [weights[order.index(n)] for n in present], layer)
        shapes = oracle.param_shapes(record.resolve(combined, key), layer)
        got = {n: t.double() for n, t in driver.get_params(model, key, THIRD).items()}
        assert_equal(ctx, f"shapes of {THIRD!r} on {key}", {n: tuple(t.shape) for n, t in got.items()}, shapes)
        for name, value in expected.params.items():
            assert_close_to_oracle(
                context=ctx,
                what=f"{name} of {THIRD!r} on {key} (Σ_k w_k l_k over {present})",
                actual=got[name],
                expected=value,
                tol=tolerance("N", row.dtype),
                scale=scale(value),
            )
